#!/bin/bash
# IPv6 literals work for --listen and --connect, and the peer policy looks
# up IPv6 peers by their numeric address (KEYS/remote/::1.none).
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
require_root
requires python3 -c 'import socket; s=socket.socket(socket.AF_INET6); s.bind(("::1", 0))'

KEYS=$WORK_DIR/keys
make_keys "$KEYS" ::1
PORT=$(free_port)
IMG=$WORK_DIR/disk.img
truncate -s 16M "$IMG"
start_daemon SRV server "$XDISK" --listen "[::1]:$PORT" --keys "$KEYS" \
  --state-dir "$WORK_DIR/state-s" --export "$IMG,serno=v6disk"
wait_for "ss -Hltn 'sport = :$PORT' | grep -q ." 10 || fail "not listening on [::1]:$PORT"
python3 "$PEER" client ::1 "$PORT" ping --count 3 >"$WORK_DIR/ping.json" || fail "ping over IPv6 failed"
python3 "$PEER" client ::1 "$PORT" verify --bytes 1MiB --qd 4 >"$WORK_DIR/verify.json" ||
  fail "verify over IPv6 failed: $(cat "$WORK_DIR/verify.json")"

MNT=$WORK_DIR/mnt
start_importer IMP importer "$MNT" "$KEYS" "[::1]:$PORT"
wait_disk "$MNT" v6disk
grep -q "link \[::1\]:$PORT: up" "$WORK_DIR/importer.log" || fail "importer log lacks the IPv6 link"
stop_ok "$IMP" 10 "importer"
stop_ok "$SRV" 10 "server"
scan_logs 'peer closed|peer reset'
log "ok"
