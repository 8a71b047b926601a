# test_fuse_faults.sh - bad input and faults under a real mount (file://):
# a chunk object missing or corrupt -> the reader gets EIO, quickly, other
# chunks and files stay readable, and the file heals when the object does;
# an object replaced under a mounted file -> EIO saying so, never mixed data;
# the cache disk fills up -> EIO with a clear log line and a cache that is
# still consistent on remount; a damaged cache -> rebuilt or refused, never
# trusted blindly.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../fuse_lib.sh"

mkdir -p "$S" "$M" "$C" "$T/src" "$T/blk"

# read_at FILE MIB: read 512 KiB at MiB offset MIB with O_DIRECT (past the page
# cache, to the daemon, in one request); prints the bytes' md5 or "EIO".
read_at() {
	out=$(timeout -k 5 30 dd if="$1" iflag=direct bs=512K skip=$(($2 * 2)) count=1 status=none 2>&1 >"$T/rd") && { md5sum <"$T/rd" | cut -c1-32; return; }
	case $out in *"Input/output error"*) echo EIO ;; *) echo "OTHER: $out" ;; esac
}
md5_at() { dd if="$1" bs=512K skip=$(($2 * 2)) count=1 status=none | md5sum | cut -c1-32; }
# The same for block $2 of $3 bytes (one chunk of the cache).
read_block() {
	out=$(timeout -k 5 30 dd if="$1" iflag=direct bs="$3" skip="$2" count=1 status=none 2>&1 >"$T/rd") && { md5sum <"$T/rd" | cut -c1-32; return; }
	case $out in *"Input/output error"*) echo EIO ;; *) echo "OTHER: $out" ;; esac
}
md5_block() { dd if="$1" bs="$3" skip="$2" count=1 status=none | md5sum | cut -c1-32; }
# The chunk object under .thaw/chunks/ that holds 1 MiB block $2 of source $1.
chunk_of() {
	dd if="$1" bs=1M skip="$2" count=1 status=none >"$T/want"
	for c in $(find "$S/.thaw/chunks" -type f); do cmp -s "$c" "$T/want" && { echo "$c"; return; }; done
	fail "no chunk object holds block $2 of $1"
}

for k in 0 1 2 3 4 5 6 7; do head -c 1048576 /dev/urandom >"$T/blk/$k"; done
cat "$T"/blk/* >"$T/src/img"                       # 8 distinct chunks
"$THAW" push "$T/src/img" "file://$S/a.img" >/dev/null || fail "push"
head -c $((4 << 20)) /dev/urandom >"$S/changing.bin"
cp "$S/changing.bin" "$T/src/changing.old"
head -c $((3 << 20)) /dev/urandom >"$S/other.bin"

"$THAW" mount "file://$S/" "$M" --cache "$C" || fail "mount"

# --- a missing chunk object: EIO at once, the rest of the mount unharmed ---
c2=$(chunk_of "$T/src/img" 2)
mv "$c2" "$c2.away"
t0=$(date +%s)
[ "$(read_at "$M/a.img" 2)" = EIO ] || fail "reading a chunk whose object is gone did not give EIO"
[ $(( $(date +%s) - t0 )) -lt 20 ] || fail "EIO for a missing chunk took $(( $(date +%s) - t0 )) s"
[ "$(read_at "$M/a.img" 1)" = "$(md5_at "$T/src/img" 1)" ] || fail "chunk 1 unreadable next to a missing chunk 2"
cmp "$S/other.bin" "$M/other.bin" || fail "another file unreadable while a.img has a missing chunk"
file_field a.img last_error | grep -q "chunk 2" || fail "status does not name the failed chunk: $(file_field a.img last_error)"
LOG | grep -q "chunk 2" || fail "the log does not name the failed chunk"
mv "$c2.away" "$c2"
[ "$(read_at "$M/a.img" 2)" = "$(md5_at "$T/src/img" 2)" ] || fail "chunk 2 still unreadable after its object came back"

# --- a corrupt chunk object: fetched twice, refused twice, EIO ---
c5=$(chunk_of "$T/src/img" 5)
cp "$c5" "$T/c5.good"
printf '\377' | dd of="$c5" bs=1 seek=4096 conv=notrunc status=none
cmp -s "$c5" "$T/c5.good" && printf '\376' | dd of="$c5" bs=1 seek=4096 conv=notrunc status=none
[ "$(read_at "$M/a.img" 5)" = EIO ] || fail "a corrupt chunk was not refused"
[ "$(file_field a.img verify_failures)" = 2 ] || { LOG | tail -20; fail "corrupt chunk: $(file_field a.img verify_failures) verify failures, want 2 (fetch, refetch)"; }
LOG | grep -q "XXH3" || fail "the log does not say the chunk failed verification"
cp "$T/c5.good" "$c5"
[ "$(read_at "$M/a.img" 5)" = "$(md5_at "$T/src/img" 5)" ] || fail "chunk 5 unreadable after repair"
timeout -k 5 60 cmp "$T/src/img" "$M/a.img" || fail "a.img differs after the faults"

# --- the object changes under a mounted file: EIO, not a mix of versions ---
[ "$(read_at "$M/changing.bin" 0)" = "$(md5_at "$T/src/changing.old" 0)" ] || fail "changing.bin chunk 0"
head -c $((4 << 20)) /dev/urandom >"$T/new"
mv "$T/new" "$S/changing.bin"  # a new version (new ETag)
[ "$(read_at "$M/changing.bin" 3)" = EIO ] || fail "a chunk of a changed object was served"
LOG | grep -q "changed" || fail "the log does not say the object changed"
# What was read before the change is still the old version, consistently.
[ "$(read_at "$M/changing.bin" 0)" = "$(md5_at "$T/src/changing.old" 0)" ] || fail "chunk 0 of changing.bin changed"

fusermount3 -u "$M" || fail "unmount"

# --- damaged caches ---
CD=$(ls -d "$C"/*-* | while read -r d; do [ "$(stat -c %s "$d/data")" = $((8 << 20)) ] && echo "$d"; done | head -1)
[ -n "$CD" ] || fail "cannot find a.img's cache directory"
# (a) one damaged chunk in the data file: recorded at open (opening checks
# nothing, so a large cache opens at once), refused on first use, fetched again.
printf 'garbage' | dd of="$CD/data" bs=1 seek=$((3 * 1048576 + 17)) conv=notrunc status=none
"$THAW" mount "file://$S/" "$M" --cache "$C" || fail "remount after damaging a chunk"
stat "$M/a.img" >/dev/null
# (a mount keeps an image in 64 KiB sub-blocks: those are the cache's chunks)
want=$(( (8 << 20) / $(file_field a.img chunk_size) ))
[ "$(file_field a.img cache_hits_at_open)" = "$want" ] || fail "damaged chunk: $(file_field a.img cache_hits_at_open) recorded chunks, want $want"
timeout -k 5 60 cmp "$T/src/img" "$M/a.img" || fail "a.img differs with a damaged cache chunk"
[ "$(file_field a.img fetches)" = 1 ] || fail "damaged chunk: $(file_field a.img fetches) fetches, want 1"
[ "$(file_field a.img cache_rejects)" = 1 ] || fail "damaged chunk: $(file_field a.img cache_rejects) rejected, want 1"
LOG | grep -q "failed verification" || fail "the log does not say a cached chunk failed verification"
fusermount3 -u "$M"
# (b) a garbage map header: the map is rebuilt, everything fetched again.
printf 'NOTAMAP!' | dd of="$CD/map" bs=1 seek=0 conv=notrunc status=none
"$THAW" mount "file://$S/" "$M" --cache "$C" || fail "remount after damaging the map"
stat "$M/a.img" >/dev/null
[ "$(file_field a.img cache_hits_at_open)" = 0 ] || fail "a damaged map was trusted"
timeout -k 5 60 cmp "$T/src/img" "$M/a.img" || fail "a.img differs after the map was rebuilt"
LOG | grep -q "rebuilding" || fail "the log does not say the map was rebuilt"
fusermount3 -u "$M"
# (c) a cache directory that is not one: refused, clearly.
touch "$T/notadir"
out=$("$THAW" mount "file://$S/" "$M" --cache "$T/notadir" 2>&1) && fail "mounted with a file as the cache directory"
echo "$out" | grep -q "notadir" || fail "bad cache error does not name it: $out"
mountpoint -q "$M" && fail "a refused mount is mounted"
# (d) an object's cache directory replaced by a file: that file EIO, others fine.
rm -rf "$CD" && touch "$CD"
"$THAW" mount "file://$S/" "$M" --cache "$C" || fail "remount with a broken object cache"
cat "$M/a.img" >/dev/null 2>&1 && fail "a.img readable though its cache directory is a file"
cmp "$S/other.bin" "$M/other.bin" || fail "other.bin unreadable next to a broken object cache"
LOG | grep -q "$(basename "$CD")" || fail "the log does not name the broken cache directory"
fusermount3 -u "$M"
rm -f "$CD"

# --- the cache disk fills up ---
mkdir -p "$T/small"
if mount -t tmpfs -o size=6m tmpfs "$T/small" 2>/dev/null; then
	at_exit "umount -l '$T/small' 2>/dev/null"
	head -c $((16 << 20)) /dev/urandom >"$T/src/big"
	"$THAW" push "$T/src/big" "file://$S/big.img" >/dev/null || fail "push big"
	"$THAW" mount "file://$S/" "$M" --cache "$T/small/c" || fail "mount with a small cache"
	timeout -k 5 60 cat "$M/big.img" >/dev/null 2>"$T/err" && fail "16 MiB read through a 6 MiB cache without error"
	grep -q "Input/output error" "$T/err" || fail "cache full did not give EIO: $(cat "$T/err")"
	LOG | grep -q "cache disk full" || fail "no 'cache disk full' line in the log"
	# What made it into the cache is still right, and the mount still serves it.
	# (chunks land out of order, so which ones found room varies: each read
	# fails with EIO or returns the right bytes)
	k=0
	while [ $k -lt 16 ]; do
		r=$(read_at "$M/big.img" $k)
		[ "$r" = EIO ] || [ "$r" = "$(md5_at "$T/src/big" $k)" ] || fail "chunk $k of big.img wrong once the cache filled: $r"
		k=$((k + 1))
	done
	ls "$M" >/dev/null && "$THAW" status "$M" --json >/dev/null || fail "the mount is unusable once its cache is full"
	fusermount3 -u "$M"
	# Remount on the same full cache: whatever it recorded verifies and reads right.
	"$THAW" mount "file://$S/" "$M" --cache "$T/small/c" || fail "remount with the full cache"
	stat "$M/big.img" >/dev/null
	hits=$(file_field big.img cache_hits_at_open)
	note "after the cache disk filled, $hits chunks of big.img were recorded"
	# The recorded chunks need not be the first ones (readahead commits out of
	# order), so read every chunk: each read either fails (EIO: not cached and
	# no room) or returns the right bytes, and at least the recorded ones succeed.
	cs=$(file_field big.img chunk_size)
	good=0; k=0
	while [ $k -lt $(( (16 << 20) / cs )) ]; do
		r=$(read_block "$M/big.img" $k "$cs")
		if [ "$r" != EIO ]; then
			[ "$r" = "$(md5_block "$T/src/big" $k "$cs")" ] || fail "chunk $k of big.img wrong after the cache filled: $r"
			good=$((good + 1))
		fi
		k=$((k + 1))
	done
	[ $good -ge "$hits" ] || fail "only $good chunks readable, $hits recorded in the cache"
	fusermount3 -u "$M"
	# With room again, the same cache completes the file, fetching only what it lacks.
	mount -o remount,size=64m "$T/small" || fail "cannot grow the tmpfs"
	"$THAW" mount "file://$S/" "$M" --cache "$T/small/c" || fail "remount with room in the cache"
	timeout -k 5 60 cmp "$T/src/big" "$M/big.img" || fail "big.img differs after the cache disk filled"
	hits=$(file_field big.img cache_hits_at_open)
	want=$(( (16 << 20) - hits * cs ))
	[ "$(file_field big.img bytes_fetched)" = $want ] ||
		fail "big.img: $(file_field big.img bytes_fetched) bytes fetched with $hits chunks cached, want $want"
	fusermount3 -u "$M"
else
	note "cannot mount a tmpfs here; cache-full case not run"
fi
sleep 0.3
i=0; while pgrep -f "thaw mount .*$T/" >/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
pgrep -af "thaw mount .*$T/" && fail "a mount daemon outlived its mount (or a refused mount)"
if grep -E "Sanitizer|runtime error" "$XDG_RUNTIME_DIR"/thaw/*.log; then fail "sanitizer reports in the daemon log"; fi
exit 0
