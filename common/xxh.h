/* xxh.h - XXH3 as thaw uses it: libxxhash's, with its run-time dispatch on
 * x86-64.
 *
 * Debian's libxxhash is built for the baseline x86-64 (SSE2, ~17 GB/s here);
 * its *_dispatch entry points pick AVX2 or AVX-512 when the CPU has them
 * (~66 GB/s here) and give the same hashes.  Every chunk fetched into a cache
 * is hashed, on the store's transfer thread.  Including this header in place
 * of <xxhash.h> turns XXH3_64bits, XXH3_64bits_update, XXH3_128bits and the
 * rest into the dispatching versions. */
#ifndef THAW_XXH_H
#define THAW_XXH_H

#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#endif

#endif
