# test_fuse_cli.sh - the `thaw mount` / `thaw status` command lines: --help,
# bad arguments, --foreground (ready before reads, SIGINT unmounts, a failure
# is one clear line and a non-zero exit), a second mount of a busy
# mountpoint refused, status of something that is not a mount, the live
# progress table on a terminal, and --hydrate with a rate cap that holds.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../fuse_lib.sh"

mkdir -p "$S" "$M" "$C" "$T/empty"

head -c $((12 << 20)) /dev/urandom >"$S/data.bin"

# --help and usage errors.
"$THAW" mount --help | grep -q "MOUNTPOINT" || fail "mount --help"
"$THAW" mount --help | grep -q "thaw status" || fail "mount --help does not point at thaw status"
"$THAW" status --help | grep -q -- "--json" || fail "status --help"
"$THAW" --help | grep -q "mount" || fail "thaw --help does not list mount"
"$THAW" mount "file://$S/" 2>/dev/null && fail "mount without a mountpoint succeeded"
"$THAW" mount "file://$S/" "$M" --jobs 0 2>/dev/null && fail "--jobs 0 accepted"
"$THAW" mount "file://$S/" "$M" --chunk-size 3000 2>/dev/null && fail "--chunk-size 3000 accepted"
"$THAW" mount "ftp://x/y" "$M" --cache "$C" 2>"$T/err" && fail "an ftp:// URL was mounted"
[ "$(grep -c . "$T/err")" = 1 ] || fail "a bad URL printed more than one line: $(cat "$T/err")"
"$THAW" status "$T/empty" 2>"$T/err" && fail "status of a plain directory succeeded"
grep -q "no thaw mount" "$T/err" || fail "status of a non-mount: $(cat "$T/err")"

# --foreground: mounted before any read, SIGINT unmounts and exits 0.
"$THAW" mount "file://$S/" "$M" --cache "$C" --foreground 2>"$T/fg.log" &
FG=$!
i=0; until mountpoint -q "$M"; do i=$((i + 1)); [ $i -lt 100 ] || fail "foreground mount not up in 10 s"; sleep 0.1; done
cmp "$S/data.bin" "$M/data.bin" || fail "foreground mount reads wrong bytes"
# A second mount of the same mountpoint is refused while this one lives.
"$THAW" mount "file://$S/" "$M" --cache "$C" 2>"$T/err" && fail "a second mount of a busy mountpoint succeeded"
grep -q "already" "$T/err" || fail "second mount error: $(cat "$T/err")"
kill -INT $FG
i=0; while kill -0 $FG 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
kill -0 $FG 2>/dev/null && { kill -TERM $FG; fail "foreground mount ignored SIGINT for 10 s"; }
rc=0; wait $FG || rc=$?
[ $rc = 0 ] || fail "foreground mount exited $rc after SIGINT: $(cat "$T/fg.log")"
mountpoint -q "$M" && fail "still mounted after SIGINT"
grep -q "mounted" "$T/fg.log" || fail "the foreground log does not say it mounted"
# A foreground failure: one line, non-zero.
rc=0; "$THAW" mount "file://$T/missing/" "$M" --cache "$C" --foreground 2>"$T/err" || rc=$?
[ $rc != 0 ] || fail "foreground mount of a missing store exited 0"
grep -q "missing" "$T/err" || fail "foreground failure does not name the store: $(cat "$T/err")"

# Status counts listed files no lookup has touched yet (none pre-opened here;
# a lookup that misses lists the directory without reading it, which would
# have its files opened ahead of their lookups).
mkdir -p "$S/more"
for k in 1 2 3; do head -c $((k * 1000)) /dev/urandom >"$S/more/f$k"; done
THAW_FUSE_PREOPEN=0 "$THAW" mount "file://$S/" "$M" --cache "$C" || fail "mount for untouched files"
[ ! -e "$M/more/none" ] || fail "more/none exists"
[ "$(py "s['untouched']['files']")" = 4 ] || fail "untouched files: $(py "s['untouched']")"
[ "$(py "s['untouched']['bytes']")" = $(((12 << 20) + 6000)) ] || fail "untouched bytes: $(py "s['untouched']")"
cmp "$S/more/f2" "$M/more/f2" || fail "more/f2 differs"
[ "$(py "s['untouched']['files']")" = 3 ] || fail "untouched after reading one: $(py "s['untouched']")"
"$THAW" status "$M" --once | grep -q "and 3 listed files (.*) not looked up yet" ||
	fail "the table does not count untouched files: $("$THAW" status "$M" --once)"
fusermount3 -u "$M" || fail "unmount"
rm -rf "$S/more"

# --hydrate with a cap: 12 MiB at 4 MiB/s takes about 3 s, not less.
"$THAW" mount "file://$S/" "$M" --cache "$T/cache2" --hydrate --hydrate-rate 4M || fail "mount --hydrate"
stat "$M/data.bin" >/dev/null
t0=$(date +%s.%N)
i=0
until [ "$(py "s['hydrator']['done']")" = 1 ]; do
	i=$((i + 1)); [ $i -lt 300 ] || fail "not hydrated in 30 s"
	sleep 0.1
done
el=$(echo "$(date +%s.%N) - $t0" | bc)
[ "$(echo "$el > 1.5" | bc)" = 1 ] || fail "12 MiB hydrated in $el s despite a 4 MiB/s cap"
note "12 MiB hydrated in $el s at a 4 MiB/s cap"
# The live table on a terminal: bars, then it stops by itself once idle.
timeout -k 5 20 script -qec "$THAW status $M" /dev/null >"$T/tty.out" || fail "status on a terminal did not end"
grep -q "data.bin" "$T/tty.out" || fail "the terminal table lacks data.bin"
grep -q "\[#####" "$T/tty.out" || fail "the terminal table has no progress bar"
fusermount3 -u "$M"
i=0; while pgrep -f "thaw mount .*$T/" >/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
pgrep -af "thaw mount .*$T/" && fail "a mount daemon outlived its mount (or a refused mount)"
if grep -E "Sanitizer|runtime error" "$XDG_RUNTIME_DIR"/thaw/*.log "$T/fg.log"; then fail "sanitizer reports"; fi
exit 0
