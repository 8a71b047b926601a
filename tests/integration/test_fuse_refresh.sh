# test_fuse_refresh.sh - objects added to the store under a mounted prefix
# show up: a lookup of a name the directory lacks, or a read of the
# directory, lists it again once its listing is older than --list-ttl (the
# kernel's negative entries and cached directory pages last no longer).
# Names never go away (a removed object stays listed); with --hydrate new
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
# A removed object stays listed (inode numbers stay valid); its bytes are
# still readable from the cache.
cat "$M/d.bin" >/dev/null || fail "d.bin"
rm "$S/d.bin"
sleep 1.3
[ "$(ls "$M" | tr '\n' ' ')" = "a.bin b.bin d.bin e.bin sub " ] || fail "ls after a removal: $(ls "$M" | tr '\n' ' ')"
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
