# test_fuse_rw.sh - `thaw mount --rw`: writes land in the local copy-on-write
# overlay (partial writes of chunks never fetched, writes across chunks, whole
# chunks, zero chunks of an image, the last byte), reads see them through the
# page cache and past it (O_DIRECT), nothing reaches the store, the namespace
# and sizes stay fixed (EPERM, EFBIG), writes persist across unmount,
# read-only remount and kill -9 after fsync, and an overlay made over an
# object that has since changed is refused rather than mixed.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../fuse_lib.sh"

store_sum() { find "$S" -type f | sort | xargs md5sum | md5sum; }

make_mixed "$T/src/disk" $((12 * 1048576 + 777))  # zero chunks (1 MiB chunks) and repeats
"$THAW" push "$T/src/disk" "file://$S/disk.img" >/dev/null || fail "push"
head -c $((3 << 20)) /dev/urandom >"$S/plain.bin"
cp "$T/src/disk" "$T/want.disk"
cp "$S/plain.bin" "$T/want.plain"
sum0=$(store_sum)

# The same writes go to the mount and to local copies (want.*).
cat >"$T/write.py" <<'PY'
import os, sys
mnt, want, spec, sync = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
a, b = os.open(mnt, os.O_RDWR), os.open(want, os.O_RDWR)
for i, item in enumerate(spec.split()):
    off, ln = (int(x, 0) for x in item.split(":"))
    data = bytes(((off + k) * 7 + i) & 0xFF for k in range(ln)) if ln < 65536 else os.urandom(ln)
    if os.pwrite(a, data, off) != ln:
        sys.exit("short write at %d" % off)
    os.pwrite(b, data, off)
if sync:
    os.fsync(a)
os.close(a); os.close(b)
PY
MB=1048576
# partial (chunk 1 never read), across chunks 1|2, a whole chunk (5), into a
# zero chunk (1 MiB..: make_mixed puts zeros in every 4th MiB from 1), the last byte.
W1="$((MB + 100)):4096 $((2 * MB - 10)):20 $((5 * MB)):$MB $((MB * 9 + 5)):3000 $((12 * MB + 776)):1"

"$THAW" mount "file://$S/" "$M" --cache "$C" --rw || fail "mount --rw"
g0=$(py "s['store']['gets']")
timeout -k 5 60 python3 "$T/write.py" "$M/disk.img" "$T/want.disk" "$W1" 0 || fail "writes to disk.img"
timeout -k 5 60 python3 "$T/write.py" "$M/plain.bin" "$T/want.plain" "0:10 $((MB + 3)):$((MB + 5))" 1 ||
	fail "writes to plain.bin"
cmp "$T/want.disk" "$M/disk.img" || fail "disk.img does not read back its writes"
timeout -k 5 60 dd if="$M/disk.img" iflag=direct bs=1M status=none | cmp - "$T/want.disk" ||
	fail "disk.img (O_DIRECT) does not read back its writes"
timeout -k 5 60 dd if="$M/plain.bin" iflag=direct bs=1M status=none | cmp - "$T/want.plain" ||
	fail "plain.bin (O_DIRECT) does not read back its writes"
[ "$(store_sum)" = "$sum0" ] || fail "writing through the mount changed the store"
# The chunks the writes touched, in the cache's chunk size (a mount keeps an
# image in 64 KiB sub-blocks).
want=$(python3 -c 'import sys; cs = int(sys.argv[1]); print(len({c for w in sys.argv[2].split() for o, n in [map(int, w.split(":"))] for c in range(o // cs, (o + n - 1) // cs + 1)}))' \
	"$(file_field disk.img chunk_size)" "$W1")
[ "$want" = 21 ] || fail "disk.img: the writes touch $want 64 KiB chunks by this count, not 21"
[ "$(file_field disk.img dirty_chunks)" = "$want" ] || fail "disk.img: $(file_field disk.img dirty_chunks) dirty chunks, want $want"
# The whole-chunk write needed no fetch of chunk 5 (and a zero chunk none either).
[ "$(file_field disk.img fetches)" -le $(( $(file_field disk.img chunks) - 1 )) ] || fail "every chunk fetched"

# Sizes and the namespace stay as they are.
python3 - "$M/disk.img" <<'PY' || fail "writing past the end did not fail with EFBIG"
import errno, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
try:
    os.pwrite(fd, b"x", os.fstat(fd).st_size + 10)
except OSError as e:
    sys.exit(0 if e.errno == errno.EFBIG else 1)
sys.exit(1)
PY
err=$(truncate -s 100 "$M/disk.img" 2>&1) && fail "truncate succeeded"
echo "$err" | grep -q "not permitted" || fail "truncate: $err"
err=$(touch "$M/newfile" 2>&1) && fail "creating a file succeeded"
echo "$err" | grep -q "not permitted" || fail "create: $err"
[ "$(stat -c %s "$M/disk.img")" = $((12 * MB + 777)) ] || fail "disk.img changed size"

# Persistence: unmount, remount read-only (writes still show), remount --rw.
unmount
"$THAW" mount "file://$S/" "$M" --cache "$C" || fail "read-only remount"
cmp "$T/want.disk" "$M/disk.img" || fail "a read-only remount does not show the writes"
cmp "$T/want.plain" "$M/plain.bin" || fail "a read-only remount does not show plain.bin's writes"
python3 -c "import os,sys; os.open(sys.argv[1], os.O_RDWR)" "$M/disk.img" 2>/dev/null && fail "read-only mount opened for writing"
unmount
"$THAW" mount "file://$S/" "$M" --cache "$C" --rw || fail "remount --rw"
cmp "$T/want.disk" "$M/disk.img" || fail "writes lost across remount"

# kill -9 after fsync: what was fsynced survives.
timeout -k 5 60 python3 "$T/write.py" "$M/disk.img" "$T/want.disk" "$((3 * MB + 1)):50000 $((7 * MB)):9" 1 ||
	fail "writes before the crash"
kill -9 "$(py "s['pid']")"
sleep 0.3
fusermount3 -u -z "$M"
"$THAW" mount "file://$S/" "$M" --cache "$C" --rw || fail "remount after kill -9"
timeout -k 5 60 cmp "$T/want.disk" "$M/disk.img" || fail "fsynced writes lost in a crash"
[ "$(store_sum)" = "$sum0" ] || fail "the store changed"
unmount

# The object under an overlay changes: that file is refused, not mixed.
head -c $((3 << 20)) /dev/urandom >"$T/newplain"
mv "$T/newplain" "$S/plain.bin"
"$THAW" mount "file://$S/" "$M" --cache "$C" --rw || fail "remount after the base changed"
cat "$M/plain.bin" >/dev/null 2>&1 && fail "plain.bin readable though its overlay was made over another version"
LOG | grep -q "refusing to mix" || fail "the log does not explain why plain.bin is refused"
cmp "$T/want.disk" "$M/disk.img" || fail "disk.img unreadable next to a refused file"
unmount
sleep 0.3
i=0; while pgrep -f "thaw mount .*$T/" >/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
pgrep -af "thaw mount .*$T/" && fail "a mount daemon outlived its mount (or a refused mount)"
if grep -E "Sanitizer|runtime error" "$XDG_RUNTIME_DIR"/thaw/*.log; then fail "sanitizer reports in the daemon log"; fi
exit 0
