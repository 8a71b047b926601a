#!/bin/sh
# Seeds for fuzz_index: real indexes from `thaw push` at a few sizes and chunk sizes.
corpus=$1; top=$2
tmp=$(mktemp -d)
for spec in "1 4K" "5000 4K" "300000 64K" "3000000 1M"; do
	set -- $spec
	head -c "$1" /dev/urandom >"$tmp/f"
	"$top/build/thaw" push --chunk-size "$2" "$tmp/f" "file://$tmp/s/img" >/dev/null && cp "$tmp/s/img" "$corpus/seed-$1-$2"
done
rm -rf "$tmp"
