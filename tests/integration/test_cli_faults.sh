# test_cli_faults.sh - bad input and a misbehaving store, through the CLI:
# missing credentials, unreachable endpoint, 403, missing bucket/key, damaged
# indexes, corrupt chunks, 503/reset/short body/stall (healed by retries, or
# a clear error within the retry budget), and a full disk on pull.
. "$(dirname "$0")/../lib.sh"

start_s3rver
start_faultproxy
B=$S3_BUCKET
make_mixed "$T/src" $((8 << 20))
"$THAW" push "$T/src" "s3://$B/img" >/dev/null || fail "push"
"$THAW" push "$T/src" "file://$T/store/img" >/dev/null || fail "push file"
# Short retry budget so failing cases end quickly.
export THAW_STORE_ATTEMPTS=4 THAW_STORE_TOTAL_MS=8000 THAW_STORE_STALL_MS=1500

expect_fail() { # pattern command...: must exit non-zero with one line matching pattern
	pat=$1; shift
	if "$@" >"$T/out.txt" 2>"$T/err.txt"; then fail "'$*' succeeded, expected: $pat"; fi
	grep -qi -- "$pat" "$T/err.txt" || fail "'$*': error does not say '$pat': $(cat "$T/err.txt")"
	[ "$(grep -c . "$T/err.txt")" -le 3 ] || fail "'$*' printed more than a few lines: $(cat "$T/err.txt")"
}
pulled_ok() { "$THAW" pull "s3://$B/img" "$T/out" >/dev/null 2>"$T/err.txt" && cmp -s "$T/src" "$T/out"; }

# Credentials, endpoint, bucket, key.
( unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; expect_fail "credentials" "$THAW" stat "s3://$B/img" )
( export AWS_ENDPOINT_URL="http://127.0.0.1:$(free_port)"; expect_fail "127.0.0.1" "$THAW" stat "s3://$B/img" )
expect_fail "no-such-bucket" "$THAW" stat "s3://no-such-bucket/img"
expect_fail "nope" "$THAW" pull "s3://$B/nope" "$T/out"
[ ! -e "$T/out" ] || fail "failed pull left $T/out"
expect_fail "nope" "$THAW" stat "file://$T/store/nope"
fault "status=403,code=AccessDenied,count=1"
expect_fail "denied" "$THAW" stat "s3://$B/img"
fault_clear

# Damaged indexes: truncated, flipped, garbage - refused with a clear error.
head -c 100 "$T/store/img" >"$T/store/trunc"
expect_fail "truncated" "$THAW" stat "file://$T/store/trunc"
expect_fail "truncated" "$THAW" pull "file://$T/store/trunc" "$T/out"
head -c 40 "$T/store/img" >"$T/store/trunc-header"
expect_fail "truncated" "$THAW" stat "file://$T/store/trunc-header"
cp "$T/store/img" "$T/store/flip"
printf '\377' | dd of="$T/store/flip" bs=1 seek=70 conv=notrunc 2>/dev/null
expect_fail "checksum" "$THAW" pull "file://$T/store/flip" "$T/out"
cp "$T/store/img" "$T/store/ver"
printf '\011' | dd of="$T/store/ver" bs=1 seek=8 conv=notrunc 2>/dev/null
expect_fail "version 9" "$THAW" stat "file://$T/store/ver"
[ ! -e "$T/out" ] || fail "failed pull left $T/out"

# A chunk whose bytes don't match its XXH3: fetched twice, then a clear error; no output.
fault "corrupt,method=GET,path=/.thaw/chunks/,count=-1"
expect_fail "XXH3" "$THAW" pull "s3://$B/img" "$T/out"
[ ! -e "$T/out" ] && [ ! -e "$T/out.thaw-part" ] || fail "corrupt pull left output behind"
fault_clear
# ...but one corrupt answer heals with the re-fetch.
fault "corrupt,method=GET,path=/.thaw/chunks/,count=1"
pulled_ok || fail "a single corrupt chunk answer was not healed: $(cat "$T/err.txt")"
fault_clear

# Transient faults heal through retries; every byte right.
for rule in "status=503,code=SlowDown" "status=500" "status=429,code=SlowDown" "reset_mid_body" \
	"short_body" "drop" "stall=4000"; do
	fault_clear
	fault "$rule,method=GET,path=/.thaw/chunks/,count=3"
	pulled_ok || fail "pull did not survive 3 x $rule: $(cat "$T/err.txt")"
	n=$(curl -s "$PROXY/__fault/stats?log=0" | python3 -c 'import json,sys; print(json.load(sys.stdin)["faults"])')
	[ "$n" = 3 ] || fail "$rule: expected 3 faults injected, saw $n"
done
# The index GET is retried too.
fault_clear
fault "status=503,method=GET,path=/$B/img,count=2"
pulled_ok || fail "index GET not retried: $(cat "$T/err.txt")"

# Persistent faults end in a clear error, within the retry budget.
for rule in "status=503,code=SlowDown" "reset_mid_body" "short_body" "stall=20000"; do
	fault_clear
	fault "$rule,method=GET,path=/.thaw/chunks/"
	rm -f "$T/out"
	start=$(date +%s)
	expect_fail "attempt" "$THAW" pull "s3://$B/img" "$T/out"
	secs=$(( $(date +%s) - start ))
	[ $secs -le 20 ] || fail "$rule: gave up only after $secs s (budget 8 s)"
	[ ! -e "$T/out" ] || fail "$rule: failed pull left output"
done
fault_clear

# An object that changes while it is pulled (ETag differs) is refused.
curl -s -X PUT --data-binary @"$T/src" "$AWS_ENDPOINT_URL/$B/plain.bin" >/dev/null
rm -f "$T/out"
fault "delay=1,method=GET,path=/plain.bin,count=1"   # the first GET (the probe) passes unchanged,
fault 'etag="something-else",method=GET,path=/plain.bin,count=1'   # the next sees another version
expect_fail "changed" "$THAW" pull "s3://$B/plain.bin" "$T/out"
fault_clear

# A full disk on pull: a clear error, no partial file, the old file untouched.
mkdir -p "$T/small"
mount -t tmpfs -o size=4m tmpfs "$T/small" || skip "cannot mount a tmpfs (need root)"
at_exit "umount $T/small"
echo keep >"$T/small/out"
expect_fail "no space" "$THAW" pull "s3://$B/img" "$T/small/out"
[ "$(cat "$T/small/out")" = keep ] || fail "the existing file was damaged by a failed pull"
[ ! -e "$T/small/out.thaw-part" ] || fail "partial file left on the full disk"
exit 0
