# test_fuse_direct.sh - with --direct-io, a file not wholly in the cache is
# read past FUSE's page cache: what is read does not land in it, every read
# reaches the daemon, which serves bytes it has from the cache without
# fetching them again; such a file can still be mmap'd shared
# (FUSE_DIRECT_IO_ALLOW_MMAP), and reads through a mapping and through
# read(2) agree with the source.  By default the page cache stays in front
# (what is read is resident), and --rw ignores the flag.  Either way a byte
# read is held in memory once: with --direct-io in the cache's data file
# (resident); without passthrough in FUSE's page cache (the data file's
# pages are dropped once durable and read, so a slow reader trailing the
# fetch reads nothing back from disk); with it, a sequential read's in the
# data file (FUSE's copy is dropped behind the reader).
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../fuse_lib.sh"

head -c $((20 << 20)) /dev/urandom >"$S/plain.bin"
make_mixed "$T/src/disk" $((6 * 1048576 + 4321))
"$THAW" push "$T/src/disk" "file://$S/disk.img" >/dev/null || fail "push"

reads() { file_field "$1" reads; }
resident() { fincore --bytes --noheadings --output RES "$1"; }
data_of() { find "$C" -type f -name data -size +19M | head -1; }
# wait_dropped LABEL: plain.bin read whole, its cache data file leaves memory
# within 5 s (most of it: a page the daemon reads again may stay)
wait_dropped() {
	d=$(data_of); [ -n "$d" ] || fail "$1: no cache data file for plain.bin"
	i=0
	until [ "$(resident "$d")" -lt $((4 << 20)) ]; do
		i=$((i + 1)); [ $i -lt 50 ] || fail "$1: the cache's data file stays resident ($(resident "$d") bytes)"
		sleep 0.1
	done
}
# read_twice FILE WANT: read its second MiB twice (each one 1 MiB pread, on
# one descriptor advised POSIX_FADV_RANDOM) and print two numbers: the READs
# the daemon answered during the second pass, and how many of the range's
# pages were in the kernel's page cache after the first (mincore on a shared
# mapping).  Through the page cache that is all 256; past it, none.  (The
# READ count alone says little through the page cache: a re-read can set
# off the kernel's readahead past the range.)
read_twice() {
	mkfifo "$T/go" "$T/done"
	python3 - "$M/$1" "$2" "$T/go" "$T/done" >"$T/resident" <<'PY' &
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
want = open(sys.argv[2], 'rb').read()
resident = -1
for k in range(2):
    assert os.pread(fd, 1 << 20, 1 << 20) == want, "second MiB differs"
    if k == 0:
        addr = libc.mmap(None, 2 << 20, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        assert addr not in (None, ctypes.c_void_p(-1).value), "mmap: errno %d" % ctypes.get_errno()
        vec = ctypes.create_string_buffer(256)
        assert libc.mincore(addr + (1 << 20), 1 << 20, vec) == 0, "mincore: errno %d" % ctypes.get_errno()
        resident = sum(b & 1 for b in vec.raw)
        libc.munmap(addr, 2 << 20)
    open(sys.argv[4], 'w').write("read\n")
    open(sys.argv[3]).read()
print(resident)
PY
	pid=$!
	read -r _ <"$T/done"; r0=$(reads "$1"); : >"$T/go"
	read -r _ <"$T/done"; r1=$(reads "$1"); : >"$T/go"
	wait $pid || fail "$1: second MiB differs (or mincore failed)"
	rm -f "$T/go" "$T/done"
	echo "$((r1 - r0)) $(cat "$T/resident")"
}
dd if="$S/plain.bin" bs=1M skip=1 count=1 status=none >"$T/plain.mib1"
dd if="$T/src/disk" bs=1M skip=1 count=1 status=none >"$T/disk.mib1"

"$THAW" mount "file://$S/" "$M" --cache "$C" --direct-io || fail "mount --direct-io"
exec 3<"$M/plain.bin" # held open: the file stays in this mode (and incomplete)
set -- $(read_twice plain.bin "$T/plain.mib1")
[ "$1" -ge 1 ] || fail "a re-read of an incomplete file made no READ: it was served from FUSE's page cache"
[ "$2" = 0 ] || fail "$2 pages of a direct read are in FUSE's page cache"
# One read, past a flush of what it fetched: its bytes stay in the cache's
# data file, their only copy in memory.
d=$(data_of); [ -n "$d" ] || fail "no cache data file for plain.bin"
r0=$(resident "$d")
dd if="$M/plain.bin" bs=1M skip=10 count=1 status=none >/dev/null
sleep 0.5
[ "$(resident "$d")" -ge $((r0 + (1 << 20))) ] || fail "--direct-io: what was read is not resident in the cache's data file ($r0 -> $(resident "$d") bytes)"
f0=$(file_field plain.bin bytes_fetched)
dd if="$M/plain.bin" bs=1M skip=1 count=1 status=none >/dev/null
[ "$(file_field plain.bin bytes_fetched)" = "$f0" ] || fail "a re-read fetched cached bytes again"
[ "$(file_field plain.bin percent)" != 100 ] || fail "plain.bin complete too early for this test"
set -- $(read_twice disk.img "$T/disk.mib1")
[ "$1" -ge 1 ] || fail "a re-read of an incomplete image made no READ"
[ "$2" = 0 ] || fail "$2 pages of a direct read of the image are in FUSE's page cache"
# Shared mappings of an incomplete file, read whole, and a random 4 KiB
# read beside them.
python3 - "$M/plain.bin" "$S/plain.bin" "$M/disk.img" "$T/src/disk" <<'PY' || fail "mmap of an incomplete file"
import mmap, os, sys
for mnt, src in ((sys.argv[1], sys.argv[2]), (sys.argv[3], sys.argv[4])):
    with open(mnt, 'rb') as f, open(src, 'rb') as g:
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        want = g.read()
        assert m[:] == want, mnt + ": mapping differs"
        assert os.pread(f.fileno(), 4096, 5 << 20) == want[5 << 20:(5 << 20) + 4096], mnt + ": pread differs"
        m.close()
PY
exec 3<&-
cmp "$S/plain.bin" "$M/plain.bin" || fail "plain.bin differs"
cmp "$T/src/disk" "$M/disk.img" || fail "disk.img differs"
unmount

# By default a re-read of an incomplete file comes from the page cache.
# Without passthrough, what is read whole is then held there only: the
# data file's pages go.
rm -rf "$C"
"$THAW" mount "file://$S/" "$M" --cache "$C" --no-passthrough || fail "mount"
exec 3<"$M/plain.bin"
set -- $(read_twice plain.bin "$T/plain.mib1")
[ "$2" = 256 ] || fail "default mount: $2 of 256 pages read are in the page cache"
exec 3<&-
cmp "$S/plain.bin" "$M/plain.bin" || fail "plain.bin differs (default mount)"
wait_dropped "default mount"
unmount

# With passthrough (root), a sequential read leaves the bytes in the data
# file instead, and the file, complete and closed, is handed over to
# passthrough (test_fuse_passthrough checks the hand-over itself).
if [ "$(id -u)" = 0 ]; then
	rm -rf "$C"
	"$THAW" mount "file://$S/" "$M" --cache "$C" || fail "mount"
	cmp "$S/plain.bin" "$M/plain.bin" || fail "plain.bin differs (passthrough mount)"
	sleep 0.5
	d=$(data_of); [ -n "$d" ] || fail "no cache data file for plain.bin"
	[ "$(resident "$d")" -ge $((19 << 20)) ] || fail "passthrough mount: a sequential read's bytes left the data file ($(resident "$d") bytes resident)"
	unmount
fi

# A reader slower than the fetch: the readahead window runs ahead of it and
# the flusher makes that durable (within ~200 ms) before the reader gets
# there.  Without passthrough those pages stay until read, and go once read,
# so the daemon reads nothing back from disk (its read_bytes counts the
# storage reads it causes; the store's file is in the page cache).
rm -rf "$C"
cat "$S/plain.bin" >/dev/null
"$THAW" mount "file://$S/" "$M" --cache "$C" --no-passthrough || fail "mount (slow reader)"
pid=$(py "s['pid']")
io_read() { awk '$1 == "read_bytes:" { print $2 }' "/proc/$pid/io"; }
rb0=$(io_read)
python3 - "$M/plain.bin" "$S/plain.bin" <<'PY' || fail "slow reader: plain.bin differs"
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
got = []
while True:
    b = os.read(fd, 1 << 20)
    if not b:
        break
    got.append(b)
    time.sleep(0.25)
assert b"".join(got) == open(sys.argv[2], "rb").read()
PY
rb=$(( $(io_read) - rb0 ))
[ $rb -lt $((1 << 20)) ] || fail "a slow reader's bytes were read back from disk ($rb bytes): dropped before they were read"
wait_dropped "slow reader"
unmount

# --rw keeps the page cache (writes and reads share it) even if asked not to.
rm -rf "$C"
"$THAW" mount "file://$S/" "$M" --cache "$C" --rw --direct-io || fail "mount --rw --direct-io"
exec 3<"$M/plain.bin"
set -- $(read_twice plain.bin "$T/plain.mib1")
[ "$2" = 256 ] || fail "--rw: $2 of 256 pages read are in the page cache"
exec 3<&-
unmount
if grep -E "Sanitizer|runtime error" "$XDG_RUNTIME_DIR"/thaw/*.log; then fail "sanitizer reports in the daemon log"; fi
exit 0
