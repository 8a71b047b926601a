# test_fuse_passthrough.sh - a file wholly in the cache, and not read through
# FUSE's page cache earlier in the mount, is read by the kernel from the
# cache's data file (FUSE passthrough), with no READ reaching the daemon:
# checked by dropping the page cache and reading again, which a cached-mode
# open would have to ask the daemon for.  A complete file read through the
# page cache is handed over to passthrough once its last cached open closes
# (a sequential reader leaves its bytes in the data file's pages, and FUSE's
# are dropped behind it; after random reads the data file is read back from
# disk first); a cached open still held keeps new opens cached; a
# passthrough open keeps new ones passthrough; mmap works, an image's zero
# chunks read as zeros, chunks reused from the cache after a remount are
# checked (a corrupt one fetched again) before passthrough is used, and
# --no-passthrough and --rw keep every read in the daemon.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../fuse_lib.sh"

[ "$(id -u)" = 0 ] || skip "FUSE passthrough needs root (CAP_SYS_ADMIN) to register backing files"

# Drop clean page-cache pages only (echo 1): inodes stay, so the kernel keeps
# its inode and the daemon its blob, with every chunk already checked.
drop_pages() { sync; echo 1 >/proc/sys/vm/drop_caches; }
# pt_read TOTAL WHEN: plain.bin reads right, through passthrough open number
# TOTAL, with no READ reaching the daemon.
pt_read() {
	r0=$(file_field plain.bin reads)
	cmp "$S/plain.bin" "$M/plain.bin" || fail "plain.bin differs $2"
	[ "$(file_field plain.bin passthrough_total)" = "$1" ] || fail "not passthrough $2"
	[ "$(file_field plain.bin reads)" = "$r0" ] || fail "READs reached the daemon $2"
}

head -c $((20 << 20)) /dev/urandom >"$S/plain.bin"
head -c $((64 << 20)) /dev/urandom >"$S/seq.bin"
head -c $((48 << 20)) /dev/urandom >"$S/rnd.bin"
make_mixed "$T/src/disk" $((6 * 1048576 + 4321))  # zero chunks and repeats
"$THAW" push "$T/src/disk" "file://$S/disk.img" >/dev/null || fail "push"

"$THAW" mount "file://$S/" "$M" --cache "$C" || fail "mount"

# Incomplete: a cached-mode open.  While it is held, the file completes and a
# second open must still be cached (the kernel refuses to mix modes).
exec 3<"$M/plain.bin"
head -c 4096 <&3 >/dev/null
[ "$(file_field plain.bin passthrough_total)" = 0 ] || fail "an incomplete file was opened for passthrough"
cmp "$S/plain.bin" "$M/plain.bin" || fail "plain.bin differs (cached mode)"
[ "$(file_field plain.bin passthrough_total)" = 0 ] || fail "passthrough while a cached open was held"
exec 3<&-
sleep 0.2 # the release reaches the daemon after close(2) returns

# Complete, read through the page cache, and its last cached open closed:
# handed over to passthrough (promote.h), so the next open is passthrough
# and no READ reaches the daemon, even with the page cache dropped.
drop_pages
pt_read 1 "after the file read through the page cache was handed over"
cmp "$T/src/disk" "$M/disk.img" || fail "disk.img differs (cached mode)"

# A sequential reader in cached mode leaves the bytes in the cache's data
# file and FUSE's page cache is dropped behind it (16-48 MiB back), so a
# 64 MiB file is in memory once; closed, the file is passthrough at once.
exec 3<"$M/seq.bin"
cat <&3 >/dev/null
fuse_res=$(fincore -b -n -o RES "$M/seq.bin")
data=$(find "$C" -type f -size $((64 << 20))c | head -1)
[ -n "$data" ] || fail "no cache data file for seq.bin"
data_res=$(fincore -b -n -o RES "$data")
[ "$fuse_res" -le $((48 << 20)) ] || fail "FUSE's page cache kept $fuse_res bytes behind a sequential reader"
[ "$data_res" -ge $((62 << 20)) ] || fail "the data file kept $data_res bytes of a sequential read in memory"
[ "$(file_field seq.bin passthrough_total)" = 0 ] || fail "seq.bin was passthrough while incomplete"
exec 3<&-
sleep 0.2
r0=$(file_field seq.bin reads)
cmp "$S/seq.bin" "$M/seq.bin" || fail "seq.bin differs after its hand-over"
[ "$(file_field seq.bin passthrough_total)" = 1 ] || fail "seq.bin was not handed over to passthrough"
[ "$(file_field seq.bin reads)" = "$r0" ] || fail "READs reached the daemon for seq.bin after its hand-over"

# Read whole in an order where no read is within the readahead's 4 MiB
# slack of the one before (97 blocks of 64 KiB on, modulo 768), a file's
# bytes are in FUSE's page cache and the data file's pages go once durable;
# closed, the promoter reads them back from disk before the hand-over.
python3 - "$M/rnd.bin" "$S/rnd.bin" "$T/rnd.fifo" <<'PY' &
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
want = open(sys.argv[2], 'rb').read()
n = len(want) // (64 << 10)
offs = [(k * 97 % n) * (64 << 10) for k in range(n)]
for o in offs:
    assert os.pread(fd, 64 << 10, o) == want[o:o + (64 << 10)], "rnd.bin differs at %d" % o
os.mkfifo(sys.argv[3])
open(sys.argv[3]).read()  # held open until the shell has looked
PY
pid=$!
i=0; until [ -p "$T/rnd.fifo" ]; do i=$((i + 1)); [ $i -lt 300 ] || fail "random reader stuck"; sleep 0.1; done
sleep 0.6 # the flusher makes the chunks durable, and they are dropped
rdata=$(find "$C" -type f -size $((48 << 20))c | head -1)
[ -n "$rdata" ] || fail "no cache data file for rnd.bin"
rres=$(fincore -b -n -o RES "$rdata")
[ "$rres" -le $((8 << 20)) ] || fail "the data file kept $rres bytes of random reads that FUSE's page cache holds"
: >"$T/rnd.fifo"
wait $pid || fail "random reads of rnd.bin"
i=0
until [ "$(fincore -b -n -o RES "$rdata")" -ge $((46 << 20)) ]; do
	i=$((i + 1)); [ $i -lt 50 ] || fail "the promoter did not read rnd.bin's data file back ($(fincore -b -n -o RES "$rdata") bytes resident)"
	sleep 0.1
done
r0=$(file_field rnd.bin reads)
cmp "$S/rnd.bin" "$M/rnd.bin" || fail "rnd.bin differs after its hand-over"
[ "$(file_field rnd.bin passthrough_total)" = 1 ] || fail "rnd.bin was not handed over to passthrough"
[ "$(file_field rnd.bin reads)" = "$r0" ] || fail "READs reached the daemon for rnd.bin after its hand-over"
unmount

# Remount: every chunk comes from the cache unchecked, so the first open is
# cached and checks what it reads; a chunk corrupted meanwhile is fetched
# again.
data=$(find "$C" -type f -size $((20 << 20))c | head -1)
[ -n "$data" ] || fail "no cache data file for plain.bin"
printf 'XXXXXXXX' | dd of="$data" bs=1 seek=$((5 << 20)) conv=notrunc 2>/dev/null
"$THAW" mount "file://$S/" "$M" --cache "$C" || fail "remount"
cmp "$S/plain.bin" "$M/plain.bin" || fail "plain.bin differs after remount with a corrupt chunk"
[ "$(file_field plain.bin passthrough_total)" = 0 ] || fail "unchecked cached chunks were served by passthrough"
[ "$(file_field plain.bin cache_rejects)" = 1 ] || fail "the corrupt chunk was not rejected ($(file_field plain.bin cache_rejects))"
unmount

# Remount with --hydrate: nothing to fetch, but the hydrator checks every
# chunk reused from the cache, so the first open is already passthrough.
"$THAW" mount "file://$S/" "$M" --cache "$C" --hydrate || fail "remount --hydrate"
i=0
until [ "$(py "s['hydrator']['done']")" = 4 ]; do
	i=$((i + 1)); [ $i -lt 300 ] || fail "not hydrated in 30 s: $(py "s['hydrator']")"
	sleep 0.1
done
pt_read 1 "on the first open after the hydrator checked the cache"
[ "$(file_field plain.bin bytes_fetched)" = 0 ] || fail "the hydrator fetched chunks that were in the cache"
# A second open beside a passthrough one is passthrough too; mmap reads the
# data file; nothing reaches the daemon even with the page cache dropped.
r0=$(file_field plain.bin reads)
drop_pages
exec 3<"$M/plain.bin"
[ "$(file_field plain.bin passthrough_opens)" = 1 ] || fail "a complete file was not opened for passthrough"
cmp "$S/plain.bin" "$M/plain.bin" || fail "plain.bin differs through passthrough"
[ "$(file_field plain.bin passthrough_total)" = 3 ] || fail "a second open beside a passthrough one was not passthrough"
python3 - "$M/plain.bin" "$S/plain.bin" <<'PY' || fail "mmap of a passthrough file differs"
import mmap, sys
with open(sys.argv[1], 'rb') as f, open(sys.argv[2], 'rb') as g:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    assert m[:] == g.read()
PY
[ "$(file_field plain.bin reads)" = "$r0" ] || fail "READs reached the daemon through passthrough ($r0 -> $(file_field plain.bin reads))"
exec 3<&-
sleep 0.2
[ "$(file_field plain.bin passthrough_opens)" = 0 ] || fail "passthrough opens not released"
# An image: chunks are per object, zero chunks are holes in the data file.
r0=$(file_field disk.img reads)
cmp "$T/src/disk" "$M/disk.img" || fail "disk.img differs through passthrough"
[ "$(file_field disk.img passthrough_total)" -ge 1 ] || fail "complete image not opened for passthrough"
[ "$(file_field disk.img reads)" = "$r0" ] || fail "READs reached the daemon for the image through passthrough"
unmount

# --no-passthrough and --rw: every read is ours.
for mode in --no-passthrough --rw; do
	"$THAW" mount "file://$S/" "$M" --cache "$C" $mode || fail "mount $mode"
	cmp "$S/plain.bin" "$M/plain.bin" || fail "plain.bin differs ($mode)"
	sleep 0.2
	drop_pages
	r0=$(file_field plain.bin reads)
	cmp "$S/plain.bin" "$M/plain.bin" || fail "plain.bin differs on re-read ($mode)"
	[ "$(file_field plain.bin passthrough_total)" = 0 ] || fail "passthrough with $mode"
	[ "$(file_field plain.bin reads)" -gt "$r0" ] || fail "no READ reached the daemon with $mode after dropping the page cache"
	unmount
done
echo "ok"
