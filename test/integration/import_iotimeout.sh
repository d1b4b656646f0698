#!/bin/bash
# --io-timeout turns a blocked outage into EIO: with the exporter gone, a read
# of the still-listed disk fails after about the timeout instead of blocking
# forever; once the exporter returns, I/O works again. Also: an external
# `fusermount3 -u` stops the importing daemon cleanly (exit 0).
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
fuse_test fusermount3

KEYS=$WORK_DIR/keys
make_keys "$KEYS" 127.0.0.1
IMG=$WORK_DIR/disk.img
truncate -s 64M "$IMG"
PORT=$(free_port)

start_exporter EXP exporter "$PORT" "$KEYS" "$IMG,serno=tmo1"
start_importer IMP importer "$MNT" "$KEYS" "127.0.0.1:$PORT" -- --io-timeout 2
wait_disk "$MNT" tmo1
dd if="$MNT/serno/tmo1" of=/dev/null bs=64k count=4 iflag=direct status=none ||
  fail "read before the outage failed"

# Keep the file open so it stays in the tree while its disk is away.
exec 3<"$MNT/serno/tmo1"
kill -9 "$EXP"
wait "$EXP" 2>/dev/null || true
wait_for "grep -q 'no path left' '$WORK_DIR/importer.log'" 10 || fail "importer did not notice"
[ -e "$MNT/serno/tmo1" ] || fail "the open disk left the tree during the outage"

start=$SECONDS
if dd if="$MNT/serno/tmo1" of=/dev/null bs=64k count=1 skip=8 iflag=direct status=none 2>"$WORK_DIR/dd.err"; then
  fail "read during the outage succeeded"
fi
elapsed=$((SECONDS - start))
grep -qi 'input/output error' "$WORK_DIR/dd.err" || fail "expected EIO, got: $(cat "$WORK_DIR/dd.err")"
[ "$elapsed" -ge 1 ] && [ "$elapsed" -le 8 ] || fail "EIO after ${elapsed}s, expected about 2s"
log "blocked read failed with EIO after ${elapsed}s"
# Close it before starting anything that would inherit it (and hold the mount).
exec 3<&-

start_exporter EXP exporter2 "$PORT" "$KEYS" "$IMG,serno=tmo1"
wait_for "dd if='$MNT/serno/tmo1' of=/dev/null bs=64k count=1 iflag=direct status=none 2>/dev/null" 15 ||
  fail "I/O did not resume after the exporter returned"

fusermount3 -u "$MNT" || fail "fusermount3 -u failed"
rc=0
wait_exit "$IMP" 15 || rc=$?
[ "$rc" -eq 0 ] || fail "importer exited $rc after fusermount3 -u"
stop_ok "$EXP" 10 "exporter"
scan_logs 'no path left|failed: blocked for over|read at .* failed|dropping link|peer closed|cannot connect|connection refused|I/O at .* failed'
log "ok"
