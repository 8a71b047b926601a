#!/bin/sh
# test_uffd_poison.sh - a chunk that cannot be fetched (its object deleted
# from the store) is answered with UFFDIO_POISON: the client gets SIGBUS on
# those pages instead of hanging, every other page is still exact, the server
# says so in its log and metrics and keeps serving.
. "$(dirname "$0")/../lib.sh"
# --- uffd test helpers (each uffd test carries its own copy; lib.sh is shared) ---
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
# --- end of helpers ---

MEM=$T/mem.img
"$FCVM" --make-image "$MEM" --size 32M >/dev/null 2>&1 || fail "fcvm --make-image failed"
mkdir -p "$T/store"
"$THAW" push "$MEM" "file://$T/store/mem" >/dev/null 2>&1 || fail "thaw push failed"
victim=$(find "$T/store/.thaw/chunks" -type f | sort | head -1)
[ -n "$victim" ] || fail "no chunk objects under $T/store/.thaw/chunks"
rm "$victim"

# On demand (no pusher): the fault on the missing chunk is poisoned.
uffd_start demand --no-push --mem "file://$T/store/mem"
fcvm_ok demand --touch seq --expect-sigbus --check "$MEM"
grep -q "SIGBUS on" "$T/fcvm.err" || fail "fcvm saw no SIGBUS: $(tail -3 "$T/fcvm.err")"
grep -q "answered the fault at .* with UFFDIO_POISON" "$T/demand.log" || fail "no poison log line: $(tail -5 "$T/demand.log")"
# The server survives, and the next client is told the same thing at once.
fcvm_ok demand --touch random --threads 2 --expect-sigbus --check "$MEM"
kill -0 $SRV_PID || fail "server died"
uffd_stop demand
check_metric "$T/demand.json" 'm["totals"]["faults"]["poisoned"] >= 2 and m["totals"]["installed"]["poisoned_bytes"] > 0' \
	"poisoned faults not counted"
note "poison on demand: ok"

# In the background: the pusher meets the chunk first and poisons it, and the
# transfer still completes (everything else installed) and lets go.
uffd_start push --exit-when-done --mem "file://$T/store/mem"
fcvm_ok push --touch seq --stride 8M --hold 1 --expect-sigbus --check "$MEM"
uffd_wait $SRV_PID 30 || fail "push: server exit status $?"
check_metric "$T/push.json" 'c["state"] == "complete" and c["installed"]["poisoned_bytes"] > 0' \
	"pusher did not poison the missing chunk and complete"
# (the pusher usually gets there first; fcvm's check may beat it to the chunk)
grep -q "poisoned .* bytes of the client's memory\|with UFFDIO_POISON" "$T/push.log" || fail "no poison log line"
note "poison from the pusher: ok"
