/* fuzz_index.c - libFuzzer target for the image index decoder: any bytes in,
 * either a clean refusal or an index whose every field is within bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../objstore/format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct img_index ix;
	uint64_t ilen;
	if (img_is_index(data, size))
		(void)img_header_len(data, size, &ilen);
	if (img_decode(data, size, &ix) == 0) {
		/* What a reader does with a decoded index must stay in bounds. */
		uint64_t total = 0;
		for (uint64_t i = 0; i < ix.nchunks; i++) {
			total += img_chunk_len(&ix, i);
			if (ix.map[i]) {
				char key[128];
				img_chunk_key(&ix.hashes[ix.map[i] - 1], key, sizeof key);
			}
		}
		if (total != ix.size)
			abort();
		/* And it encodes back to the same bytes. */
		void *enc;
		size_t elen;
		if (img_encode(&ix, &enc, &elen) == 0) {
			if (elen != size || memcmp(enc, data, size))
				abort();
			free(enc);
		}
		img_index_free(&ix);
	}
	return 0;
}
