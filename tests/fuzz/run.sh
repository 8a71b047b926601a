#!/bin/sh
# run.sh - build each libFuzzer target with clang (coverage, ASan, UBSan) and
# run it for FUZZ_SECONDS (default 30) from a seed corpus.
# usage: tests/fuzz/run.sh tests/fuzz/fuzz_*.c
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
secs=${FUZZ_SECONDS:-30}
out=$top/build/fuzz
mkdir -p "$out"
srcs="$top/common/err.c $top/common/log.c $top/objstore/format.c $top/objstore/url.c"
[ -f "$top/uffd/handshake.c" ] && srcs="$srcs $top/uffd/handshake.c"
for f in "$@"; do
	name=$(basename "$f" .c)
	echo "fuzz: building $name"
	clang -g -O1 -std=gnu11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
		-o "$out/$name" "$f" $srcs -lxxhash -lm -pthread
	corpus=$out/$name.corpus
	mkdir -p "$corpus"
	if [ -x "$top/tests/fuzz/$name.seed.sh" ]; then sh "$top/tests/fuzz/$name.seed.sh" "$corpus" "$top"; fi
	echo "fuzz: running $name for ${secs}s"
	"$out/$name" -max_total_time="$secs" -print_final_stats=1 "$corpus" 2>&1 | tail -4
done
