# test_fuse_read.sh - thaw mount over a file:// store, read through a real
# FUSE mount: images and plain objects of many sizes (empty, around page and
# chunk edges, zero runs, repeated chunks), nested directories, sequential,
# random and concurrent reads compared byte for byte with the sources; the
# namespace (sizes, hidden .thaw/, ENOENT, EROFS); one fetch per chunk however
# many readers; kernel page cache on re-read; status; SIGTERM unmount.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../fuse_lib.sh"

mkdir -p "$S/dir/deeper" "$M" "$C" "$T/src"

status_json() { "$THAW" status "$M" --json; }
# jq-less field access: py EXPR over the status JSON as s.

# Sources: sizes around 4 KiB pages and 64 KiB / 1 MiB chunks.
i=0
for size in 0 1 4095 4096 4097 65535 65536 65537 1048575 1048576 1048577 3333333; do
	head -c "$size" /dev/urandom >"$T/src/f$i"
	"$THAW" push --chunk-size 64K "$T/src/f$i" "file://$S/img$i" >/dev/null || fail "push f$i"
	cp "$T/src/f$i" "$S/plain$i"
	i=$((i + 1))
done
NF=$i
make_mixed "$T/src/mixed" $((24 * 1048576 + 12345))   # zero runs and repeated chunks
"$THAW" push "$T/src/mixed" "file://$S/dir/mixed.img" >/dev/null || fail "push mixed"
cp "$T/src/mixed" "$S/dir/deeper/mixed.plain"
head -c $((8 << 20)) /dev/urandom >"$S/shared.bin"
mkdir -p "$S/cold"
head -c $((5 << 20)) /dev/urandom >"$S/cold/c1.bin"
"$THAW" push "$T/src/f5" "file://$S/cold/c2.img" >/dev/null || fail "push cold/c2.img"
head -c 100000 /dev/urandom >"$T/src/small"
"$THAW" push "$T/src/small" "file://$S/dir/deeper/small.img" >/dev/null || fail "push small"

# A mountpoint that does not exist, and a store that does not exist, fail clearly.
out=$("$THAW" mount "file://$S/" "$T/nope" --cache "$C" 2>&1) && fail "mount on a missing mountpoint succeeded"
echo "$out" | grep -q "nope" || fail "mount error does not name the mountpoint: $out"
out=$("$THAW" mount "file://$T/no-such-store/" "$M" --cache "$C" 2>&1) && fail "mount of a missing store succeeded"
echo "$out" | grep -qi "no-such-store" || fail "mount error does not name the store: $out"
mountpoint -q "$M" && fail "a failed mount left something mounted"

"$THAW" mount "file://$S/" "$M" --cache "$C" || fail "mount"
mountpoint -q "$M" || fail "not mounted after thaw mount returned"

# Namespace: images show the logical size; .thaw/ is hidden.
ls -a "$M" | grep -q '^\.thaw$' && fail ".thaw/ is visible"
[ -d "$M/dir/deeper" ] || fail "nested directory missing"
i=0
while [ $i -lt $NF ]; do
	want=$(stat -c %s "$T/src/f$i")
	[ "$(stat -c %s "$M/img$i")" = "$want" ] || fail "img$i shows size $(stat -c %s "$M/img$i"), want $want"
	[ "$(stat -c %s "$M/plain$i")" = "$want" ] || fail "plain$i size"
	i=$((i + 1))
done
[ "$(stat -c %s "$M/dir/mixed.img")" = "$(stat -c %s "$T/src/mixed")" ] || fail "mixed.img size"
[ -e "$M/no-such-file" ] && fail "a missing name exists"
cat "$M/no-such-file" 2>/dev/null && fail "reading a missing name worked"

# Read-only: every kind of change says EROFS.
for what in "touch $M/new" "mkdir $M/d2" "rm -f $M/img1" "mv $M/img1 $M/img1x"; do
	err=$(sh -c "$what" 2>&1) && fail "'$what' succeeded on a read-only mount"
	echo "$err" | grep -q "Read-only file system" || fail "'$what' did not say EROFS: $err"
done
python3 - "$M/img5" <<'PY' || fail "open for writing did not fail with EROFS"
import errno, os, sys
try:
    os.open(sys.argv[1], os.O_WRONLY)
except OSError as e:
    sys.exit(0 if e.errno == errno.EROFS else 1)
sys.exit(1)
PY

# Sequential: every file, every byte.
i=0
while [ $i -lt $NF ]; do
	timeout -k 5 60 cmp "$T/src/f$i" "$M/img$i" || fail "img$i differs"
	timeout -k 5 60 cmp "$T/src/f$i" "$M/plain$i" || fail "plain$i differs"
	i=$((i + 1))
done
timeout -k 5 60 cmp "$T/src/small" "$M/dir/deeper/small.img" || fail "small.img differs"

# Random reads (fresh files: nothing cached yet), then concurrent readers.
cat >"$T/rand.py" <<'PY'
import os, random, sys, threading
src, mnt, n, threads, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
size = os.path.getsize(src)
bad = []
def work(k):
    r = random.Random(seed * 100 + k)
    a, b = os.open(src, os.O_RDONLY), os.open(mnt, os.O_RDONLY)
    for _ in range(n):
        off = r.randrange(0, size)
        ln = r.choice([1, 100, 4096, 5000, 65536, 70000, 1 << 20, 3 << 20])
        if os.pread(a, ln, off) != os.pread(b, ln, off):
            bad.append((off, ln))
    os.close(a); os.close(b)
ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
if bad:
    print("mismatch at (offset, length):", bad[:5]); sys.exit(1)
PY
timeout -k 5 120 python3 "$T/rand.py" "$T/src/mixed" "$M/dir/mixed.img" 200 1 1 || fail "random reads of mixed.img"
timeout -k 5 120 python3 "$T/rand.py" "$T/src/mixed" "$M/dir/deeper/mixed.plain" 100 8 2 ||
	fail "concurrent random reads of mixed.plain"
timeout -k 5 120 python3 "$T/rand.py" "$T/src/mixed" "$M/dir/mixed.img" 100 8 3 || fail "concurrent reads of mixed.img"
timeout -k 5 60 cmp "$T/src/mixed" "$M/dir/mixed.img" || fail "mixed.img differs"
timeout -k 5 60 cmp "$T/src/mixed" "$M/dir/deeper/mixed.plain" || fail "mixed.plain differs"

# One fetch per chunk however many readers: a fresh 8 MiB plain object read
# by 8 processes at once brings each byte once, and in few GETs (its 128
# chunks of 64 KiB are coalesced into long ranged GETs).
for k in 1 2 3 4 5 6 7 8; do
	timeout -k 5 60 cmp "$S/shared.bin" "$M/shared.bin" &
done
rc=0; for k in 1 2 3 4 5 6 7 8; do wait %$k || rc=1; done
[ $rc = 0 ] || fail "a concurrent reader of shared.bin saw different bytes"
[ "$(file_field shared.bin bytes_fetched)" = 8388608 ] ||
	fail "8 readers of an 8 MiB object fetched $(file_field shared.bin bytes_fetched) bytes"
[ "$(file_field shared.bin fetches)" -le 16 ] || fail "8 MiB in $(file_field shared.bin fetches) GETs: not coalesced"
[ "$(file_field shared.bin percent)" = 100.0 ] || fail "shared.bin not 100% present"

# Zero chunks of an image are never fetched; repeated chunks are.
nch=$(file_field dir/mixed.img chunks)
fetched=$(file_field dir/mixed.img fetches)
[ "$fetched" -lt "$nch" ] || fail "mixed.img: $fetched fetches for $nch chunks (zero chunks fetched?)"

# A warm re-read comes from the kernel's page cache: no new fetch, no new GET.
g0=$(py "s['store']['gets']")
cat "$M/dir/mixed.img" >/dev/null
cat "$M/dir/mixed.img" >/dev/null
[ "$(py "s['store']['gets']")" = "$g0" ] || fail "re-reading a complete file made GETs"

# status: the table names the files; JSON is well formed and consistent.
"$THAW" status "$M" --once | grep -q "dir/mixed.img" || fail "status table lacks dir/mixed.img"
[ "$(py "all(0 <= f['percent'] <= 100 for f in s['files'])")" = True ] || fail "status percent out of range"
[ "$(py "s['mountpoint']")" = "$(cd "$M/.." && pwd -P)/mnt" ] || fail "status names another mountpoint"

# `thaw status --hydrate PATH`: a directory nobody read is pulled in whole.
"$THAW" status "$M" --hydrate cold --once >/dev/null || fail "status --hydrate cold"
"$THAW" status "$M" --hydrate no/such/path --once 2>"$T/err" && fail "hydrating a missing path succeeded"
grep -q "no/such/path" "$T/err" || fail "hydrate error does not name the path: $(cat "$T/err")"
i=0
until [ "$(py "s['hydrator']['done']")" = 2 ]; do
	i=$((i + 1)); [ $i -lt 300 ] || fail "cold/ not hydrated in 30 s: $(status_json)"
	sleep 0.1
done
[ "$(py "s['hydrator']['failed']")" = 0 ] || fail "hydration of cold/ failed"
[ "$(file_field cold/c1.bin hydrate)" = done ] || fail "cold/c1.bin hydrate state $(file_field cold/c1.bin hydrate)"
g0=$(py "s['store']['gets']")
cmp "$S/cold/c1.bin" "$M/cold/c1.bin" || fail "hydrated cold/c1.bin differs"
cmp "$T/src/f5" "$M/cold/c2.img" || fail "hydrated cold/c2.img differs"
[ "$(py "s['store']['gets']")" -le $((g0 + 2)) ] || fail "reading hydrated files fetched chunks"

# SIGTERM unmounts cleanly, and the control socket goes with it.
pid=$(py "s['pid']")
kill -TERM "$pid"
i=0; while mountpoint -q "$M" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mountpoint -q "$M" && fail "still mounted 10 s after SIGTERM"
i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
kill -0 "$pid" 2>/dev/null && fail "daemon still running after SIGTERM"
"$THAW" status "$M" --json >/dev/null 2>&1 && fail "status answered after unmount"

# Remount: the cache serves every chunk already fetched; nothing is fetched again.
"$THAW" mount "file://$S/" "$M" --cache "$C" || fail "remount"
timeout -k 5 60 cmp "$T/src/mixed" "$M/dir/mixed.img" || fail "mixed.img differs after remount"
[ "$(file_field dir/mixed.img fetches)" = 0 ] || fail "remount fetched $(file_field dir/mixed.img fetches) chunks again"
[ "$(file_field dir/mixed.img cache_hits_at_open)" -gt 0 ] || fail "remount found nothing in the cache"
fusermount3 -u "$M" || fail "fusermount3 -u"
i=0; while "$THAW" status "$M" --json >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
sleep 0.5
i=0; while pgrep -f "thaw mount .*$T/" >/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
pgrep -af "thaw mount .*$T/" && fail "a mount daemon outlived its mount (or a refused mount)"
if grep -E "Sanitizer|runtime error" "$XDG_RUNTIME_DIR"/thaw/*.log; then fail "the daemon's log has sanitizer reports"; fi
exit 0
