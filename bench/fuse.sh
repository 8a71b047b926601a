#!/bin/sh
# fuse.sh - `make bench-fuse`: thaw mount against its peers on one object in
# s3rver, in one run: Debian's s3fs, rclone mount, and parallel ranged GETs
# with curl (the server's ceiling, no filesystem at all).
#
# For each: time to first byte after mounting (open to first byte inside one
# process, after a sync; the median of TTFB_RUNS fresh mounts), cold sequential
# throughput (fresh mount, empty caches, after sync and drop_caches), warm
# re-read (median of 3, after a sync: the kernel's page cache; the local
# file's own warm rate is taken right after each), and
# NRAND random 4 KiB reads on a fresh mount (total, p50/p99 latency, and the
# bytes the store sent, counted by tests/tools/faultproxy in front of s3rver,
# so every tool is measured the same way).  The cold reads run in ROUNDS
# rounds, every tool once per round, and the table shows their medians.
# Within a round thaw, curl and s3fs go first and one after another: the
# targets are their ratios, and this host's speed drifts over minutes.
# thaw is measured twice: on the plain object (what s3fs and rclone read)
# and on the same bytes pushed as a thaw image (1 MiB chunks, and again 4 MiB
# chunks, read in 64 KiB sub-blocks verified with XXH3 on arrival), and once
# more on the plain object with --direct-io (no FUSE page cache for files not
# wholly cached).
#
#   FUSE_BENCH_MB=1024        object size
#   FUSE_BENCH_RANDOM=200     random reads
#   FUSE_BENCH_TOOLS="thaw thaw-dio thaw-img thaw-img4 s3fs rclone curl"
#   FUSE_BENCH_TTFB_RUNS=5    fresh mounts timed for the first byte
#   FUSE_BENCH_ROUNDS=5       rounds of the cold sequential and random reads
#   FUSE_BENCH_SERVER_COLD=0  1: the server's files leave memory too, before each cold read
#   BUILD=build               where thaw and the tools are
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
THAW=$ROOT/$BUILD/thaw
FP=$ROOT/$BUILD/tools/faultproxy
MB=${FUSE_BENCH_MB:-1024}
NRAND=${FUSE_BENCH_RANDOM:-200}
WHO=${FUSE_BENCH_TOOLS:-"thaw thaw-dio thaw-img thaw-img4 s3fs rclone curl"}
TTFB_RUNS=${FUSE_BENCH_TTFB_RUNS:-5}
ROUNDS=${FUSE_BENCH_ROUNDS:-5}
SERVER_COLD=${FUSE_BENCH_SERVER_COLD:-0}
T=$(mktemp -d /tmp/thaw-bench-fuse.XXXXXX)
M=$T/mnt
export XDG_RUNTIME_DIR=$T/run
mkdir -p "$M" "$T/res"
mkdir -m 700 "$XDG_RUNTIME_DIR"

PIDS=""
cleanup() {
	set +e
	fusermount3 -u -z "$M" 2>/dev/null
	for p in $PIDS; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	rm -rf "$T"
}
trap cleanup EXIT INT TERM
die() { echo "bench-fuse: $*" >&2; exit 1; }
log() { echo "  $*" >&2; }

[ -x "$THAW" ] || die "$THAW not built (make)"
[ -x "$FP" ] || die "$FP not built (make)"
need=""
case " $WHO " in *" s3fs "*) command -v s3fs >/dev/null || need="$need s3fs" ;; esac
case " $WHO " in *" rclone "*) command -v rclone >/dev/null || need="$need rclone" ;; esac
if [ -n "$need" ]; then
	log "installing$need"
	SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
	$SUDO apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null ||
		die "cannot install$need"
fi

# --- s3rver, and faultproxy in front of it for counting bytes ---
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S3_PORT=$(port)
mkdir -p "$T/s3data"
NODE_OPTIONS=--openssl-legacy-provider "$ROOT/tests/node_modules/.bin/s3rver" -d "$T/s3data" -a 127.0.0.1 \
	-p "$S3_PORT" -s --configure-bucket bench >"$T/s3rver.log" 2>&1 &
PIDS="$PIDS $!"
i=0
until curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/bench?list-type=2"; do
	i=$((i + 1)); [ $i -lt 100 ] || die "s3rver did not start: $(cat "$T/s3rver.log")"
	sleep 0.1
done
"$FP" --listen 127.0.0.1:0 --upstream "127.0.0.1:$S3_PORT" --port-file "$T/proxy.port" --quiet 2>/dev/null &
PIDS="$PIDS $!"
i=0; until [ -s "$T/proxy.port" ]; do i=$((i + 1)); [ $i -lt 100 ] || die "faultproxy did not start"; sleep 0.05; done
DIRECT=http://127.0.0.1:$S3_PORT
PROXY=http://127.0.0.1:$(cat "$T/proxy.port")
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
export AWS_SHARED_CREDENTIALS_FILE=$T/none
unset AWS_PROFILE AWS_SESSION_TOKEN 2>/dev/null || true
proxy_bytes() { curl -s "$PROXY/__fault/stats?log=0" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_down"])'; }
proxy_clear() { curl -s "$PROXY/__fault/clear?stats=1" >/dev/null; }

log "making a $MB MiB object and uploading it (plain object and thaw image)"
head -c $((MB << 20)) /dev/urandom >"$T/big.bin"
curl -sf -T "$T/big.bin" "$DIRECT/bench/big.bin" >/dev/null || die "upload to s3rver failed"
AWS_ENDPOINT_URL=$DIRECT "$THAW" push "$T/big.bin" "s3://bench/img/big.bin" >/dev/null || die "thaw push failed"
case " $WHO " in *" thaw-img4 "*)
	AWS_ENDPOINT_URL=$DIRECT "$THAW" push --chunk-size 4M "$T/big.bin" "s3://bench/img4/big.bin" >/dev/null ||
		die "thaw push --chunk-size 4M failed" ;;
esac
python3 - "$T/big.bin" "$NRAND" >"$T/offsets" <<'PY'
import os, random, sys
size, n = os.path.getsize(sys.argv[1]), int(sys.argv[2])
r = random.Random(42)
print(" ".join(str(r.randrange(1, size // 4096) * 4096) for _ in range(n)))
PY

# s3rver is node: its GET path runs interpreted until the JIT has seen it, so
# whichever tool went first would pay for that.  Warm it up, untimed: the
# object read once in 16 parallel parts, then 50 small ranged GETs.
log "warming up s3rver's GET path"
part=$(( (MB << 20) / 16 ))
k=0; while [ $k -lt 16 ]; do echo "$((k * part))-$(( (k + 1) * part - 1))"; k=$((k + 1)); done |
	xargs -P 16 -I R curl -sf -o /dev/null -r R "$DIRECT/bench/big.bin" || die "warm-up GETs failed"
k=0; while [ $k -lt 50 ]; do echo "$((k * 4096))-$((k * 4096 + 4095))"; k=$((k + 1)); done |
	xargs -P 1 -I R curl -sf -o /dev/null -r R "$DIRECT/bench/big.bin" || die "warm-up GETs failed"

# --- mounting each tool at $M against endpoint $1 ---
wait_mounted() {
	i=0
	until mountpoint -q "$M"; do i=$((i + 1)); [ $i -lt 300 ] || die "$1 did not mount"; sleep 0.05; done
}
mount_tool() { # TOOL ENDPOINT
	case $1 in
	thaw | thaw-img | thaw-img4 | thaw-dio)
		rm -rf "$T/cache"
		AWS_ENDPOINT_URL=$2 "$THAW" mount "s3://bench/$(case $1 in thaw-img) echo img/ ;; thaw-img4) echo img4/ ;; esac)" \
			"$M" --cache "$T/cache" \
			$([ "$1" = thaw-dio ] && echo --direct-io) 2>/dev/null || die "thaw mount failed"
		;;
	s3fs)
		printf 'S3RVER:S3RVER\n' >"$T/s3fs.passwd"; chmod 600 "$T/s3fs.passwd"
		s3fs bench "$M" -o url="$2" -o use_path_request_style -o passwd_file="$T/s3fs.passwd" \
			-o endpoint=us-east-1 2>"$T/s3fs.err" || die "s3fs failed: $(cat "$T/s3fs.err")"
		wait_mounted s3fs
		;;
	rclone)
		env -u AWS_CA_BUNDLE RCLONE_S3_PROVIDER=Other RCLONE_S3_ENDPOINT="$2" RCLONE_S3_ACCESS_KEY_ID=S3RVER \
			RCLONE_S3_SECRET_ACCESS_KEY=S3RVER RCLONE_S3_REGION=us-east-1 \
			rclone mount :s3:bench "$M" --read-only >"$T/rclone.log" 2>&1 &
		RCLONE_PID=$!
		wait_mounted rclone
		;;
	esac
}
unmount_tool() {
	fusermount3 -u "$M" 2>/dev/null || fusermount3 -u -z "$M"
	if [ "$1" = rclone ]; then wait "$RCLONE_PID" 2>/dev/null || true; fi
	i=0; while mountpoint -q "$M" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	sleep 0.3
}
file_of() { echo "$M/big.bin"; } # thaw-img mounts s3://bench/img/ (img4/), where the image is big.bin

# Cold: dirty pages written back (the setup leaves gigabytes of them, which
# would otherwise be flushed during whichever tool runs first) and the page
# cache dropped.  Then the server's copy of what TOOL reads is read back into
# memory (unless FUSE_BENCH_SERVER_COLD=1): the store stands for S3, whose
# speed does not hang on a client having read the object lately, and here
# its disk is also the client's cache disk, so a server reading from it
# would contend with the client's cache writes as no remote store does.
# Cold means the client's side: its cache, and the kernel's page cache of
# the mount (a fresh mount has none).
cold() { # [settle | TOOL]
	sync
	[ "${1:-}" != settle ] || return 0
	if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi
	[ "$SERVER_COLD" = 1 ] && return 0
	case ${1:-} in
	thaw-img) find "$T/s3data/bench/img" -type f -exec cat {} + >/dev/null ;;
	thaw-img4) find "$T/s3data/bench/img4" -type f -exec cat {} + >/dev/null ;;
	*) cat "$T/s3data/bench/big.bin._S3rver_object" >/dev/null ;;
	esac
}
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# MB/s of reading FILE whole with 1 MiB blocks.
read_rate() {
	t0=$(now); dd if="$1" of=/dev/null bs=1M status=none; t1=$(now)
	echo "$MB / ($t1 - $t0)" | bc -l
}
# The median of 3 warm reads, each after a sync (so no writeback of the cache
# or of the source file runs during the timing).
warm_rate() { for k in 1 2 3; do sync; read_rate "$1"; done | median; }
# The local file's warm rate, taken beside each tool's (the host's speed
# drifts over minutes): read in from disk first, so its page cache is what
# a local file's normally is (large folios; a file just written is held in
# 4 KiB pages, which read at about half the speed here).
local_rate() {
	dd if="$T/big.bin" iflag=nocache count=0 status=none
	cat "$T/big.bin" >/dev/null
	warm_rate "$T/big.bin"
}

# One round for TOOL (ROUND 1 also times the first byte and the warm re-read):
# appends "seq_MBps rand_total_s p50_ms p99_ms rand_MB" to res/TOOL.rounds.
measure() { # TOOL ROUND
	tool=$1 round=$2
	if [ "$round" = 1 ]; then
		log "$tool: time to first byte (median of $TTFB_RUNS fresh mounts)"
		ttfbs=""
		k=0
		while [ $k -lt "$TTFB_RUNS" ]; do
			# Dirty pages flushed (before mounting, so the mount's own start-up
			# is not slowed) but the page cache kept: dropping it would time each
			# daemon reading its own code back from disk, which curl's timer does not.
			cold settle
			mount_tool "$tool" "$DIRECT"
			# Timed inside one process, from open to the first byte (as curl's
			# time_starttransfer is): a process start is no part of the filesystem.
			# Unbuffered: Python's buffered read(1) asks for st_blksize bytes,
			# which is 1 MiB on thaw and 4 KiB on s3fs.
			ttfbs="$ttfbs $(python3 -c 'import os, sys, time
t = time.perf_counter()
fd = os.open(sys.argv[1], os.O_RDONLY)
assert len(os.read(fd, 1)) == 1
print((time.perf_counter() - t) * 1000)' "$(file_of "$tool")")" || die "$tool: first byte"
			unmount_tool "$tool"
			k=$((k + 1))
		done
		echo "$ttfbs" | median >"$T/res/$tool.ttfb"
	fi

	log "$tool: cold sequential read of $MB MiB (round $round of $ROUNDS)"
	mount_tool "$tool" "$DIRECT"
	cold "$tool"
	seq=$(read_rate "$(file_of "$tool")")
	if [ "$round" = 1 ]; then
		log "$tool: warm re-read (median of 3)"
		warm_rate "$(file_of "$tool")" >"$T/res/$tool.warm"
		local_rate >>"$T/res/local.warm"
	fi
	unmount_tool "$tool"

	log "$tool: $NRAND random 4 KiB reads (round $round of $ROUNDS)"
	mount_tool "$tool" "$PROXY"
	stat "$(file_of "$tool")" >/dev/null
	cold "$tool"
	proxy_clear
	FUSE_LAT_FILE="$T/res/$tool.lat$round" \
		python3 "$ROOT/bench/fuse_random.py" "$(file_of "$tool")" "$T/big.bin" $(cat "$T/offsets") >"$T/rand.out" ||
		die "$tool: random reads failed: $(cat "$T/rand.out")"
	rmb=$(echo "$(proxy_bytes) / 1048576" | bc -l)
	unmount_tool "$tool"
	echo "$seq $(cat "$T/rand.out") $rmb" >>"$T/res/$tool.rounds"
}

measure_curl() { # ROUND
	round=$1
	if [ "$round" = 1 ]; then
		log "curl: time to first byte (1-byte ranged GET, new connection; median of $TTFB_RUNS)"
		ttfbs=""
		k=0
		while [ $k -lt "$TTFB_RUNS" ]; do
			cold settle
			ttfbs="$ttfbs $(curl -s -o /dev/null -r 0-0 -w '%{time_starttransfer}' "$DIRECT/bench/big.bin" |
				awk '{ print $1 * 1000 }')"
			k=$((k + 1))
		done
		echo "$ttfbs" | median >"$T/res/curl.ttfb"
		echo - >"$T/res/curl.warm"
	fi
	log "curl: 16 parallel ranged GETs of the whole object (round $round of $ROUNDS)"
	part=$(( (MB << 20) / 16 ))
	cold curl
	t0=$(now)
	k=0; while [ $k -lt 16 ]; do echo "$((k * part))-$(( (k + 1) * part - 1))"; k=$((k + 1)); done |
		xargs -P 16 -I R curl -sf -o /dev/null -r R "$DIRECT/bench/big.bin"
	t1=$(now)
	seq=$(echo "$MB / ($t1 - $t0)" | bc -l)
	log "curl: $NRAND ranged 4 KiB GETs on one connection (round $round of $ROUNDS)"
	cold curl
	proxy_clear
	FUSE_LAT_FILE="$T/res/curl.lat$round" \
		python3 "$ROOT/bench/fuse_random.py" --http "$PROXY/bench/big.bin" "$T/big.bin" $(cat "$T/offsets") >"$T/rand.out" ||
		die "curl: random GETs failed: $(cat "$T/rand.out")"
	rmb=$(echo "$(proxy_bytes) / 1048576" | bc -l)
	echo "$seq $(cat "$T/rand.out") $rmb" >>"$T/res/curl.rounds"
}

# Rounds, each tool once per round in turn: the host's speed drifts by tens of
# percent over minutes here, and interleaving gives every tool the same drift.
RUN_ORDER=""
for w in thaw curl s3fs; do case " $WHO " in *" $w "*) RUN_ORDER="$RUN_ORDER $w" ;; esac; done
for w in $WHO; do case " thaw curl s3fs " in *" $w "*) ;; *) RUN_ORDER="$RUN_ORDER $w" ;; esac; done
round=1
while [ $round -le "$ROUNDS" ]; do
	for w in $RUN_ORDER; do
		case $w in
		curl) measure_curl $round ;;
		thaw | thaw-img | thaw-img4 | thaw-dio | s3fs | rclone) measure "$w" $round ;;
		*) die "unknown tool $w" ;;
		esac
	done
	round=$((round + 1))
done

# Each tool's row: the first byte and warm re-read from round 1, every other
# column the median over the rounds (column by column).
col_median() { awk -v c="$2" '{ print $c }' "$1" | median; }
for w in $WHO; do
	r=$T/res/$w.rounds
	echo "$(cat "$T/res/$w.ttfb") $(col_median "$r" 1) $(cat "$T/res/$w.warm") $(col_median "$r" 2)" \
		"$(col_median "$r" 3) $(col_median "$r" 4) $(col_median "$r" 5)" >"$T/res/$w"
	cat "$T/res/$w".lat[0-9]* >"$T/res/$w.lat"
	log "$w, per round: cold MB/s $(awk '{ printf " %.0f", $1 }' "$r"); random total s $(awk '{ printf " %.3f", $2 }' "$r")"
done

# Local file baseline: the same bytes from the page cache, the median of
# the rates taken beside each tool's warm re-read.
local=$(median <"$T/res/local.warm")

python3 "$ROOT/bench/fuse_report.py" "$T/res" "$local" "$MB" "$NRAND" $WHO

# The per-read latency distributions of the cold random reads, as a CDF.
if command -v gnuplot >/dev/null; then
	plot=""
	for w in $WHO; do
		[ -s "$T/res/$w.lat" ] || continue
		sort -g "$T/res/$w.lat" | awk -v n="$(wc -l <"$T/res/$w.lat")" '{ print $1, NR / n }' >"$T/res/$w.cdf"
		plot="$plot${plot:+, }'$T/res/$w.cdf' using 1:2 with lines lw 2 title '$w'"
	done
	gnuplot -e "set terminal png size 900,500; set output '$ROOT/bench/fuse-latency.png';
		set logscale x; set xlabel 'latency of one cold 4 KiB read (ms)'; set ylabel 'fraction of reads';
		set title '$NRAND random 4 KiB reads of a $MB MiB object in s3rver'; set key bottom right; set grid;
		plot $plot" && echo "wrote bench/fuse-latency.png"
fi
