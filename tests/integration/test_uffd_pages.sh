#!/bin/sh
# test_uffd_pages.sh - thaw uffd-serve against the test VMM (tests/tools/fcvm):
# every page of guest memory must equal the image, for 4 KiB and 2 MiB pages,
# one and several regions, sequential/random/multi-threaded touches and a KVM
# guest, for each handshake field set Firecracker has sent, over a thaw image
# (several chunk sizes) and a plain object; the pusher must complete and the
# userfaultfd be released; a recorded working set must be prefetched.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../uffd_lib.sh"

MEM=$T/mem.img
"$FCVM" --make-image "$MEM" --size 48M >/dev/null 2>&1 || fail "fcvm --make-image failed"
mkdir -p "$T/store"
"$THAW" push "$MEM" "file://$T/store/mem" >/dev/null 2>&1 || fail "thaw push failed"
"$THAW" push "$MEM" "file://$T/store/mem64k" --chunk-size 64K >/dev/null 2>&1 || fail "thaw push --chunk-size 64K failed"
cp "$MEM" "$T/store/plain.img"

# one CASE SERVER-ARGS -- FCVM-ARGS: a fresh server, one client, every byte checked.
one() {
	_c=$1; shift
	_s=""
	while [ "$1" != "--" ]; do _s="$_s $1"; shift; done
	shift
	# shellcheck disable=SC2086
	uffd_start "$_c" --exit-when-done $_s
	fcvm_ok "$_c" --check "$MEM" "$@"
	uffd_wait $SRV_PID 30 || fail "$_c: uffd-serve exited $? after the client left: $(tail -3 "$T/$_c.log")"
	check_metric "$T/$_c.json" 'c["state"] == "complete" and c["installed"]["done_fraction"] == 1.0' \
		"$_c: transfer not complete"
	check_metric "$T/$_c.json" 'c["faults"]["poisoned"] == 0 and m["image"]["fetch_failures"] == 0' \
		"$_c: unexpected failures"
	note "$_c: ok ($(metric "$T/$_c.json" '"%d faults, p50 %.0f us, complete in %.0f ms" % (c["faults"]["total"], c["latency"]["p50_us"], c["complete_ms"])'))"
}

one plain-4k-seq --mem "file://$T/store/plain.img" -- --touch seq
one image-3reg-rand-fc1.6 --mem "file://$T/store/mem" -- --regions 3 --offset-gap 1M --mem-size 45M \
	--touch random --threads 4 --fc-version 1.6
one image64k-nopush-fc1.10 --mem "file://$T/store/mem64k" --no-push -- --touch random --threads 2 --fc-version 1.10
one image-stride --mem "file://$T/store/mem" --wait block -- --touch seq --stride 3M --fc-version 1.12
one image-spin --mem "file://$T/store/mem" --wait spin -- --touch random --fc-version 1.12

# 2 MiB pages: a page spans several 1 MiB / 64 KiB chunks.
if [ "$(id -u)" = 0 ] && echo 128 >/proc/sys/vm/nr_hugepages 2>/dev/null &&
	[ "$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)" -ge 48 ]; then
	one huge-image-2reg --mem "file://$T/store/mem" -- --hugepages --regions 2 --touch seq --fc-version 1.10
	one huge-image64k-rand --mem "file://$T/store/mem64k" -- --hugepages --touch random --threads 2
	one huge-plain-nopush --mem "file://$T/store/plain.img" --no-push -- --hugepages --touch random
else
	note "2 MiB pages: not enough hugetlbfs pages here; skipped that part"
fi

# A KVM guest: faults come from the kernel (KVM's GUP), not from user space.
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
	one kvm --mem "file://$T/store/mem" -- --kvm
	one kvm-nopush --mem "file://$T/store/mem64k" --no-push -- --kvm
else
	note "no usable /dev/kvm; skipped the KVM guest"
fi

# The pusher completes on its own and the server lets go of the userfaultfd
# while the client still runs.
uffd_start released --exit-when-done --mem "file://$T/store/mem"
"$FCVM" --socket "$T/released.sock" --timeout 60 --touch seq --stride 8M --hold 3 --check "$MEM" \
	>"$T/fcvm.out" 2>"$T/fcvm.err" &
FC=$!
i=0
until grep -q "userfaultfd released" "$T/released.log"; do
	i=$((i + 1)); [ $i -lt 200 ] || fail "no 'userfaultfd released' within 20 s: $(tail -3 "$T/released.log")"
	sleep 0.1
done
kill -0 $FC 2>/dev/null || fail "fcvm ended before we could look at the server's descriptors"
n=$(ls -l /proc/$SRV_PID/fd 2>/dev/null | grep -c userfaultfd || true)
[ "$n" = 0 ] || fail "server still holds $n userfaultfd descriptors after the transfer completed"
# The image's memory is advised for huge pages (filling fresh memory 4 KiB at a
# time cost a host fault per page on this VM): a mapping the image's size is
# THP-eligible.  With THP set to "always" every mapping is; with "never", none.
case $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null) in
*"[madvise]"*)
	python3 - "/proc/$SRV_PID/smaps" $((48 << 20)) <<'PY' || fail "the server's image memory is not advised for huge pages"
import sys
want, size, ok = int(sys.argv[2]), 0, False
for line in open(sys.argv[1]):
    f = line.split()
    if f and "-" in f[0] and not f[0].endswith(":"):
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        size = hi - lo
    elif f[:2] == ["THPeligible:", "1"] and size >= want:
        ok = True
sys.exit(0 if ok else 1)
PY
	;;
*) note "transparent huge pages not in madvise mode here; skipped the huge-page check" ;;
esac
wait $FC || fail "fcvm --hold failed: $(tail -3 "$T/fcvm.err")"
uffd_wait $SRV_PID 30 || fail "released: server exit status $?"
grep -q "transfer complete .* MiB in place (.* MiB/s" "$T/released.log" || fail "no transfer report in the log"
note "released: ok"

# Working set: record the chunks one resume touches, prefetch them on the next.
uffd_start record --exit-when-done --no-push --mem "file://$T/store/mem" --record "file://$T/ws/mem.ws"
fcvm_ok record --touch random --stride 4M --check "$MEM"
uffd_wait $SRV_PID 30 || fail "record: server exit status $?"
[ -s "$T/ws/mem.ws" ] || fail "no working set stored at $T/ws/mem.ws: $(tail -3 "$T/record.log")"
recorded=$(metric "$T/record.json" 'c["working_set"]["recorded_chunks"]')
[ "$recorded" -gt 0 ] || fail "record: no chunks recorded"
uffd_start prefetch --exit-when-done --mem "file://$T/store/mem" --prefetch-from "file://$T/ws/mem.ws"
fcvm_ok prefetch --touch random --stride 4M --check "$MEM"
uffd_wait $SRV_PID 30 || fail "prefetch: server exit status $?"
check_metric "$T/prefetch.json" "m['prefetch']['chunks'] == $recorded and c['working_set']['prefetch_chunks'] == $recorded" \
	"prefetch did not load the $recorded recorded chunks"
# REAP-style: the set is loaded before the first fault is served, so the same
# workload (same seed) never waits for the store.
uffd_start prefetch-wait --exit-when-done --no-push --mem "file://$T/store/mem" --prefetch-wait \
	--prefetch-from "file://$T/ws/mem.ws"
fcvm_ok prefetch-wait --touch random --stride 4M --check "$MEM"
uffd_wait $SRV_PID 30 || fail "prefetch-wait: server exit status $?"
grep -q "working-set chunks loaded" "$T/prefetch-wait.log" || fail "--prefetch-wait did not wait for the set"
check_metric "$T/prefetch-wait.json" 'c["faults"]["store"] == 0' "--prefetch-wait: faults still waited for the store"
# A set recorded against another image is refused, and the server still serves.
uffd_start prefetch-wrong --exit-when-done --mem "file://$T/store/mem64k" --prefetch-from "file://$T/ws/mem.ws"
grep -q "no usable working set" "$T/prefetch-wrong.log" || fail "a working set of another image was not refused"
fcvm_ok prefetch-wrong --touch seq --stride 8M --check "$MEM"
uffd_wait $SRV_PID 30 || fail "prefetch-wrong: server exit status $?"
note "record/prefetch: ok ($recorded chunks)"

# The same over s3:// (s3rver), with the working set recorded to and
# prefetched from the bucket.
if [ -x "$TESTS_DIR/node_modules/.bin/s3rver" ]; then
	start_s3rver thaw
	"$THAW" push "$MEM" s3://thaw/vm/mem >/dev/null 2>&1 || fail "thaw push to s3 failed"
	one s3 --mem s3://thaw/vm/mem --record s3://thaw/vm/mem.ws -- --touch random --threads 2 --stride 1M
	one s3-prefetch --mem s3://thaw/vm/mem --prefetch --prefetch-from s3://thaw/vm/mem.ws -- --touch seq --stride 2M
	check_metric "$T/s3-prefetch.json" 'm["prefetch"]["chunks"] > 0' "nothing prefetched from s3://thaw/vm/mem.ws"
else
	note "no s3rver (run make deps); skipped the s3:// part"
fi
