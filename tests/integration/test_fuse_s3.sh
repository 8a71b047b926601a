# test_fuse_s3.sh - thaw mount over s3:// (s3rver behind tests/tools/faultproxy):
# the tree under a prefix (and a whole bucket with .thaw/ hidden), images and
# plain objects read sequentially, randomly and concurrently and compared byte
# for byte; GETs counted at the proxy (one per chunk, none for a complete
# file, none again after kill -9 and remount for chunks already cached); and
# a store failing beyond its retries (EIO within the retry budget, the rest
# of the mount unharmed), transient failures healed by retries, a GET cut
# short keeping its whole chunks, a slow link read without being called
# stalled, a corrupt chunk refused, an ETag changing under a plain object
# refused.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../fuse_lib.sh"

[ -x "$TESTS_DIR/node_modules/.bin/s3rver" ] || skip "s3rver not installed (make deps)"
[ -x "$TOOLS/faultproxy" ] || skip "faultproxy not built"

mkdir -p "$M" "$C" "$T/src" "$T/blk"
start_s3rver thaw
UP="http://127.0.0.1:$S3_PORT/thaw" # straight to s3rver, past the proxy
start_faultproxy
B=$S3_BUCKET
# A short retry budget, so a store that keeps failing ends quickly.
export THAW_STORE_ATTEMPTS=3 THAW_STORE_TOTAL_MS=6000 THAW_STORE_STALL_MS=1500

wait_until() {
	n=0
	until [ "$(py "$2" 2>/dev/null)" = True ]; do
		n=$((n + 1)); [ $n -lt $(($1 * 10)) ] || fail "timed out after $1 s waiting for: $2"
		sleep 0.1
	done
}
read_at() { # FILE MIB -> md5 of the 512 KiB at MiB MIB, read with O_DIRECT in one request, or EIO
	out=$(timeout -k 5 60 dd if="$1" iflag=direct bs=512K skip=$(($2 * 2)) count=1 status=none 2>&1 >"$T/rd") && { md5sum <"$T/rd" | cut -c1-32; return; }
	case $out in *"Input/output error"*) echo EIO ;; *) echo "OTHER: $out" ;; esac
}
md5_at() { dd if="$1" bs=512K skip=$(($2 * 2)) count=1 status=none | md5sum | cut -c1-32; }
chunk_key() { # SRC MIB -> the key of the chunk object holding that block
	dd if="$1" bs=1M skip="$2" count=1 status=none >"$T/want"
	for k in $(curl -s "$UP?list-type=2&prefix=.thaw/chunks/" | grep -o '<Key>[^<]*</Key>' | sed 's/<[^>]*>//g'); do
		curl -s -o "$T/got" "$UP/$k"
		cmp -s "$T/got" "$T/want" && { echo "$k"; return; }
	done
	fail "no chunk object holds block $2 of $1"
}
unmount() { fusermount3 -u "$M" || fail "unmount"; }
# timed_head NAME BYTES: read the first BYTES of $M/NAME in one O_DIRECT read,
# fail unless they are $T/src/SRC's (SRC: NAME without .bin); sets el (ms).
timed_head() {
	t0=$(date +%s%N)
	timeout -k 5 60 dd if="$M/$1" iflag=direct bs="$2" count=1 status=none >"$T/rd" || fail "head of $1"
	el=$(( ($(date +%s%N) - t0) / 1000000 ))
	head -c "$2" "$T/src/${1%.bin}" | cmp -s - "$T/rd" || fail "head of $1 differs"
}

make_mixed "$T/src/a" $((20 << 20))
head -c $((9 * 1048576 + 123)) /dev/urandom >"$T/src/plain"
head -c 300000 /dev/urandom >"$T/src/b"
for k in 0 1 2 3 4 5; do head -c 1048576 /dev/urandom >"$T/blk/$k"; done
cat "$T"/blk/* >"$T/src/f"
"$THAW" push "$T/src/a" "s3://$B/vm/a.img" >/dev/null || fail "push a"
"$THAW" push "$T/src/b" "s3://$B/vm/sub/b.img" >/dev/null || fail "push b"
"$THAW" push "$T/src/f" "s3://$B/vm/f.img" >/dev/null || fail "push f"
curl -sf -T "$T/src/plain" "$UP/vm/plain.bin" >/dev/null || fail "put plain"
curl -sf -T "$T/src/b" "$UP/elsewhere/x" >/dev/null || fail "put elsewhere"

# --- the tree and the bytes ---
"$THAW" mount "s3://$B/vm" "$M" --cache "$C" || fail "mount s3://$B/vm"
[ "$(ls "$M" | tr '\n' ' ')" = "a.img f.img plain.bin sub " ] || fail "tree: $(ls "$M" | tr '\n' ' ')"
[ "$(stat -c %s "$M/a.img")" = $((20 << 20)) ] || fail "a.img size $(stat -c %s "$M/a.img")"
[ "$(stat -c %s "$M/plain.bin")" = $((9 * 1048576 + 123)) ] || fail "plain.bin size"
# Files at the root are opened at mount and their first chunk asked for: let
# that settle (and the proxy log it) before counting from here on.
i=0
while [ "$(file_field a.img inflight)" != 0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
sleep 0.3
fault_clear
f0=$(file_field a.img fetches)
timeout -k 5 120 cmp "$T/src/a" "$M/a.img" || fail "a.img differs"
# (the proxy logs a request after its last byte is sent, which can be after
# the daemon has used the answer: give the log a moment to catch up)
i=0
while gets=$(fault_gets ".thaw/chunks/") && [ "$gets" != $(($(file_field a.img fetches) - f0)) ] && [ $i -lt 20 ]; do
	sleep 0.1; i=$((i + 1))
done
[ "$gets" = $(($(file_field a.img fetches) - f0)) ] ||
	fail "a.img: $gets chunk GETs at the proxy, $(($(file_field a.img fetches) - f0)) fetches"
[ "$gets" -lt 20 ] || fail "a.img: $gets GETs for 20 chunks, some zero"
timeout -k 5 120 cmp "$T/src/plain" "$M/plain.bin" || fail "plain.bin differs"
timeout -k 5 60 cmp "$T/src/b" "$M/sub/b.img" || fail "sub/b.img differs"
cat >"$T/rand.py" <<'PY'
import os, random, sys, threading
src, mnt, n, threads, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
size = os.path.getsize(src); bad = []
def work(k):
    r = random.Random(seed * 100 + k)
    a, b = os.open(src, os.O_RDONLY), os.open(mnt, os.O_RDONLY)
    for _ in range(n):
        off = r.randrange(0, size); ln = r.choice([1, 4096, 5000, 70000, 1 << 20, 3 << 20])
        if os.pread(a, ln, off) != os.pread(b, ln, off): bad.append((off, ln))
ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
sys.exit("mismatch at %s" % bad[:5] if bad else 0)
PY
timeout -k 5 120 python3 "$T/rand.py" "$T/src/f" "$M/f.img" 60 6 1 || fail "concurrent random reads of f.img"
timeout -k 5 60 cmp "$T/src/f" "$M/f.img" || fail "f.img differs"
# A complete file is read again without a single GET.
fault_clear
cat "$M/a.img" "$M/plain.bin" >/dev/null
timeout -k 5 60 dd if="$M/a.img" iflag=direct bs=1M status=none | cmp - "$T/src/a" || fail "a.img (O_DIRECT) differs"
[ "$(fault_gets /)" = 0 ] || fail "reading complete files made $(fault_gets /) GETs"
unmount

# A whole bucket: .thaw/ stays hidden.
"$THAW" mount "s3://$B/" "$M" --cache "$C" || fail "mount the bucket"
[ "$(ls -A "$M" | tr '\n' ' ')" = "elsewhere vm " ] || fail "bucket root shows: $(ls -A "$M" | tr '\n' ' ')"
cmp "$T/src/b" "$M/elsewhere/x" || fail "elsewhere/x differs"
cmp "$T/src/a" "$M/vm/a.img" || fail "vm/a.img differs"
unmount

# --- kill -9 mid-hydration: nothing already cached is fetched again ---
rm -rf "$C"
"$THAW" mount "s3://$B/vm" "$M" --cache "$C" --hydrate --hydrate-rate 2M --hydrate-jobs 2 || fail "mount --hydrate"
stat "$M/a.img" >/dev/null
wait_until 60 "[f for f in s['files'] if f['path']=='a.img'][0]['fetches'] >= 6"
sleep 2 # the cache records a chunk within ~200 ms of its arrival (after fdatasync)
kill -9 "$(py "s['pid']")"
sleep 0.3
fusermount3 -u -z "$M"
"$THAW" mount "s3://$B/vm" "$M" --cache "$C" || fail "remount after kill -9"
stat "$M/a.img" >/dev/null
hits=$(file_field a.img cache_hits_at_open)
present=$(file_field a.img chunks_present)
[ "$hits" -ge 4 ] || fail "only $hits chunks of a.img survived the crash"
fault_clear
timeout -k 5 120 cmp "$T/src/a" "$M/a.img" || fail "a.img differs after the crash"
# A mount reads an image in 64 KiB sub-blocks (the cache's chunks), a GET
# taking those of one stored chunk that are missing: the bytes fetched are
# exactly the missing sub-blocks.
nch=$(file_field a.img chunks)
[ "$(file_field a.img chunk_size)" = 65536 ] || fail "a.img not read in 64 KiB sub-blocks"
[ "$(fault_bytes ".thaw/chunks/")" = $(((nch - present) * 65536)) ] ||
	fail "after the crash: $(fault_bytes ".thaw/chunks/") bytes of chunk GETs, expected $(((nch - present) * 65536)) ($present of $nch sub-blocks present at open)"
[ "$(fault_gets ".thaw/chunks/")" -le $((nch - present)) ] || fail "after the crash: more chunk GETs than missing sub-blocks"
unmount

# --- a store that fails ---
head -c $((8 << 20)) /dev/urandom >"$T/src/p2"
curl -sf -T "$T/src/p2" "$UP/vm/p2.bin" >/dev/null || fail "put p2"
head -c $((8 << 20)) /dev/urandom >"$T/src/p3"
curl -sf -T "$T/src/p3" "$UP/vm/p3.bin" >/dev/null || fail "put p3"
head -c $((400 << 10)) /dev/urandom >"$T/src/p4"
curl -sf -T "$T/src/p4" "$UP/vm/p4.bin" >/dev/null || fail "put p4"
curl -sf -T /dev/null "$UP/vm/empty.bin" >/dev/null || fail "put empty"
rm -rf "$C"
"$THAW" mount "s3://$B/vm" "$M" --cache "$C" || fail "mount for faults"
# An empty object reads as empty at once (s3rver answers its range GET oddly).
[ "$(timeout -k 2 5 cat "$M/empty.bin" | wc -c)" = 0 ] || fail "empty.bin did not read as empty within 5 s"
# A long ranged GET is published chunk by chunk: a reader at its head is not
# held up by its tail.  (The first read asks for chunks 1-3 plus a 1 MiB
# window, one GET of ~1.2 MiB; the proxy sends half of it, then pauses 4 s.)
stat "$M/p2.bin" >/dev/null # opens it: the probe GET brings chunk 0
fault "stall=4000,method=GET,path=vm/p2.bin,count=1"
timed_head p2.bin 262144
[ $el -lt 3000 ] || fail "a read at the head of a stalled GET took $el ms: chunks not published as they land"
[ "$(file_field p2.bin fetches)" = 1 ] || fail "p2.bin: $(file_field p2.bin fetches) GETs for its head and window, want 1"
timeout -k 5 60 cmp "$T/src/p2" "$M/p2.bin" || fail "p2.bin differs after the stalled GET"
fault_clear
# A GET cut short for good keeps every whole chunk it brought (the store's
# retries resume it, each answer cut in half again, until they run out): those
# chunks are not fetched again, though the last of them may still have been
# waiting to be written in one batch when the GET failed.
fault "short_body,method=GET,path=vm/p3.bin"
timeout -k 5 60 dd if="$M/p3.bin" iflag=direct bs=1M count=1 status=none >/dev/null 2>&1 || true
p3='[f for f in s["files"] if f["path"]=="p3.bin"][0]'
wait_until 30 "$p3['fetch_failures'] >= 1 and $p3['inflight'] == 0"
sleep 0.3 # the proxy logs a GET once it has closed it
# The whole chunks the cut answers brought, from the proxy's log of each GET's
# range and the body bytes it sent, and chunk 0 (brought when the mount opened
# the file).
whole=$(grep "^GET [^ ]*vm/p3.bin" "$T/proxy.log" | python3 -c '
import re, sys
got = [(0, 65536)]
for line in sys.stdin:
    m = re.search(r" range=bytes=(\d+)-", line)
    a = int(m.group(1)) if m else 0
    got.append((a, a + int(re.search(r" bytes=(\d+)", line).group(1))))
got.sort()
runs = []
for a, b in got:
    if runs and a <= runs[-1][1]:
        runs[-1][1] = max(runs[-1][1], b)
    else:
        runs.append([a, b])
print(sum(max(0, b // 65536 - (a + 65535) // 65536) for a, b in runs))')
kept=$(file_field p3.bin chunks_present)
[ "$kept" -gt 16 ] && [ "$kept" -lt 128 ] || fail "p3.bin: $kept of 128 chunks present after a GET cut short for good"
[ "$kept" = "$whole" ] || fail "p3.bin: $kept chunks kept of the $whole whole chunks the cut GETs brought"
fault_clear
timeout -k 5 60 cmp "$T/src/p3" "$M/p3.bin" || fail "p3.bin differs after a GET cut short"
[ "$(fault_bytes vm/p3.bin)" = $(((128 - kept) * 65536)) ] ||
	fail "p3.bin: $(fault_bytes vm/p3.bin) bytes fetched after the cut GET, expected $(((128 - kept) * 65536)) ($kept of 128 chunks kept)"
# A slow link is not a stall.  The loop asks the kernel to wake it only once
# 256 KiB of a GET have landed (SO_RCVLOWAT); at 100 KiB/s that would take
# longer than the stall limit (1.5 s here), so a GET that sees no bytes for
# 200 ms goes back to reading them as they come.  The first read asks for
# chunk 1 and a window to the end of the file: one GET of 336 KiB.
fault_clear
fault "rate=100,method=GET,path=vm/p4.bin,count=1"
timed_head p4.bin 131072
[ $el -lt 1400 ] || fail "64 KiB at 100 KiB/s took $el ms to reach the reader"
timeout -k 5 60 cmp "$T/src/p4" "$M/p4.bin" || fail "p4.bin differs after the slow GET"
i=0; while [ "$(fault_gets vm/p4.bin)" -lt 1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done # logged once sent
[ "$(fault_gets vm/p4.bin)" = 1 ] || fail "p4.bin: $(fault_gets vm/p4.bin) GETs, want 1 (a slow GET was called stalled)"
k2=$(chunk_key "$T/src/f" 2)
fault "status=500,method=GET,path=$k2"
t0=$(date +%s)
[ "$(read_at "$M/f.img" 2)" = EIO ] || fail "a chunk the store keeps failing was not EIO"
el=$(( $(date +%s) - t0 ))
[ $el -le 20 ] || fail "EIO took $el s with a 6 s retry budget"
[ "$(fault_gets "$k2")" = 3 ] || fail "$(fault_gets "$k2") GETs of the failing chunk, want 3 (the retry budget)"
[ "$(read_at "$M/f.img" 3)" = "$(md5_at "$T/src/f" 3)" ] || fail "chunk 3 unreadable next to a failing chunk"
timeout -k 5 60 cmp "$T/src/b" "$M/sub/b.img" || fail "sub/b.img unreadable while f.img fails"
LOG | grep -q "500" || fail "the log does not give the store's status"
fault_clear
[ "$(read_at "$M/f.img" 2)" = "$(md5_at "$T/src/f" 2)" ] || fail "chunk 2 unreadable once the store recovered"
# Transient: two 503s and a reset mid-body, healed by the store's retries.
k4=$(chunk_key "$T/src/f" 4)
fault "status=503,method=GET,path=$k4,count=2"
[ "$(read_at "$M/f.img" 4)" = "$(md5_at "$T/src/f" 4)" ] || fail "two 503s were not retried"
k5=$(chunk_key "$T/src/f" 5)
fault "reset_mid_body,method=GET,path=$k5,count=1"
[ "$(read_at "$M/f.img" 5)" = "$(md5_at "$T/src/f" 5)" ] || fail "a reset mid-body was not retried"
# A random read fetches its chunks on the reader's own thread (no window to
# open); a stall there is caught like one in the store's loop, and the rest
# is fetched by the loop's retry, resuming after the bytes already kept.
fault "stall=5000,method=GET,path=vm/plain.bin,count=1"
t0=$(date +%s%N)
[ "$(read_at "$M/plain.bin" 4)" = "$(md5_at "$T/src/plain" 4)" ] || fail "a random read whose GET stalled"
el=$(( ($(date +%s%N) - t0) / 1000000 ))
[ $el -lt 4500 ] || fail "a random read whose GET stalled took $el ms (stall limit 1500 ms, stall 5000 ms)"
# (the proxy logs the stalled GET when it has sent it all, 5 s in)
i=0; while [ "$(fault_gets vm/plain.bin)" -lt 2 ] && [ $i -lt 70 ]; do sleep 0.1; i=$((i + 1)); done
[ "$(fault_gets vm/plain.bin)" = 2 ] || fail "$(fault_gets vm/plain.bin) GETs for a stalled random read, want 2"
fault_clear
# Corrupt bytes on the wire: fetched twice, refused twice.
k1=$(chunk_key "$T/src/f" 1)
fault "corrupt,method=GET,path=$k1"
[ "$(read_at "$M/f.img" 1)" = EIO ] || fail "a corrupted chunk was served"
[ "$(file_field f.img verify_failures)" = 2 ] || fail "verify failures: $(file_field f.img verify_failures)"
fault_clear
[ "$(read_at "$M/f.img" 1)" = "$(md5_at "$T/src/f" 1)" ] || fail "chunk 1 unreadable after the corruption stopped"
# A plain object whose ETag changes: refused, not mixed.
[ "$(read_at "$M/plain.bin" 0)" = "$(md5_at "$T/src/plain" 0)" ] || fail "plain.bin chunk 0"
fault 'etag="0123456789abcdef",method=GET,path=vm/plain.bin'
[ "$(read_at "$M/plain.bin" 7)" = EIO ] || fail "a chunk with another ETag was served"
LOG | grep -qi "changed" || fail "the log does not say plain.bin changed"
fault_clear
unmount
sleep 0.3
i=0; while pgrep -f "thaw mount .*$T/" >/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
pgrep -af "thaw mount .*$T/" && fail "a mount daemon outlived its mount (or a refused mount)"
if grep -E "Sanitizer|runtime error" "$XDG_RUNTIME_DIR"/thaw/*.log; then fail "sanitizer reports in the daemon log"; fi
exit 0
