# test_fuse_many.sh - a directory of more files than the daemon may hold
# file descriptors for.  Each open blob holds three; the kernel remembers every
# file an `ls -l` looked up, so a daemon that kept them all open ran out at a
# few hundred files under a limit of 1024 ("Too many open files", and EIO for
# every read after).  Open blobs are bounded by the limit, and the daemon
# raises its soft limit to the hard one first.  Reading a directory has its
# files opened ahead of their lookups (prober.c), without a lookup needed.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../fuse_lib.sh"

N=600
mkdir -p "$S/many"
python3 - "$S/many" "$N" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, "f%04d" % i), "wb") as f:
        f.write(os.urandom(100 + 37 * i))
PY

head -c 300000 /dev/urandom >"$S/chg.bin"

# Hard and soft limit 256: room for ~40 blobs.
(ulimit -n 256 && exec "$THAW" mount "file://$S/" "$M" --cache "$C") || fail "mount with 256 file descriptors"
pid=$(py "s['pid']")
grep -q "^Max open files *256 *256" "/proc/$pid/limits" || fail "the daemon's limit is not 256: $(grep 'open files' "/proc/$pid/limits")"

[ "$(ls -l "$M/many" | grep -c '^-')" = "$N" ] || fail "ls -l shows $(ls -l "$M/many" | grep -c '^-') files, not $N"
# Sizes come from each blob (the listing's would do too for plain files; the
# point is that every lookup answered).
bad=$(ls -l "$M/many" | awk 'NR > 1 { i = substr($9, 2) + 0; if ($5 != 100 + 37 * i) print $9 }' | head -3)
[ -z "$bad" ] || fail "wrong sizes after ls -l: $bad"
for f in "$S"/many/*; do
	cmp -s "$f" "$M/many/${f##*/}" || fail "${f##*/} differs through the mount"
done
# Twice: the second pass reopens blobs closed to make room.
for f in "$S"/many/*; do
	cmp -s "$f" "$M/many/${f##*/}" || fail "${f##*/} differs on the second pass"
done
# Four readers at once, each in its own order, while blobs are closed and
# opened again under them (the idle list under contention).
for k in 0 1 2 3; do
	(
		ls "$S/many" | awk -v k=$k '{ print ((NR * 7919 + k * 104729) % 1000003) " " $0 }' | sort -n | cut -d' ' -f2 |
			while read -r f; do cmp -s "$S/many/$f" "$M/many/$f" || { echo "$f" >"$T/par$k.bad"; break; }; done
	) &
done
wait
for k in 0 1 2 3; do [ ! -e "$T/par$k.bad" ] || fail "parallel reader $k: $(cat "$T/par$k.bad") differs"; done
nfd=$(ls "/proc/$pid/fd" | wc -l)
[ "$nfd" -lt 256 ] || fail "the daemon holds $nfd file descriptors"
! LOG | grep -q "Too many open files" || fail "the daemon ran out of file descriptors: $(LOG | grep -m1 'Too many')"
[ "$(py "sum(f['errors'] for f in s['files'])")" = 0 ] || fail "status reports errors: $(py "[f for f in s['files'] if f['errors']][:2]")"
note "$N files with 256 file descriptors: listed, read twice, then by four readers at once; $nfd descriptors held"

# A file the kernel holds (its size, its pages) whose blob was closed to make
# room, and whose object changed meanwhile: reopening it must not serve the
# new version under the old size, but fail with a clear message.
cmp "$S/chg.bin" "$M/chg.bin" || fail "chg.bin differs"
head -c 200000 /dev/urandom >"$S/chg.bin"
cat "$M"/many/* >/dev/null
[ "$(file_field chg.bin open)" = False ] || fail "chg.bin's blob was not closed to make room"
! cat "$M/chg.bin" >"$T/chg.out" 2>"$T/chg.err" || fail "chg.bin, changed under the kernel's view of it, read ($(wc -c <"$T/chg.out") bytes)"
grep -q "Input/output error" "$T/chg.err" || fail "chg.bin: $(cat "$T/chg.err")"
LOG | grep -q "chg.bin changed in the store" || fail "no log line says chg.bin changed"
unmount

# Soft limit 128 under a hard one of 8192: the daemon raises its own (and
# then may open ahead every file of the directory, under half its bound).
rm -rf "$C" && mkdir "$C"
(ulimit -S -n 128 && ulimit -H -n 8192 && exec "$THAW" mount "file://$S/" "$M" --cache "$C") || fail "mount with a soft limit of 128"
pid=$(py "s['pid']")
grep -q "^Max open files *8192 *8192" "/proc/$pid/limits" || fail "the daemon did not raise its soft limit: $(grep 'open files' "/proc/$pid/limits")"
# A listing alone (no lookups) has every file opened in the background.
[ "$(ls "$M/many" | wc -l)" = "$N" ] || fail "ls shows $(ls "$M/many" | wc -l) names, not $N"
i=0; while [ "$(py "s['untouched']['files']")" != 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ "$(py "s['untouched']['files']")" = 0 ] || fail "$(py "s['untouched']['files']") files not opened 10 s after the directory was read"
for f in "$S"/many/*; do
	cmp -s "$f" "$M/many/${f##*/}" || fail "${f##*/} differs under the raised limit"
done
unmount

# --open-ahead 0: reading the directory opens nothing.
"$THAW" mount "file://$S/" "$M" --cache "$C" --open-ahead 0 || fail "mount --open-ahead 0"
[ "$(ls "$M/many" | wc -l)" = "$N" ] || fail "ls with --open-ahead 0"
sleep 1
[ "$(py "s['untouched']['files']")" = "$N" ] || fail "--open-ahead 0 opened $(( N - $(py "s['untouched']['files']") )) files"
unmount
echo "PASS"
