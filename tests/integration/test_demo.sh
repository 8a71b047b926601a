# test_demo.sh - `thaw demo` (the README's main job) runs end to end on a small
# image: all three resumes succeed with every byte checked, and the table says so.
. "$(dirname "$0")/../lib.sh"
[ -e /dev/userfaultfd ] || skip "no /dev/userfaultfd"
"$THAW" demo --size 48M >"$T/demo.out" 2>"$T/demo.err" || fail "thaw demo failed: $(tail -5 "$T/demo.err")"
for row in "launch -> first guest instruction" "waited for the store" "fault latency p99" \
	"Tdown = Tmig = Vm/R" "working-set chunks prefetched"; do
	grep -q "$row" "$T/demo.out" || fail "demo output lacks '$row': $(cat "$T/demo.out")"
done
# The lazy start must beat stop-and-copy's (it skips the whole download).
python3 - "$T/demo.out" <<'PY' || fail "lazy start not sooner than stop-and-copy: $(cat "$T/demo.out")"
import re, sys
line = [l for l in open(sys.argv[1]) if l.startswith("launch -> first guest instruction")][0]
lazy, sc, pre = [float(x) for x in re.findall(r"([\d.]+) ms", line)]
assert lazy < sc and pre < sc, line
PY
"$THAW" demo --help | grep -q "usage: thaw demo" || fail "demo --help"
exit 0
