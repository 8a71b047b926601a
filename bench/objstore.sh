#!/bin/sh
# objstore.sh - `make bench-objstore`: ranged-GET throughput through the lazy
# blob against parallel curl on the same object in the same run, push
# throughput against one curl PUT, and the chunk-size sweep behind the default
# (docs/FORMAT.md).  Prints ratios; bench/RESULTS.md records a run.
# BENCH_MB (default 1024) sets the object size.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
TOOLS=$BUILD/tools
THAW=$BUILD/thaw
MB=${BENCH_MB:-1024}
SIZE=$((MB << 20))
T=$(mktemp -d /tmp/thaw-bench.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
NODE_OPTIONS=--openssl-legacy-provider "$top/tests/node_modules/.bin/s3rver" -d "$T/s3" -a 127.0.0.1 -p "$PORT" -s --configure-bucket thaw >/dev/null 2>&1 &
S3PID=$!
trap 'kill $S3PID 2>/dev/null; rm -rf "$T"' EXIT INT TERM
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
until curl -s -o /dev/null "$AWS_ENDPOINT_URL/thaw?list-type=2"; do sleep 0.1; done
URL=$AWS_ENDPOINT_URL/thaw/obj

j() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
ratio() { echo "scale=2; $1 / $2" | bc; }

echo "== setup: ${MB} MiB of random data"
head -c "$SIZE" /dev/urandom >"$T/obj"
start=$(date +%s.%N)
curl -s -T "$T/obj" "$URL" -o /dev/null
curl_put=$(echo "$SIZE / ($(date +%s.%N) - $start) / 1000000" | bc -l | cut -c1-6)

echo "== ranged GETs of the plain object: thaw lazy blob (hydrate) vs parallel curl"
printf '%-6s %-5s %12s %12s %8s\n' part jobs "thaw MB/s" "curl MB/s" ratio
best_thaw=0; best_curl=0
for part in 1M 8M; do
	pbytes=$(( $(echo "$part" | tr -d M) << 20 ))
	for jobs in 1 4 8 16; do
		t=$("$TOOLS/blobcat" "s3://thaw/obj" --part "$part" --jobs "$jobs" | j MBps)
		c=$(sh "$top/bench/pcurl.sh" "$URL" "$SIZE" "$pbytes" "$jobs")
		printf '%-6s %-5s %12s %12s %8s\n' "$part" "$jobs" "$t" "$c" "$(ratio "$t" "$c")"
		best_thaw=$(echo "if ($t > $best_thaw) $t else $best_thaw" | bc)
		best_curl=$(echo "if ($c > $best_curl) $c else $best_curl" | bc)
	done
done
echo "best thaw ${best_thaw} MB/s vs best parallel curl ${best_curl} MB/s: ratio $(ratio "$best_thaw" "$best_curl") (target >= 0.9)"

echo "== push (${MB} MiB random, 1 MiB chunks, 16 jobs) vs one curl PUT of the same bytes"
start=$(date +%s.%N)
"$THAW" push "$T/obj" "s3://thaw/img" >/dev/null
push=$(echo "$SIZE / ($(date +%s.%N) - $start) / 1000000" | bc -l | cut -c1-6)
echo "thaw push ${push} MB/s, curl PUT ${curl_put} MB/s: ratio $(ratio "$push" "$curl_put")"

echo "== pull (stop-and-copy) of the image vs parallel curl of the plain object"
start=$(date +%s.%N)
"$THAW" pull "s3://thaw/img" "$T/out" >/dev/null
pull=$(echo "$SIZE / ($(date +%s.%N) - $start) / 1000000" | bc -l | cut -c1-6)
cmp -s "$T/obj" "$T/out" || { echo "pull: bytes differ" >&2; exit 1; }
rm -f "$T/out"
echo "thaw pull ${pull} MB/s vs best parallel curl ${best_curl} MB/s: ratio $(ratio "$pull" "$best_curl")"

echo "== chunk-size sweep (image of 256 MiB): hydrate throughput, cold random 4 KiB read latency"
head -c $((256 << 20)) "$T/obj" >"$T/small"
printf '%-6s %12s %14s %14s %14s\n' chunk "hydrate MB/s" "cold p50 ms" "cold p99 ms" "fetched/read"
for cs in 64K 256K 1M 4M 8M; do
	"$THAW" push --chunk-size "$cs" "$T/small" "s3://thaw/sweep-$cs" >/dev/null
	h=$("$TOOLS/blobcat" "s3://thaw/sweep-$cs" --jobs 16 | j MBps)
	r=$("$TOOLS/blobcat" "s3://thaw/sweep-$cs" --mode random --count 100 --jobs 16)
	p50=$(echo "$r" | j cold_p50_us); p99=$(echo "$r" | j cold_p99_us); f=$(echo "$r" | j fetched)
	printf '%-6s %12s %14s %14s %14s\n' "$cs" "$h" "$(echo "scale=2; $p50/1000" | bc)" \
		"$(echo "scale=2; $p99/1000" | bc)" "$(echo "$f / 100 / 1024" | bc) KiB"
done
raw=$(for i in 1 2 3 4 5 6 7 8 9 10; do curl -s -o /dev/null -w '%{time_total}\n' -r 40960-45055 "$URL"; done | sort -n | sed -n 5p)
echo "one raw 4 KiB ranged GET (curl, median of 10): $(echo "$raw * 1000" | bc) ms"
