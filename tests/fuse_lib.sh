# fuse_lib.sh - what the FUSE integration tests share (source after lib.sh):
# the skips, a store S, mountpoint M and cache C under $T with the control
# socket and the daemon's log in $T/run, an unmount at exit, and access to
# `thaw status --json`.
[ -e /dev/fuse ] || skip "no /dev/fuse"
command -v fusermount3 >/dev/null || skip "fusermount3 not installed"

S=$T/store; M=$T/mnt; C=$T/cache
export XDG_RUNTIME_DIR=$T/run
mkdir -p "$S" "$M" "$C" "$T/src"
mkdir -m 700 "$XDG_RUNTIME_DIR"
at_exit "fusermount3 -u -z '$M' 2>/dev/null"

# py EXPR: EXPR over the mount's status JSON as s (no jq here).
py() { "$THAW" status "$M" --json | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"; }
file_field() { py "[f for f in s['files'] if f['path']=='$1'][0]['$2']"; }
LOG() { cat "$XDG_RUNTIME_DIR"/thaw/*.log; }
# Unmount and wait (5 s at most) for the daemon to remove its control socket.
unmount() { fusermount3 -u "$M" || fail "unmount"; i=0; while [ -n "$(ls "$XDG_RUNTIME_DIR"/thaw/*.sock 2>/dev/null)" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done; }
