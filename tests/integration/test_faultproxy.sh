# test_faultproxy.sh - self-test of tests/tools/faultproxy: plain relaying
# (keep-alive, Expect: 100-continue, chunked responses, 16 at once), every
# fault kind as curl sees it, rule matching/counting, the request log, bad
# arguments and a clean SIGTERM.  curl against s3rver, which takes unsigned
# requests.
. "$(dirname "$0")/../lib.sh"

FP=$TOOLS/faultproxy
[ -x "$FP" ] || fail "$FP not built"
command -v curl >/dev/null || skip "curl not installed"

start_s3rver thaw

# start_proxy NAME UPSTREAM_PORT: sets PORT_<NAME>, PID_<NAME>.
start_proxy() {
	rm -f "$T/$1.port"
	"$FP" --listen 127.0.0.1:0 --upstream "127.0.0.1:$2" --port-file "$T/$1.port" \
		--log "$T/$1.log" --seed 7 2>"$T/$1.err" &
	eval "PID_$1=$!"
	at_exit "kill $! 2>/dev/null; wait $! 2>/dev/null"
	i=0
	until [ -s "$T/$1.port" ]; do
		i=$((i + 1)); [ $i -lt 100 ] || fail "faultproxy $1 did not start: $(cat "$T/$1.err")"
		sleep 0.05
	done
	eval "PORT_$1=$(cat "$T/$1.port")"
}

start_proxy p "$S3_PORT"
P=http://127.0.0.1:$PORT_p
B=$P/thaw

ctl() { curl -sS --fail-with-body "$P/__fault/$1"; }
setrule() { ctl "set?rule=$1" >/dev/null || fail "setting rule $1"; }
stat_field() { # python expression over the stats JSON as s
	curl -sS "$P/__fault/stats" | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"
}
# run CMD...: its exit status in $rc, without tripping set -e.
run() { rc=0; "$@" || rc=$?; }

# --- plain relaying -------------------------------------------------------
head -c 1000000 /dev/urandom >"$T/obj"
head -c 3000 /dev/urandom >"$T/small"
code=$(curl -sS -o /dev/null -w '%{http_code}' -T "$T/obj" "$B/obj")
[ "$code" = 200 ] || fail "PUT through proxy answered $code"
# Force Expect: 100-continue on a small body too (curl only adds it for big ones).
code=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Expect: 100-continue' -T "$T/small" "$B/small")
[ "$code" = 200 ] || fail "PUT with Expect answered $code"
curl -sS -o "$T/got" "$B/obj"; cmp -s "$T/obj" "$T/got" || fail "GET returned different bytes"
curl -sS -o "$T/got" "$B/small"; cmp -s "$T/small" "$T/got" || fail "small GET differs"
# Direct from s3rver too: the PUT really went upstream.
curl -sS -o "$T/got" "$AWS_ENDPOINT_URL/thaw/obj"; cmp -s "$T/obj" "$T/got" || fail "upstream copy differs"
curl -sS -r 1000-1999 -o "$T/got" "$B/obj"
dd if="$T/obj" bs=1000 skip=1 count=1 status=none | cmp -s - "$T/got" || fail "ranged GET differs"
curl -sS -I "$B/obj" | grep -qi '^content-length: 1000000' || fail "HEAD lost Content-Length"

# Keep-alive: three requests in one curl run reuse one client connection.
c0=$(stat_field 's["connections"]')
curl -sS -o /dev/null -o /dev/null -o /dev/null "$B/small" "$B/small" "$B/small"
c1=$(stat_field 's["connections"]')
[ $((c1 - c0)) -eq 2 ] || fail "keep-alive: $((c1 - c0)) connections for 3 requests (+1 for stats)"

# 16 ranged GETs at once.
seq 0 15 | xargs -P 16 -I{} sh -c \
	'curl -sS -r $(({} * 60000))-$(({} * 60000 + 59999)) -o "$1/part.{}" "$2/obj"' _ "$T" "$B"
for i in $(seq 0 15); do cat "$T/part.$i"; done >"$T/joined"
head -c 960000 "$T/obj" | cmp -s - "$T/joined" || fail "parallel ranged GETs differ"

# Chunked responses: a tiny upstream that always answers chunked, with trailers.
CH_PORT=$(free_port)
python3 - "$CH_PORT" >"$T/chunky.log" 2>&1 <<'PY' &
import sys, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("ETag", '"chunky"')
        self.end_headers()
        for i in range(5):
            data = bytes([65 + i]) * 10000
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
CH_PID=$!
at_exit "kill $CH_PID 2>/dev/null"
start_proxy c "$CH_PORT"
i=0
until curl -s -o /dev/null "http://127.0.0.1:$CH_PORT/"; do
	i=$((i + 1)); [ $i -lt 100 ] || fail "chunked upstream did not start"; sleep 0.05
done
python3 -c 'import sys; sys.stdout.buffer.write(b"".join(bytes([65+i])*10000 for i in range(5)))' >"$T/chunky"
# Twice on one connection: the chunked framing must leave it in step.
curl -sS -o "$T/got" -o "$T/got2" "http://127.0.0.1:$PORT_c/x" "http://127.0.0.1:$PORT_c/x"
cmp -s "$T/chunky" "$T/got" && cmp -s "$T/chunky" "$T/got2" || fail "chunked response not relayed intact"
curl -sS "http://127.0.0.1:$PORT_c/__fault/set?rule=corrupt" >/dev/null
curl -sS -o "$T/got" "http://127.0.0.1:$PORT_c/x"
n=$(cmp -l "$T/chunky" "$T/got" | wc -l)
[ "$n" = 13 ] || fail "corrupt on chunked body flipped $n bytes, want 13 (50000/4096 rounded up)"
curl -sS "http://127.0.0.1:$PORT_c/__fault/clear" >/dev/null
curl -sS "http://127.0.0.1:$PORT_c/__fault/set?rule=short_body" >/dev/null
run curl -sS -o "$T/got" "http://127.0.0.1:$PORT_c/x" 2>/dev/null
[ $rc -ne 0 ] || fail "short_body on a chunked response went unnoticed"
[ "$(wc -c <"$T/got")" = 5000 ] || fail "short chunked body: $(wc -c <"$T/got") bytes, want 5000"

# --- faults ---------------------------------------------------------------
# status: S3 XML error, no upstream contact, counted once.
setrule 'status=503,method=GET,path=/thaw/obj,count=1'
body=$(curl -sS -w ' %{http_code}' "$B/obj")
case $body in *'<Code>SlowDown</Code>'*' 503') ;; *) fail "status=503 gave: $body" ;; esac
curl -sS -o "$T/got" "$B/obj"; cmp -s "$T/obj" "$T/got" || fail "count=1 rule fired twice"
setrule 'status=404,method=HEAD,count=1'
code=$(curl -sS -o /dev/null -I -w '%{http_code}' "$B/obj")
[ "$code" = 404 ] || fail "HEAD status=404 gave $code"
setrule 'status=500,code=InternalError,method=PUT,count=1'
code=$(curl -sS -o "$T/err" -w '%{http_code}' -H 'Expect: 100-continue' -T "$T/small" "$B/small")
[ "$code" = 500 ] && grep -q InternalError "$T/err" || fail "PUT status=500 gave $code"
setrule 'status=412,method=PUT,count=1'
code=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Expect:' -T "$T/small" "$B/small")
[ "$code" = 412 ] || fail "PUT without Expect status=412 gave $code"
code=$(curl -sS -o /dev/null -w '%{http_code}' -T "$T/small" "$B/small")
[ "$code" = 200 ] || fail "PUT after one-shot rule gave $code"

# reset_mid_body: curl 56 (recv failure) after about half the body.
setrule 'reset_mid_body,path=/thaw/obj,count=1'
run curl -sS -o "$T/got" "$B/obj" 2>"$T/curl.err"
[ $rc = 56 ] || fail "reset_mid_body: curl exit $rc ($(cat "$T/curl.err")), want 56"
[ "$(wc -c <"$T/got")" = 500000 ] || note "reset delivered $(wc -c <"$T/got") bytes"

# short_body: curl 18 (partial file) with exactly half the body.
setrule 'short_body,count=1'
run curl -sS -o "$T/got" "$B/obj" 2>"$T/curl.err"
[ $rc = 18 ] || fail "short_body: curl exit $rc ($(cat "$T/curl.err")), want 18"
[ "$(wc -c <"$T/got")" = 500000 ] || fail "short_body delivered $(wc -c <"$T/got") bytes"
head -c 500000 "$T/obj" | cmp -s - "$T/got" || fail "short_body's half differs"

# stall: a patient client gets everything late; an impatient one times out.
setrule 'stall=800,range=1,count=2'
curl -sS -o /dev/null "$B/obj"	# no Range: rule must not match
t0=$(date +%s%N)
curl -sS -r 0-99999 -o "$T/got" "$B/obj"
ms=$((($(date +%s%N) - t0) / 1000000))
[ $ms -ge 750 ] || fail "stall=800 took only ${ms} ms"
head -c 100000 "$T/obj" | cmp -s - "$T/got" || fail "stalled response differs"
run curl -sS -m 0.4 -r 0-99999 -o /dev/null "$B/obj" 2>/dev/null
[ $rc = 28 ] || fail "stall vs -m 0.4: curl exit $rc, want 28"

# rate: the body comes whole, paced (80 KiB at 200 KiB/s: ~400 ms).
setrule 'rate=200,range=1,count=1'
t0=$(date +%s%N)
curl -sS -r 0-81919 -o "$T/got" "$B/obj"
ms=$((($(date +%s%N) - t0) / 1000000))
[ $ms -ge 350 ] || fail "rate=200 sent 80 KiB in only ${ms} ms"
head -c 81920 "$T/obj" | cmp -s - "$T/got" || fail "paced response differs"
code=$(curl -sS -o "$T/err" -w '%{http_code}' "$P/__fault/set?rule=rate=0")
[ "$code" = 400 ] && grep -q 'KiB per second' "$T/err" || fail "rate=0: $code $(cat "$T/err")"

# delay: the whole response is late.
setrule 'delay=600,method=GET,path=small,count=1'
t0=$(date +%s%N)
curl -sS -o "$T/got" "$B/small"
ms=$((($(date +%s%N) - t0) / 1000000))
[ $ms -ge 550 ] || fail "delay=600 took only ${ms} ms"
cmp -s "$T/small" "$T/got" || fail "delayed response differs"

# corrupt: same length, one flipped byte per 4096.
setrule 'corrupt,count=1'
curl -sS -o "$T/got" "$B/obj"
[ "$(wc -c <"$T/got")" = 1000000 ] || fail "corrupt changed the length"
n=$(cmp -l "$T/obj" "$T/got" | wc -l)
[ "$n" = 245 ] || fail "corrupt flipped $n bytes, want 245"

# etag: header rewritten (quotes added), body intact.
setrule 'etag=deadbeef,count=1'
curl -sS -D "$T/hdr" -o "$T/got" -r 0-9 "$B/obj"
grep -qi '^etag: "deadbeef"' "$T/hdr" || fail "etag not rewritten: $(grep -i etag "$T/hdr")"
curl -sS -D "$T/hdr" -o /dev/null -r 0-9 "$B/obj"
grep -qi '^etag: "deadbeef"' "$T/hdr" && fail "etag rule outlived count=1"

# drop: empty reply (curl 52).
setrule 'drop,count=1'
run curl -sS -o /dev/null "$B/small" 2>/dev/null
[ $rc = 52 ] || fail "drop: curl exit $rc, want 52"

# prob=0 matches but never fires; percent-encoded rule; one-fault-per-request order.
setrule 'status=500,prob=0'
setrule 'status%3D429%2Cpath%3D%2Fthaw%2Fsmall%2Ccount%3D2'
c1=$(curl -sS -o /dev/null -w '%{http_code}' "$B/small")
c2=$(curl -sS -o /dev/null -w '%{http_code}' "$B/small")
c3=$(curl -sS -o /dev/null -w '%{http_code}' "$B/small")
[ "$c1 $c2 $c3" = "429 429 200" ] || fail "count=2 429 rule gave $c1 $c2 $c3"
rules=$(stat_field '" ".join("%s:%d/%d/%d" % (r["kind"], r["matched"], r["fired"], r["remaining"]) for r in s["rules"][-2:])')
[ "$rules" = "status:3/0/-1 status:2/2/0" ] || fail "per-rule counters: $rules"

# Bad rules answer 400 with a reason; clear empties the list.
code=$(curl -sS -o "$T/err" -w '%{http_code}' "$P/__fault/set?rule=explode")
[ "$code" = 400 ] && grep -q 'unknown rule item' "$T/err" || fail "bad rule: $code $(cat "$T/err")"
code=$(curl -sS -o "$T/err" -w '%{http_code}' "$P/__fault/set?rule=status=503,drop")
[ "$code" = 400 ] || fail "two fault kinds accepted"
ctl clear >/dev/null
[ "$(stat_field 'len(s["rules"])')" = 0 ] || fail "clear left rules"

# --- counting --------------------------------------------------------------
faults=$(stat_field 's["faults"]')
[ "$faults" -ge 14 ] || fail "faults counter is $faults"
gets=$(stat_field 's["methods"]["GET"]')
logged=$(grep -c '^GET ' "$T/p.log")
[ "$gets" = "$logged" ] || fail "stats count $gets GETs, --log has $logged"
[ "$(grep -c '^GET /thaw/obj range=bytes=0-99999 ' "$T/p.log")" = 2 ] || fail "log lacks the ranged GETs"
grep -q '^PUT /thaw/small range=- status=412 fault=status ' "$T/p.log" || fail "log lacks the 412"
[ "$(curl -sS "$P/__fault/log" | grep -c '^GET ')" = "$logged" ] || fail "/__fault/log disagrees"
grep -q '__fault' "$T/p.log" && fail "control requests leaked into the log"
ctl 'clear?stats=1' >/dev/null
[ "$(stat_field 's["requests"] + s["log_total"]')" = 0 ] || fail "clear?stats=1 kept counters"

# --- arguments and shutdown --------------------------------------------------
run "$FP" --listen 127.0.0.1:0 2>"$T/err"
[ $rc = 2 ] && [ "$(wc -l <"$T/err")" = 1 ] && grep -q -- '--upstream' "$T/err" || fail "missing --upstream: rc $rc"
run "$FP" --listen nonsense --upstream 127.0.0.1:1 2>"$T/err"
[ $rc = 2 ] && [ "$(wc -l <"$T/err")" = 1 ] || fail "bad --listen: rc $rc"
run "$FP" --bogus 2>"$T/err"
[ $rc = 2 ] && [ "$(wc -l <"$T/err")" = 1 ] || fail "unknown option: rc $rc"
"$FP" --help | grep -q 'reset_mid_body' || fail "--help lacks the rule syntax"

# SIGTERM with an idle keep-alive client and a stalled response in flight.
setrule 'stall=20000'
python3 - "$PORT_p" <<'PY' &
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
time.sleep(5)
PY
IDLE=$!
at_exit "kill $IDLE 2>/dev/null"
curl -sS -o /dev/null "$B/obj" 2>/dev/null &
STALLED=$!
sleep 0.5
t0=$(date +%s%N)
kill -TERM "$PID_p"
run wait "$PID_p"
ms=$((($(date +%s%N) - t0) / 1000000))
[ $rc = 0 ] || fail "faultproxy exited $rc on SIGTERM: $(cat "$T/p.err")"
[ $ms -lt 2000 ] || fail "SIGTERM took ${ms} ms"
wait $STALLED 2>/dev/null || true
kill $IDLE 2>/dev/null || true
echo "faultproxy: ok"
