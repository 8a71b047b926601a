# uffd_lib.sh - helpers the uffd integration tests share (source after lib.sh):
# start/stop thaw uffd-serve, run the test VMM, read the metrics JSON.
FCVM="$TOOLS/fcvm"
[ -x "$FCVM" ] || skip "no $FCVM (tests/tools/fcvm.c not built)"
[ -c /dev/userfaultfd ] || [ -r /proc/sys/vm/unprivileged_userfaultfd ] || skip "no userfaultfd on this machine"

# uffd_start NAME ARGS...: thaw uffd-serve on $T/NAME.sock; sets SRV_PID.
uffd_start() {
	_n=$1; shift
	rm -f "$T/$_n.ready"
	"$THAW" uffd-serve --socket "$T/$_n.sock" --ready-file "$T/$_n.ready" --metrics "$T/$_n.json" "$@" \
		2>"$T/$_n.log" &
	SRV_PID=$!
	at_exit "kill $SRV_PID 2>/dev/null; wait $SRV_PID 2>/dev/null"
	_i=0
	until [ -f "$T/$_n.ready" ]; do
		kill -0 $SRV_PID 2>/dev/null || fail "uffd-serve $_n exited at start: $(cat "$T/$_n.log")"
		_i=$((_i + 1)); [ $_i -lt 200 ] || fail "uffd-serve $_n not ready after 20 s"
		sleep 0.1
	done
}

# uffd_wait PID SECONDS: wait for a server to exit by itself; returns its status.
uffd_wait() {
	_i=0
	while kill -0 "$1" 2>/dev/null; do
		_i=$((_i + 1)); [ $_i -lt $(($2 * 10)) ] || { kill "$1"; fail "uffd-serve still running after $2 s"; }
		sleep 0.1
	done
	wait "$1"
}

# uffd_stop NAME: SIGTERM must stop the server cleanly (status 0).
uffd_stop() {
	kill -TERM $SRV_PID
	wait $SRV_PID && _rc=0 || _rc=$?
	[ $_rc = 0 ] || fail "uffd-serve $1 exited $_rc on SIGTERM: $(tail -5 "$T/$1.log")"
}

# fcvm_ok NAME ARGS...: run the test VMM against $T/NAME.sock; it must succeed.
fcvm_ok() {
	_n=$1; shift
	"$FCVM" --socket "$T/$_n.sock" --timeout 60 "$@" >"$T/fcvm.out" 2>"$T/fcvm.err" ||
		fail "fcvm $* failed ($?): $(tail -5 "$T/fcvm.err"); server: $(tail -5 "$T/$_n.log")"
}

# metric FILE PYTHON-EXPR: evaluate EXPR with m = the metrics JSON, c = its first connection.
metric() {
	python3 -c 'import json,sys
m=json.load(open(sys.argv[1])); c=m["connections"][0] if m["connections"] else None
print(eval(sys.argv[2]))' "$1" "$2"
}
# check_metric FILE EXPR WHAT: fail unless EXPR is true.
check_metric() {
	[ "$(metric "$1" "$2")" = True ] || fail "$3 (metrics: $2 is false; $(metric "$1" 'c and (c["state"], c["faults"], c["installed"])'))"
}
