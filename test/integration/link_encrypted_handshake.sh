#!/bin/bash
# The handshake of an encrypted link (docs/link-crypto.md) under a man in
# the middle that truncates it or stalls it: the first connection forwards
# only 200 bytes of the importer's handshake, then closes (the exporter
# refuses it as a short handshake); the second forwards nothing from the
# importer (the exporter gives up after --link-timeout: "handshake timed
# out"); the third is left alone, and the link comes up, the disk appears
# and a write reads back. Each refusal is logged once, both daemons exit 0
# on SIGTERM and the logs hold only what the test caused.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test hshake1 64 cmp dd python3 timeout

EK=$WORK_DIR/ekeys
IK=$WORK_DIR/ikeys
make_key_pairs "$EK" "$IK"

PORT=$(free_port)
# A short --link-timeout, which is also the handshake timeout; the
# importer's is longer, so that the exporter is the one to give up on the
# stalled connection.
start_exporter EXP exporter "$PORT" "$EK" "$IMG,serno=$SERIAL" -- --link-timeout 2000 --control none
touch "$WORK_DIR/truncate" "$WORK_DIR/stall"
start_mitm_proxy "$WORK_DIR/truncate" "$WORK_DIR/stall"
start_importer IMP importer "$MNT" "$IK" "127.0.0.1:$PX" -- --link-timeout 5000 --control none

log "connection 1: the importer's handshake is cut after 200 bytes"
wait_for "grep -q 'refused: short handshake (200 of 512 bytes): the peer closed the connection' \
  '$WORK_DIR/exporter.log'" 20 || fail "the exporter did not refuse the truncated handshake"
log "connection 2: the importer's bytes are held back"
wait_for "grep -q 'refused: short handshake: handshake timed out after 2000 ms (0 of 512 handshake bytes received)' \
  '$WORK_DIR/exporter.log'" 30 || fail "the exporter did not time the stalled handshake out"
log "connection 3: left alone, the link comes up"
wait_disk "$MNT" "$SERIAL" 30
grep -q "conn 1: truncate" "$WORK_DIR/proxy.log" || fail "the proxy did not truncate connection 1"
grep -q "conn 2: stall" "$WORK_DIR/proxy.log" || fail "the proxy did not stall connection 2"
head -c $((2 * MIB)) /dev/urandom >"$WORK_DIR/rand"
timeout -k 5 60 dd if="$WORK_DIR/rand" of="$MNT/xa0" bs=1M seek=3 oflag=direct conv=notrunc,fsync status=none ||
  fail "dd: exit status $?"
timeout -k 5 60 dd if="$MNT/xa0" bs=1M skip=3 count=2 iflag=direct status=none | cmp - "$WORK_DIR/rand" ||
  fail "read back differs"
cmp <(dd if="$IMG" bs=1M skip=3 count=2 status=none) "$WORK_DIR/rand" || fail "the image differs"
[ "$(grep -c 'refused: ' "$WORK_DIR/exporter.log")" = 2 ] ||
  fail "the exporter logged its refusals other than once each: $(grep 'refused' "$WORK_DIR/exporter.log")"

log "SIGTERM: both daemons exit 0"
stop_pair

# Expected: the exporter's two refusals; the importer losing connections 1
# and 2 (how depends on who notices first) and its disk's path meanwhile.
scan_logs "warning: link 127\.0\.0\.1:[0-9]+: (refused: short handshake.*|dropping link: (read error: connection reset by peer|write error: (broken pipe|connection reset by peer)))$|disk $SERIAL: no path left: I/O blocks"
log "PASS"
