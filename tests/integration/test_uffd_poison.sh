#!/bin/sh
# test_uffd_poison.sh - a chunk that cannot be fetched (its object deleted
# from the store) is answered with UFFDIO_POISON: the client gets SIGBUS on
# those pages instead of hanging, every other page is still exact, the server
# says so in its log and metrics and keeps serving.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../uffd_lib.sh"

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
