# test_demo.sh - `thaw demo` (the README's main job) runs end to end on a small
# image: all three resumes succeed with every byte checked, and the table says
# so with a number in every cell (a field the VMM's report lacks came out as
# "-nan").  With /dev/kvm the guest is a KVM vCPU; the user-space toucher
# (--no-kvm, and the fallback without /dev/kvm) is run too.
. "$(dirname "$0")/../lib.sh"
[ -e /dev/userfaultfd ] || skip "no /dev/userfaultfd"
check_demo() { # LABEL [demo options]
	label=$1; shift
	"$THAW" demo --size 48M "$@" >"$T/demo.out" 2>"$T/demo.err" || fail "thaw demo $label failed: $(tail -5 "$T/demo.err")"
	for row in "launch -> first" "launch -> workload done" "whole image local" "waited for the store" \
		"fault latency p99" "Tdown = Tmig = Vm/R" "working-set chunks prefetched"; do
		grep -q "$row" "$T/demo.out" || fail "demo $label output lacks '$row': $(cat "$T/demo.out")"
	done
	! grep -qiE '(^| )-?(nan|inf)( |$)' "$T/demo.out" || fail "demo $label printed a non-number: $(cat "$T/demo.out")"
	# The lazy start must beat stop-and-copy's (it skips the whole download);
	# every time in the table is a positive number.
	python3 - "$T/demo.out" <<'PY' || fail "demo $label: $(cat "$T/demo.out")"
import re, sys
rows = {l[:34].strip(): l[34:] for l in open(sys.argv[1]) if l.startswith("launch ") or l.startswith("whole ")}
first = [v for k, v in rows.items() if k.startswith("launch -> first")][0]
lazy, sc, pre = [float(x) for x in re.findall(r"([\d.]+) ms", first)]
assert lazy < sc and pre < sc, "lazy start not sooner than stop-and-copy"
for k in ("launch -> workload done", "whole image local"):
    v = [float(x) for x in re.findall(r"([\d.]+) s", rows[k])]
    assert len(v) == 3 and all(x > 0 for x in v), k
PY
}
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
	check_demo "(KVM guest)"
	grep -q "launch -> first guest instruction" "$T/demo.out" || fail "the KVM demo does not say first guest instruction"
else
	echo "  (no /dev/kvm here: the demo's KVM guest is not run, only its user-space toucher)"
fi
check_demo --no-kvm --no-kvm
grep -q "launch -> first page touched" "$T/demo.out" || fail "the --no-kvm demo does not say first page touched"
"$THAW" demo --help | grep -q "usage: thaw demo" || fail "demo --help"
exit 0
