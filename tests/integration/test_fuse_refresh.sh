# test_fuse_refresh.sh - objects added to the store under a mounted prefix
# show up: a lookup of a name the directory lacks, or a read of the
# directory, lists it again once its listing is older than --list-ttl (the
# kernel's negative entries and cached directory pages last no longer).
# Objects removed leave and objects replaced get a new inode (the kernel is
# told to drop the old name), while a descriptor opened before keeps reading
# the version it opened; under --rw names only join; with --hydrate new
# names are hydrated too; --list-ttl 0 keeps the mount a snapshot.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../fuse_lib.sh"

head -c 100000 /dev/urandom >"$S/a.bin"
"$THAW" mount "file://$S/" "$M" --cache "$C" --list-ttl 1 || fail "mount --list-ttl 1"
[ "$(ls "$M" | tr '\n' ' ')" = "a.bin " ] || fail "tree at mount: $(ls "$M" | tr '\n' ' ')"

# New objects: the first look may come within the TTL and miss (and the
# kernel then remembers the miss, for the TTL); after it, the name is there.
head -c 200000 /dev/urandom >"$S/b.bin"
mkdir -p "$S/sub" && head -c 300000 /dev/urandom >"$S/sub/c.bin"
[ -e "$M/b.bin" ] || true
sleep 1.3
cmp "$S/b.bin" "$M/b.bin" || fail "b.bin, added after the mount, is not readable after the TTL"
cmp "$S/sub/c.bin" "$M/sub/c.bin" || fail "sub/c.bin, added after the mount, is not readable"
[ "$(ls "$M" | tr '\n' ' ')" = "a.bin b.bin sub " ] || fail "ls after additions: $(ls "$M" | tr '\n' ' ')"
LOG | grep -q "new name" || fail "the log does not say new names were found"

# A read of the directory lists it again too (no lookup of the new name first).
head -c 1000 /dev/urandom >"$S/d.bin"
sleep 1.3
[ "$(ls "$M" | tr '\n' ' ')" = "a.bin b.bin d.bin sub " ] || fail "ls did not show d.bin: $(ls "$M" | tr '\n' ' ')"
# Within the TTL nothing is listed again: a name added now is not seen at once.
head -c 1000 /dev/urandom >"$S/e.bin"
[ "$(ls "$M" | tr '\n' ' ')" = "a.bin b.bin d.bin sub " ] || fail "ls listed again within the TTL"
# A removed object leaves the directory once it is listed again, and the
# kernel drops the name it had cached (its entry would last an hour).
cat "$M/d.bin" >/dev/null || fail "d.bin"
[ -e "$M/d.bin" ] || fail "d.bin"
rm "$S/d.bin"
sleep 1.3
[ "$(ls "$M" | tr '\n' ' ')" = "a.bin b.bin e.bin sub " ] || fail "ls after a removal: $(ls "$M" | tr '\n' ' ')"
i=0; while [ -e "$M/d.bin" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ ! -e "$M/d.bin" ] || fail "d.bin, removed from the store, can still be looked up"
LOG | grep -q "1 gone" || fail "the log does not say a name left"

# A replaced object: new opens read the new version under its own size; a
# descriptor opened before keeps reading the old one (b.bin was read whole
# above, so its bytes are in the cache).
cp "$S/b.bin" "$T/b.old"
exec 3<"$M/b.bin"
head -c 250000 /dev/urandom >"$S/b.bin.new" && mv "$S/b.bin.new" "$S/b.bin"
sleep 1.3
ls "$M" >/dev/null
i=0; while [ "$(stat -c %s "$M/b.bin")" != 250000 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ "$(stat -c %s "$M/b.bin")" = 250000 ] || fail "b.bin still shows $(stat -c %s "$M/b.bin") bytes after its replacement"
cmp "$S/b.bin" "$M/b.bin" || fail "b.bin after its replacement differs from the new object"
cmp "$T/b.old" - <&3 || fail "a descriptor opened before the replacement did not read the old version"
exec 3<&-
[ "$(py "sum(1 for f in s['files'] if f['path'] == 'b.bin')")" = 1 ] || fail "status shows b.bin $(py "sum(1 for f in s['files'] if f['path'] == 'b.bin')") times"
# Replaced by an object of the same size and the same mtime to the second:
# the listing's ETag tells it apart.
cmp "$S/a.bin" "$M/a.bin" || fail "a.bin"
head -c 100000 /dev/urandom >"$S/a.new" && touch -d "@$(stat -c %Y "$S/a.bin")" "$S/a.new" && mv "$S/a.new" "$S/a.bin"
sleep 1.3
ls "$M" >/dev/null
i=0; while ! cmp -s "$S/a.bin" "$M/a.bin" && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
cmp "$S/a.bin" "$M/a.bin" || fail "a.bin, replaced with the same size and mtime, still reads the old bytes"
unmount

# --rw: names only join (local writes are against the versions mounted).
"$THAW" mount "file://$S/" "$M" --cache "$C" --list-ttl 1 --rw || fail "mount --rw --list-ttl 1"
ls "$M" >/dev/null
rm "$S/e.bin"
sleep 1.3
ls "$M" | grep -q e.bin || fail "--rw: e.bin left the directory"
unmount

# --hydrate: names found by a re-listing are hydrated too.
rm -rf "$C"
"$THAW" mount "file://$S/" "$M" --cache "$C" --list-ttl 1 --hydrate || fail "mount --hydrate --list-ttl 1"
head -c 500000 /dev/urandom >"$S/g.bin"
sleep 1.3
ls "$M" | grep -q g.bin || fail "ls does not show g.bin"
i=0
# (a hydrated file nobody has looked up is closed again: its row keeps the
# bytes fetched)
until [ "$(py "[f['bytes_fetched'] for f in s['files'] if f['path'] == 'g.bin']")" = "[500000]" ]; do
	i=$((i + 1)); [ $i -lt 100 ] || fail "g.bin, found by a re-listing, was not hydrated in 10 s: $(py "s['hydrator']")"
	sleep 0.1
done
cmp "$S/g.bin" "$M/g.bin" || fail "g.bin differs"
unmount
rm "$S/g.bin"

# --list-ttl 0: a snapshot.
rm -rf "$C"
"$THAW" mount "file://$S/" "$M" --cache "$C" --list-ttl 0 || fail "mount --list-ttl 0"
ls "$M" >/dev/null
head -c 1000 /dev/urandom >"$S/f.bin"
sleep 1.3
[ -e "$M/f.bin" ] && fail "--list-ttl 0 listed the directory again"
ls "$M" | grep -q f.bin && fail "--list-ttl 0: ls shows f.bin"
"$THAW" mount --list-ttl x "file://$S/" "$T/none" 2>"$T/err" && fail "a bad --list-ttl was taken"
grep -q "list-ttl" "$T/err" || fail "bad --list-ttl error: $(cat "$T/err")"
unmount
if grep -E "Sanitizer|runtime error" "$XDG_RUNTIME_DIR"/thaw/*.log; then fail "sanitizer reports in the daemon log"; fi
exit 0
