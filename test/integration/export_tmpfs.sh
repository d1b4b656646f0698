#!/bin/bash
# An export on tmpfs is served on the loop thread when nothing else is in
# flight (QD1) and through the threadpool otherwise: both paths read, write,
# trim and flush correctly, verified by the independent peer.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
require_root
[ -d /dev/shm ] && [ "$(stat -f -c %T /dev/shm)" = tmpfs ] || skip "no tmpfs at /dev/shm"

KEYS=$WORK_DIR/keys
make_keys "$KEYS" 127.0.0.1
IMG=$(mktemp /dev/shm/xdisk-test.XXXXXX)
cleanup_fn rm -f "$IMG"
truncate -s 64M "$IMG"
PORT=$(free_port)
start_exporter EXP exporter "$PORT" "$KEYS" "$IMG,serno=shm1"
for qd in 1 16; do
  python3 "$PEER" client 127.0.0.1 "$PORT" verify --bytes 8MiB --qd "$qd" --seed "$qd" \
    >"$WORK_DIR/verify-$qd.json" || fail "verify at QD$qd failed: $(cat "$WORK_DIR/verify-$qd.json")"
done
stop_ok "$EXP" 10 "exporter"
scan_logs 'peer closed|peer reset'
log "ok"
