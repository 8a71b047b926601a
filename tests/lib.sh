# lib.sh - sourced by every integration test (tests/integration/test_*.sh).
# The runner sets BUILD (build dir), THAW ($BUILD/thaw) and TOOLS ($BUILD/tools).
# A test exits 0 (pass), 77 (skip: say why on stderr) or anything else (fail).
set -eu
TESTS_DIR=$(cd "$(dirname "$0")/.." && pwd)
: "${BUILD:=build}"
: "${THAW:=$BUILD/thaw}"
: "${TOOLS:=$BUILD/tools}"
T=$(mktemp -d /tmp/thaw-test.XXXXXX)
_cleanups=""
at_exit() { _cleanups="$1; $_cleanups"; }
_run_cleanups() { rc=$?; set +e; eval "$_cleanups"; rm -rf "$T"; exit $rc; }
trap _run_cleanups EXIT INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*" >&2; exit 77; }
note() { echo "  $*" >&2; }

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_s3rver [bucket]: runs s3rver on 127.0.0.1 at a free port with its own
# data dir, creates the bucket, and exports the AWS settings that point thaw at
# it.  Stopped when the test exits.
start_s3rver() {
	bucket=${1:-thaw}
	S3_PORT=$(free_port)
	mkdir -p "$T/s3data"
	# s3rver makes continuation tokens with DES, which Node 20 has only in the legacy provider.
	NODE_OPTIONS=--openssl-legacy-provider "$TESTS_DIR/node_modules/.bin/s3rver" -d "$T/s3data" -a 127.0.0.1 -p "$S3_PORT" -s \
		--configure-bucket "$bucket" >"$T/s3rver.log" 2>&1 &
	S3_PID=$!
	at_exit "kill $S3_PID 2>/dev/null; wait $S3_PID 2>/dev/null"
	i=0
	until curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/$bucket?list-type=2"; do
		i=$((i + 1)); [ $i -lt 100 ] || fail "s3rver did not start: $(cat "$T/s3rver.log")"
		sleep 0.1
	done
	export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
	export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
	unset AWS_PROFILE AWS_SESSION_TOKEN
	export AWS_SHARED_CREDENTIALS_FILE="$T/no-such-credentials"
	S3_BUCKET=$bucket
}

# make_mixed FILE SIZE_BYTES: 1 MiB blocks cycling through random, zero,
# repeated and random-with-a-zero-run, so chunked images see every case.
make_mixed() {
	python3 - "$1" "$2" <<'PY'
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
M = 1 << 20
rep = os.urandom(M)
with open(path, "wb") as f:
    left, i = size, 0
    while left > 0:
        kind = i % 4
        if kind == 0: blk = os.urandom(M)
        elif kind == 1: blk = bytes(M)
        elif kind == 2: blk = rep
        else:
            blk = bytearray(os.urandom(M)); blk[100000:300000] = bytes(200000); blk = bytes(blk)
        n = min(left, M)
        f.write(blk[:n]); left -= n; i += 1
PY
}

# start_faultproxy: a fault-injecting proxy in front of s3rver (start_s3rver
# first); points AWS_ENDPOINT_URL at it.  fault RULE adds a rule, fault_clear
# removes them, fault_gets PATTERN counts GETs whose target contains PATTERN.
start_faultproxy() {
	"$TOOLS/faultproxy" --listen 127.0.0.1:0 --upstream "127.0.0.1:$S3_PORT" --port-file "$T/proxy.port" \
		--log "$T/proxy.log" --quiet 2>"$T/proxy.err" &
	PROXY_PID=$!
	at_exit "kill $PROXY_PID 2>/dev/null; wait $PROXY_PID 2>/dev/null"
	i=0
	until [ -s "$T/proxy.port" ]; do
		i=$((i + 1)); [ $i -lt 100 ] || fail "faultproxy did not start: $(cat "$T/proxy.err")"
		sleep 0.05
	done
	PROXY="http://127.0.0.1:$(cat "$T/proxy.port")"
	export AWS_ENDPOINT_URL="$PROXY"
}
fault() { curl -sf "$PROXY/__fault/set?rule=$1" >/dev/null || fail "bad fault rule $1"; }
fault_clear() { curl -sf "$PROXY/__fault/clear?stats=1" >/dev/null; : >"$T/proxy.log"; }
fault_gets() { grep -c "^GET [^ ]*$1" "$T/proxy.log" || true; }
fault_bytes() { grep "^GET [^ ]*$1" "$T/proxy.log" | sed -n 's/.* bytes=\([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }'; }
