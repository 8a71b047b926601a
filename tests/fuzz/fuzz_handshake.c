/* fuzz_handshake.c - libFuzzer target for the UFFD handshake parser, the one
 * piece of thaw that parses bytes from whatever connects to its socket.
 * Build: clang -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Icommon \
 *        tests/fuzz/fuzz_handshake.c uffd/handshake.c common/err.c
 * The first 8 input bytes pick the image size, so size checks are reached too. */
#include <stdint.h>
#include <string.h>

#include "../../uffd/handshake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t image = 1ull << 30;
	if (size >= 8 && data[0] == '#') {
		memcpy(&image, data, 8);
		image >>= 8;
		data += 8;
		size -= 8;
	}
	struct hs_msg m;
	if (hs_parse((const char *)data, size, image, &m) == 0) {
		/* What the server relies on: sorted, aligned, disjoint, inside the image. */
		for (size_t i = 0; i < m.n; i++) {
			const struct hs_region *r = &m.r[i];
			if (!r->size || r->base % r->page_size || r->size % r->page_size || r->offset % r->page_size ||
			    r->offset + r->size > image || r->offset + r->size < r->offset)
				__builtin_trap();
			if (i && m.r[i - 1].base + m.r[i - 1].size > r->base)
				__builtin_trap();
		}
		hs_free(&m);
	}
	ssize_t n = hs_value_len((const char *)data, size);
	if (n > (ssize_t)size)
		__builtin_trap();
	return 0;
}
