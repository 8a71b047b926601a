# test_cli_roundtrip.sh - push/pull/ls/stat round trips through file:// and
# s3:// (s3rver) with files that mix random data, zero runs and repeats, at
# sizes around the chunk boundaries and one large file; every byte compared.
. "$(dirname "$0")/../lib.sh"

start_s3rver
sizes="1 4096 1048576 1048577 3145728 5000001"
for sz in $sizes; do make_mixed "$T/f$sz" "$sz"; done
make_mixed "$T/big" $((256 << 20))
: >"$T/empty"

roundtrip() { # base-url file label [push options]
	base=$1; f=$2; name=$3; shift 3
	"$THAW" push "$@" "$f" "$base/$name" >"$T/push.out" || fail "push $f to $base/$name"
	"$THAW" pull "$base/$name" "$T/out" >/dev/null || fail "pull $base/$name"
	cmp -s "$f" "$T/out" || fail "bytes differ after push/pull of $f via $base"
	rm -f "$T/out"
}

for base in "file://$T/store" "s3://$S3_BUCKET/imgs"; do
	for sz in $sizes; do roundtrip "$base" "$T/f$sz" "f$sz"; done
	roundtrip "$base" "$T/empty" empty
	roundtrip "$base" "$T/f5000001" f5000001-4k --chunk-size 4K
	roundtrip "$base" "$T/f5000001" f5000001-8m --chunk-size 8M --jobs 3
	start=$(date +%s.%N)
	roundtrip "$base" "$T/big" big
	note "256 MiB push+pull via ${base%%:*}: $(echo "$(date +%s.%N) - $start" | bc | cut -c1-5) s"

	# stat: sizes, zero fraction and dedup savings (make_mixed has 1/4 zero, 1/4 repeated blocks)
	"$THAW" stat --json "$base/big" >"$T/stat.json" || fail "stat $base/big"
	python3 - "$T/stat.json" $((256 << 20)) <<'PY' || fail "stat of big is wrong: $(cat "$T/stat.json")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["kind"] == "thaw-image" and s["size"] == int(sys.argv[2]), s
assert s["chunk_size"] == 1 << 20 and s["chunks"] == 256, s
assert 0.15 < s["zero_fraction"] < 0.35, s
assert s["dedup_saved_bytes"] > 32 << 20, s
assert s["chunks_stored"] + s["chunks_zero"] + s["dedup_saved_bytes"] // (1 << 20) == s["chunks"], s
PY
	"$THAW" stat "$base/f1" | grep -q "thaw image" || fail "stat text output of $base/f1"

	# A second push of the same file uploads nothing new.
	"$THAW" push "$T/big" "$base/big-again" >"$T/push.out"
	grep -q " 0 uploaded" "$T/push.out" || fail "re-push uploaded chunks again: $(cat "$T/push.out")"

	# ls shows the images (not the chunk store), with their index sizes.
	"$THAW" ls "$base/" >"$T/ls.out" || fail "ls $base/"
	grep -q " big$" "$T/ls.out" && grep -q " f1$" "$T/ls.out" || fail "ls misses images: $(cat "$T/ls.out")"
	! grep -q "\.thaw" "$T/ls.out" || fail "ls shows the chunk store"
done

# A plain object (not pushed by thaw) pulls as it is, and ls -r sees nested keys.
mkdir -p "$T/store/sub/deeper"
cp "$T/f5000001" "$T/store/sub/deeper/plain.bin"
"$THAW" pull "file://$T/store/sub/deeper/plain.bin" "$T/out" >/dev/null || fail "pull plain object"
cmp -s "$T/f5000001" "$T/out" || fail "plain object bytes differ"
"$THAW" stat "file://$T/store/sub/deeper/plain.bin" | grep -q "plain object" || fail "stat plain"
"$THAW" ls "file://$T/store/" | grep -q "PRE.*sub/" || fail "ls shows no sub/ prefix"
"$THAW" ls --recursive "file://$T/store/sub/" | grep -q " deeper/plain.bin" || fail "ls -r"
curl -s -X PUT --data-binary @"$T/f1048577" "$AWS_ENDPOINT_URL/$S3_BUCKET/raw/plain.bin" >/dev/null
"$THAW" pull "s3://$S3_BUCKET/raw/plain.bin" "$T/out" >/dev/null || fail "pull plain s3 object"
cmp -s "$T/f1048577" "$T/out" || fail "plain s3 object bytes differ"
"$THAW" ls "s3://$S3_BUCKET/" | grep -q "PRE.*raw/" || fail "s3 ls shows no raw/ prefix"

# Usage errors and help.
for v in push pull ls stat; do "$THAW" $v --help | grep -q "usage: thaw $v" || fail "$v --help"; done
"$THAW" --help | grep -q "commands:" || fail "thaw --help"
! "$THAW" push "$T/f1" 2>/dev/null || fail "push with one argument succeeded"
! "$THAW" push --chunk-size 3000 "$T/f1" "file://$T/store/x" 2>/dev/null || fail "bad chunk size accepted"
! "$THAW" frobnicate 2>/dev/null || fail "unknown verb accepted"
exit 0
