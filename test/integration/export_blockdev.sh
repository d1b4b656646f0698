#!/bin/bash
# Exporting a block device: a 64 MiB image attached to a loop device is
# exported as /dev/loopN; the advertised span carries the device's size
# (BLKGETSIZE64) and logical sector size (BLKSSZGET) and the label
# <hostname>/loopN; the peer's 16 MiB random write/read-back verify
# (flush, trim, read past the end included) passes; what the peer wrote
# reached the device (the backing file differs from its initial zeros); a
# second loop device with 4096-byte sectors is advertised with blksize 4096
# and verifies too; and the daemon exits 0 on SIGTERM. The loop devices are
# detached at exit.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
peer_test python3 timeout losetup blockdev

MIB=1048576

make_keys "$WORK_DIR/keys" 127.0.0.1
IMG=$WORK_DIR/backing.img
truncate -s $((64 * MIB)) "$IMG"
attach_loop LOOP "$IMG"
[ -b "$LOOP" ] || fail "$LOOP is not a block device"
DEV_BYTES=$(blockdev --getsize64 "$LOOP")
DEV_SSZ=$(blockdev --getss "$LOOP")
[ "$DEV_BYTES" = $((64 * MIB)) ] || fail "loop device size $DEV_BYTES"
IMG4K=$WORK_DIR/backing4k.img
truncate -s $((8 * MIB)) "$IMG4K"
attach_loop LOOP4K "$IMG4K" --sector-size 4096
[ "$(blockdev --getss "$LOOP4K")" = 4096 ] || skip "loop devices with 4096-byte sectors unsupported"

PORT=$(free_port)
start_exporter PID blk "$PORT" "$WORK_DIR/keys" "$LOOP,serno=blk1" "$LOOP4K,serno=blk4k"

log "the span advertises the device"
peer client 127.0.0.1 "$PORT" spans --wait 1 >"$WORK_DIR/spans.json" || fail "spans failed"
[ "$(wc -l <"$WORK_DIR/spans.json")" = 2 ] || fail "want two spans: $(cat "$WORK_DIR/spans.json")"
grep '"pfs_label": "blk4k"' "$WORK_DIR/spans.json" >"$WORK_DIR/span4k.json" || fail "blk4k not advertised"
grep '"pfs_label": "blk1"' "$WORK_DIR/spans.json" >"$WORK_DIR/span.json" || fail "blk1 not advertised"
mv "$WORK_DIR/span.json" "$WORK_DIR/spans.json"
[ "$(json "$WORK_DIR/span4k.json" blksize)" = 4096 ] || fail "blk4k blksize: $(cat "$WORK_DIR/span4k.json")"
[ "$(json "$WORK_DIR/span4k.json" bytes)" = $((8 * MIB)) ] || fail "blk4k size: $(cat "$WORK_DIR/span4k.json")"
[ "$(json "$WORK_DIR/spans.json" bytes)" = "$DEV_BYTES" ] ||
  fail "size: want $DEV_BYTES: $(cat "$WORK_DIR/spans.json")"
[ "$(json "$WORK_DIR/spans.json" blksize)" = "$DEV_SSZ" ] ||
  fail "blksize: want $DEV_SSZ: $(cat "$WORK_DIR/spans.json")"
[ "$(json "$WORK_DIR/spans.json" peer_label)" = "$(uname -n)/$(basename "$LOOP")" ] ||
  fail "peer_label: $(cat "$WORK_DIR/spans.json")"

log "client verify --bytes 16MiB"
t0=$SECONDS
peer client 127.0.0.1 "$PORT" --serial blk1 verify --bytes 16MiB --qd 16 >"$WORK_DIR/verify.json" ||
  fail "verify: $(cat "$WORK_DIR/verify.json")"
grep -q '"ok": true' "$WORK_DIR/verify.json" || fail "verify: $(cat "$WORK_DIR/verify.json")"
log "verify passed in $((SECONDS - t0)) s"
require_alive "$PID" "after the verify"
peer client 127.0.0.1 "$PORT" --serial blk4k verify --bytes 4MiB --qd 16 >"$WORK_DIR/verify4k.json" ||
  fail "verify on 4096-byte sectors: $(cat "$WORK_DIR/verify4k.json")"

log "the writes reached the device"
# The daemon must have flushed (the verify ends with a FLUSH); drop the loop
# device's page cache and look at the backing file.
blockdev --flushbufs "$LOOP"
if cmp -s "$IMG" <(head -c $((64 * MIB)) /dev/zero); then
  fail "the backing file is still all zeros"
fi

log "SIGTERM: exit 0"
stop_ok "$PID" 10

scan_logs "dropping link: read error: connection reset by peer"
log "PASS"
