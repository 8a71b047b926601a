#!/bin/sh
# run.sh - runs the unit tests and integration tests in each build dir given and
# ends with the line CI reads: "N passed, N failed".
# usage: tests/run.sh [--unit-only] BUILD_DIR...
unit_only=0
[ "${1:-}" = "--unit-only" ] && { unit_only=1; shift; }
[ $# -gt 0 ] || set -- build
top=$(cd "$(dirname "$0")/.." && pwd)
pass=0; failn=0; skipn=0; failed=""
log=$(mktemp -d /tmp/thaw-run.XXXXXX)
run_one() { # name, command...
	name=$1; shift
	start=$(date +%s.%N)
	if "$@" >"$log/out" 2>&1; then rc=0; else rc=$?; fi
	secs=$(echo "$(date +%s.%N) - $start" | bc)
	if [ $rc = 0 ]; then pass=$((pass + 1)); printf 'PASS  %-52s %6.1fs\n' "$name" "$secs"
	elif [ $rc = 77 ]; then skipn=$((skipn + 1)); printf 'SKIP  %-52s %s\n' "$name" "$(grep SKIP "$log/out" | head -1)"
	else failn=$((failn + 1)); failed="$failed $name"; printf 'FAIL  %-52s %6.1fs\n' "$name" "$secs"; sed 's/^/      | /' "$log/out" | tail -40
	fi
}
for b in "$@"; do
	tag=$(basename "$b")
	for t in "$top/$b"/tests/test_*; do
		[ -x "$t" ] || continue
		run_one "$tag/unit/$(basename "$t")" "$t"
	done
	[ $unit_only = 1 ] && continue
	for t in "$top"/tests/integration/test_*.sh; do
		[ -f "$t" ] || continue
		run_one "$tag/$(basename "$t" .sh)" env BUILD="$top/$b" THAW="$top/$b/thaw" TOOLS="$top/$b/tools" \
			ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
			sh "$t"
	done
done
rm -rf "$log"
[ -n "$failed" ] && echo "failed:$failed"
[ $skipn -gt 0 ] && echo "$skipn skipped"
echo "$pass passed, $failn failed"
[ $failn = 0 ]
