#!/bin/bash
# Bad local input is refused where the operator sees it:
#  - a mountpoint that is a regular file (or missing): exit 2 and a
#    message, nothing mounted;
#  - an export of a 0-byte file (less than one block): exit 2 at start, an
#    error reply from `xdiskctl export add` (exit 1) at runtime;
#  - an export label with a component importers cannot use as a by-label
#    path (x/../../y, h//d): exit 2 at start, an error from export add;
#  - a missing keys directory: one warning at start, not one per link.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
fuse_test timeout truncate
need_xdiskctl

make_keys "$WORK_DIR/keys" 127.0.0.1
truncate -s 1M "$WORK_DIR/good.img"
: >"$WORK_DIR/zero.img"
truncate -s 511 "$WORK_DIR/tiny.img"

# start_refused NAME EXPECTED-MESSAGE ARGS...: xdisk-fuse ARGS exits 2 with
# EXPECTED-MESSAGE on stderr, and leaves no mount behind.
start_refused() {
  local name=$1 msg=$2 rc=0
  shift 2
  timeout -k 5 20 "$XDISK" --keys "$WORK_DIR/keys" --state-dir "$WORK_DIR/state" --control none \
    "$@" >"$WORK_DIR/$name.log" 2>&1 || rc=$?
  [ "$rc" = 2 ] || fail "$name: exit status $rc, not 2: $(cat "$WORK_DIR/$name.log")"
  grep -qF -- "$msg" "$WORK_DIR/$name.log" || fail "$name: no message '$msg': $(cat "$WORK_DIR/$name.log")"
  if grep -q "$WORK_DIR" /proc/mounts; then fail "$name: something is mounted"; fi
}

log "a mountpoint that is a regular file or missing: exit 2"
: >"$WORK_DIR/file-mnt"
cleanup_fn umount -l "$WORK_DIR/file-mnt"
start_refused file-mnt "mountpoint $WORK_DIR/file-mnt: not a directory" "$WORK_DIR/file-mnt"
start_refused no-mnt "mountpoint $WORK_DIR/no-such-dir" "$WORK_DIR/no-such-dir"

log "an export smaller than one block: exit 2"
P=$(free_port)
start_refused zero "zero.img: 0 bytes, less than one block of 512" \
  --listen "127.0.0.1:$P" --export "$WORK_DIR/zero.img"
start_refused tiny "tiny.img: 511 bytes, less than one block of 512" \
  --listen "127.0.0.1:$P" --export "$WORK_DIR/tiny.img"

log "a label importers cannot use: exit 2"
start_refused dotdot "not usable as a by-label path" \
  --listen "127.0.0.1:$P" --export "$WORK_DIR/good.img,label=x/../../y"
start_refused empty-comp "not usable as a by-label path" \
  --listen "127.0.0.1:$P" --export "$WORK_DIR/good.img,label=h//d"

log "the same at runtime: export add answers with an error"
ESOCK=$WORK_DIR/exp.sock
start_exporter EXP exporter "$P" "$WORK_DIR/keys" "$WORK_DIR/good.img,serno=good1" -- --control "$ESOCK"
wait_for "[ -S '$ESOCK' ]" 10 || fail "no control socket"
# ctl_refused RC MESSAGE ARG: export add ARG exits RC naming MESSAGE (1:
# the daemon's error reply; 2: xdiskctl checks the spec itself first).
ctl_refused() {
  local rc=0
  timeout 20 "$XDISKCTL" --control "$ESOCK" export add "$3" >"$WORK_DIR/out" 2>&1 || rc=$?
  [ "$rc" = "$1" ] || fail "export add $3: exit status $rc, not $1: $(cat "$WORK_DIR/out")"
  grep -qF -- "$2" "$WORK_DIR/out" || fail "export add $3: no message '$2': $(cat "$WORK_DIR/out")"
}
ctl_refused 1 "0 bytes, less than one block" "$WORK_DIR/zero.img,serno=zero1"
ctl_refused 2 "not usable as a by-label path" "$WORK_DIR/good.img,serno=lab1,label=x/../../y"
"$XDISKCTL" --control "$ESOCK" --json status >"$WORK_DIR/status.json"
python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["exports"]; assert [x["serial"] for x in e] == ["good1"], e' \
  "$WORK_DIR/status.json" || fail "the refused exports were added: $(cat "$WORK_DIR/status.json")"
stop_ok "$EXP" 15 "exporter"

log "a missing keys directory: one warning at start"
P2=$(free_port)
start_daemon NK nokeys "$XDISK" --keys "$WORK_DIR/no-keys" --state-dir "$WORK_DIR/state-nk" \
  --control none --listen "127.0.0.1:$P2" --connect "127.0.0.1:$P2"
wait_for "[ \$(grep -c 'refused' '$WORK_DIR/nokeys.log') -ge 2 ]" 10 || fail "no refused links"
stop_ok "$NK" 15 "nokeys"
[ "$(grep -c "warning: main: keys directory $WORK_DIR/no-keys/remote: No such file or directory" \
  "$WORK_DIR/nokeys.log")" = 1 ] || fail "no single warning about the keys directory: $(head "$WORK_DIR/nokeys.log")"

scan_logs "refused|keys directory"
log "PASS"
