# test_fuse_crash.sh - the persistent cache across a crash: kill -9 the mount
# daemon while it hydrates, lazily unmount the dead mount, remount, and check
# that every chunk present before the crash is served from the cache (not one
# is fetched again: counted in bytes by the blob and in GETs by the store),
# that every byte is right, that hydration completes from where it stopped,
# and that a complete file is then read wholly from local disk.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../fuse_lib.sh"

wait_until() { # SECONDS PYTHON-CONDITION-OVER-s
	n=0
	until [ "$(py "$2" 2>/dev/null)" = True ]; do
		n=$((n + 1)); [ $n -lt $(($1 * 10)) ] || fail "timed out after $1 s waiting for: $2"
		sleep 0.1
	done
}

# Random data: no zero chunks, so every chunk is fetched.
head -c $((16 << 20)) /dev/urandom >"$S/a-plain.bin"
head -c $((48 << 20)) /dev/urandom >"$T/src/b"
"$THAW" push "$T/src/b" "file://$S/b.img" >/dev/null || fail "push"

# Hydrate slowly (6 MiB/s) so the crash lands in the middle of b.img.
"$THAW" mount "file://$S/" "$M" --cache "$C" --hydrate --hydrate-rate 6M --hydrate-jobs 2 || fail "mount"
cat "$M/a-plain.bin" >/dev/null # makes the kernel look the files up, so status lists them
stat "$M/b.img" >/dev/null
# The cache's chunks: a mount keeps an image in 64 KiB sub-blocks.
NB=$(file_field b.img chunks)
CS=$(file_field b.img chunk_size)
[ $((NB * CS)) = $((48 << 20)) ] || fail "b.img: $NB chunks of $CS bytes"
wait_until 60 "[f for f in s['files'] if f['path']=='b.img'][0]['chunks_present'] >= $((NB / 6))"
before=$(file_field b.img chunks_present)
sleep 2 # the cache records a chunk within ~200 ms of its arrival (after fdatasync)
pid=$(py "s['pid']")
kill -9 "$pid"
i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
note "killed the daemon with b.img at >= $before of $NB chunks"
fusermount3 -u -z "$M" || fail "fusermount3 -u -z of the dead mount"
[ "$before" -lt $NB ] || fail "b.img completed before the crash; slow the hydration down"

# Remount without hydration and look at what the cache gave back.
"$THAW" mount "file://$S/" "$M" --cache "$C" || fail "remount"
stat "$M/b.img" "$M/a-plain.bin" >/dev/null
hits=$(file_field b.img cache_hits_at_open)
note "remount: b.img has $hits chunks from the cache"
[ "$hits" -ge "$before" ] || fail "only $hits chunks survived the crash, $before were present 2 s before it"
[ "$hits" -lt $NB ] || fail "all $NB chunks claim to be cached after a crash mid-hydration"
[ "$(file_field a-plain.bin cache_hits_at_open)" = "$(file_field a-plain.bin chunks)" ] ||
	fail "a-plain.bin (hydrated before the crash) lost chunks"
[ "$(file_field b.img fetches)" = 0 ] || fail "opening b.img fetched chunks"

g0=$(py "s['store']['gets']")
timeout -k 5 60 cmp "$T/src/b" "$M/b.img" || fail "b.img differs after the crash"
timeout -k 5 60 cmp "$S/a-plain.bin" "$M/a-plain.bin" || fail "a-plain.bin differs after the crash"
fetches=$(file_field b.img fetches)
gets=$(( $(py "s['store']['gets']") - g0 ))
[ "$(file_field b.img bytes_fetched)" = $(((NB - hits) * CS)) ] ||
	fail "b.img: $(file_field b.img bytes_fetched) bytes fetched after the restart, expected $(((NB - hits) * CS))"
[ "$fetches" -le $((NB - hits)) ] || fail "b.img: $fetches fetches for $((NB - hits)) missing chunks"
[ "$gets" = "$fetches" ] || fail "the store saw $gets GETs for $fetches chunk fetches"
[ "$(file_field a-plain.bin fetches)" = 0 ] || fail "a-plain.bin was fetched again"

# Crash again, this time with hydration finishing the job on the next mount.
kill -9 "$(py "s['pid']")"
sleep 0.3
fusermount3 -u -z "$M" || fail "second fusermount3 -u -z"
"$THAW" mount "file://$S/" "$M" --cache "$C" --hydrate || fail "remount with --hydrate"
stat "$M/b.img" >/dev/null
wait_until 60 "s['hydrator']['queued'] == 0 and s['hydrator']['current'] == '' and s['hydrator']['done'] == 2"
[ "$(file_field b.img percent)" = 100.0 ] || { "$THAW" status "$M" --json; cat "$XDG_RUNTIME_DIR"/thaw/*.log; fail "b.img not complete after hydration"; }
[ "$(file_field b.img hydrate)" = done ] || fail "b.img hydrate state: $(file_field b.img hydrate)"

# Complete: served wholly from local disk even with the store's chunks gone.
# (O_DIRECT goes past the kernel's page cache to the daemon.)
mv "$S/.thaw" "$S/.thaw.away"
g0=$(py "s['store']['gets']")
timeout -k 5 60 dd if="$M/b.img" iflag=direct bs=1M status=none | cmp - "$T/src/b" || fail "complete b.img unreadable without the store"
[ "$(py "s['store']['gets']")" = "$g0" ] || fail "reading a complete file went to the store"
mv "$S/.thaw.away" "$S/.thaw"
fusermount3 -u "$M" || fail "unmount"
sleep 0.5
i=0; while pgrep -f "thaw mount .*$T/" >/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
pgrep -af "thaw mount .*$T/" && fail "a mount daemon outlived its mount (or a refused mount)"
if grep -E "Sanitizer|runtime error" "$XDG_RUNTIME_DIR"/thaw/*.log; then fail "sanitizer reports in the daemon log"; fi
exit 0
