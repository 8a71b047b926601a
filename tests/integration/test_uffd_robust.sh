#!/bin/sh
# test_uffd_robust.sh - thaw uffd-serve keeps serving whatever its clients do:
# malformed handshakes (bad JSON, no descriptor, overlapping, unaligned or
# out-of-image regions, absurd numbers, not a userfaultfd) are refused with a
# log line and the connection closed; a client that connects and says nothing
# is dropped after --handshake-timeout; a client that dies mid-transfer is
# cleaned up; several VMs are served at once; SIGUSR1 writes the metrics and
# SIGTERM stops the server cleanly.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../uffd_lib.sh"

MEM=$T/mem.img
"$FCVM" --make-image "$MEM" --size 32M >/dev/null 2>&1 || fail "fcvm --make-image failed"
mkdir -p "$T/store"
"$THAW" push "$MEM" "file://$T/store/mem" >/dev/null 2>&1 || fail "thaw push failed"

uffd_start srv --mem "file://$T/store/mem" --handshake-timeout 500
[ "$(stat -c %a "$T/srv.sock")" = 600 ] || fail "socket mode is $(stat -c %a "$T/srv.sock"), not 600"

# Usage errors are one line and a non-zero status.
"$THAW" uffd-serve --socket "$T/x.sock" >/dev/null 2>"$T/err" && fail "uffd-serve without --mem succeeded"
[ "$(wc -l <"$T/err")" = 1 ] || fail "usage error is not one line: $(cat "$T/err")"
"$THAW" uffd-serve --socket "$T/srv.sock" --mem "file://$T/store/mem" 2>"$T/err" && fail "a second server on a live socket started"
grep -q "another server" "$T/err" || fail "no clear error for a socket in use: $(cat "$T/err")"
"$THAW" uffd-serve --socket "$T/y.sock" --mem "file://$T/store/nope" 2>"$T/err" && fail "a missing image was accepted"
grep -q "nope" "$T/err" || fail "the error does not name the missing image: $(cat "$T/err")"
"$THAW" uffd-serve --help | grep -q -- "--exit-when-done" || fail "--help does not list the options"

refused=1 # the second server's probe of the live socket above
bad() { # WHAT fcvm-args...: the server must refuse and close, with a log line naming WHAT
	_what=$1; shift
	"$FCVM" --socket "$T/srv.sock" --timeout 20 --expect-close "$@" >"$T/fcvm.out" 2>"$T/fcvm.err" ||
		fail "fcvm $*: the server did not close the connection ($?): $(tail -3 "$T/fcvm.err")"
	refused=$((refused + 1))
	i=0
	until [ "$(grep -c "handshake refused:" "$T/srv.log")" -ge $refused ]; do
		i=$((i + 1)); [ $i -lt 50 ] || fail "no 'handshake refused' log line for: $*"
		sleep 0.1
	done
	grep "handshake refused:" "$T/srv.log" | tail -1 | grep -q -- "$_what" ||
		fail "refusal of '$*' does not mention '$_what': $(grep "handshake refused:" "$T/srv.log" | tail -1)"
	kill -0 $SRV_PID || fail "server died after: $*"
}
bad "JSON array" --raw-json 'this is not json'
bad "no complete handshake" --raw-json '[{"base_host_virt_addr":4096,'
bad "no regions" --raw-json '[]'
bad "missing field 'size'" --raw-json '[{"base_host_virt_addr":4096,"offset":0}]'
bad "overlap" --raw-json '[{"base_host_virt_addr":4096,"size":8192,"offset":0},{"base_host_virt_addr":8192,"size":4096,"offset":8192}]'
bad "not aligned" --raw-json '[{"base_host_virt_addr":4097,"size":4096,"offset":0}]'
bad "beyond" --raw-json '[{"base_host_virt_addr":4096,"size":4096,"offset":1073741824}]'
bad "64 bits" --raw-json '[{"base_host_virt_addr":99999999999999999999999,"size":4096,"offset":0}]'
bad "neither 4096 nor 2097152" --raw-json '[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":65536}]'
bad "without a userfaultfd" --no-fd

# A descriptor that is not a userfaultfd, and a client that says nothing.
python3 - "$T/srv.sock" <<'PY' || fail "could not send a pipe as the descriptor"
import array, os, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
r, w = os.pipe()
s.sendmsg([b'[{"base_host_virt_addr":4096,"size":4096,"offset":0}]'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
s.settimeout(10)
assert s.recv(1) == b""
PY
refused=$((refused + 1))
python3 - "$T/srv.sock" <<'PY' || fail "a silent client was not dropped"
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(10)
t = time.time(); assert s.recv(1) == b""; assert time.time() - t < 5, "dropped too late"
PY
refused=$((refused + 1))
sleep 0.3
grep -q "not a userfaultfd" "$T/srv.log" || fail "no log line for a descriptor that is not a userfaultfd"
grep -q "no complete handshake within 500 ms" "$T/srv.log" || fail "no log line for the silent client"

# A client that dies mid-transfer, then a good one.
"$FCVM" --socket "$T/srv.sock" --timeout 30 --mem-size 32M --touch seq --disconnect-after 300 >"$T/fcvm.out" 2>"$T/fcvm.err" || true
i=0
until grep -q "closed (transfer incomplete)" "$T/srv.log"; do
	i=$((i + 1)); [ $i -lt 100 ] || fail "the server did not notice the client that left: $(tail -3 "$T/srv.log")"
	sleep 0.1
done
kill -0 $SRV_PID || fail "server died with the client"
fcvm_ok srv --touch random --threads 2 --check "$MEM"

# Several VMs at once, different layouts and field sets.
pids=""
for spec in "--regions 2 --touch seq --fc-version 1.6" "--touch random --threads 3 --fc-version 1.10" \
	"--regions 3 --offset-gap 64K --mem-size 30M --touch random" "--kvm"; do
	case "$spec" in *--kvm*) [ -w /dev/kvm ] || continue ;; esac
	n=$(echo "$pids" | wc -w)
	# shellcheck disable=SC2086
	"$FCVM" --socket "$T/srv.sock" --timeout 60 $spec --check "$MEM" >"$T/c$n.out" 2>"$T/c$n.err" &
	pids="$pids $!"
done
n=0
for p in $pids; do
	wait "$p" || fail "concurrent client $n failed: $(tail -3 "$T/c$n.err")"
	n=$((n + 1))
done
note "$n concurrent clients: ok"

# SIGUSR1: metrics now; SIGTERM: clean stop with the final metrics.
rm -f "$T/srv.json"
kill -USR1 $SRV_PID
i=0
until [ -s "$T/srv.json" ]; do
	i=$((i + 1)); [ $i -lt 50 ] || fail "SIGUSR1 wrote no metrics"
	sleep 0.1
done
check_metric "$T/srv.json" "m['connections_refused'] == $refused" "refused connections not counted ($refused expected)"
uffd_stop srv
[ ! -e "$T/srv.sock" ] || fail "the socket file is left behind after SIGTERM"
check_metric "$T/srv.json" "m['connections_total'] == $refused + $n + 2 and m['totals']['faults']['total'] > 0" \
	"final metrics do not account for every connection"
check_metric "$T/srv.json" "sum(1 for x in m['connections'] if x['state'] == 'complete') == $n + 1" \
	"not every good client's transfer completed"
grep -q "shutting down" "$T/srv.log" || fail "no shutdown line in the log"
