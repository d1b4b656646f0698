#!/bin/bash
# TLS 1.3 links between two xdisk-fuse daemons (docs/link-crypto.md), chosen
# by KEYS/remote/ADDR.tls13 beside the .pub on both sides and pinned to the
# same key files: the link comes up as tls1.3 on both sides (log and
# `xdiskctl links`) through a relaying man in the middle, fio --verify runs
# through it and the relayed bytes never show the plaintext; the man in the
# middle flips one byte of a write: the exporter drops the link on the
# failed record, the importer reconnects and resends, and the image holds
# exactly what was written; a peer without the .tls13 file (DragonFly's
# scheme) is refused on both sides. Both daemons exit 0 on SIGTERM and the
# logs hold only what the test caused.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test tls1 256 fio cmp dd python3 timeout
need_xdiskctl

EK=$WORK_DIR/ekeys
IK=$WORK_DIR/ikeys
make_key_pairs "$EK" "$IK"
: >"$EK/remote/127.0.0.1.tls13"
: >"$IK/remote/127.0.0.1.tls13"

log "a TLS 1.3 link through a man in the middle"
start_proxied_pair
for n in exporter importer; do
  grep -q "TLS 1.3 handshake verified with .*/remote/127.0.0.1.pub" "$WORK_DIR/$n.log" ||
    fail "$n did not log a verified TLS handshake"
done
for sock in exp imp; do expect_link "$WORK_DIR/$sock.sock" 'tls1\.3'; done
# kTLS where the kernel has it, said either way; links show it.
for n in exporter importer; do
  if grep -q "kernel TLS offload on" "$WORK_DIR/$n.log"; then
    [ "$n" = exporter ] && sock=exp || sock=imp
    expect_link "$WORK_DIR/$sock.sock" 'tls1\.3\+ktls'
  else
    grep -qE "kernel TLS offload (unavailable|not used)" "$WORK_DIR/$n.log" ||
      fail "$n said nothing about kernel TLS offload"
  fi
done

log "fio --verify through the TLS link"
fio_verify tls
CANARY="tls-canary-$RANDOM$RANDOM$RANDOM"
python3 -c 'import sys; t = "".join(f"{sys.argv[1]} {i}\n" for i in range(50000)); sys.stdout.write(t[:1 << 20])' \
  "$CANARY" >"$WORK_DIR/canary"
timeout -k 5 60 dd if="$WORK_DIR/canary" of="$MNT/xa0" bs=1M seek=100 oflag=direct conv=notrunc,fsync \
  status=none || fail "dd canary: exit status $?"
grep -qaF "$CANARY" "$IMG" || fail "the canary did not reach the exported image"
! grep -qaF "$CANARY" "$WORK_DIR/capture" || fail "the canary crossed the wire in plaintext"

log "a peer with DragonFly's scheme against a .tls13 side is refused on both sides"
DK=$WORK_DIR/dkeys
timeout 120 "$XDISK" keygen --keys "$DK" >/dev/null
cp "$EK/rsa.pub" "$DK/remote/127.0.0.1.pub" # no .tls13 here
start_daemon DD dfly "$XDISK" --connect "127.0.0.1:$PORT" --keys "$DK" --state-dir "$WORK_DIR/state-dfly" \
  --control none
wait_for "grep -q 'refused: TLS handshake failed' '$WORK_DIR/exporter.log'" 15 ||
  fail "the .tls13 side did not refuse the DragonFly-scheme peer"
expect_refusal "$WORK_DIR/exp.sock" 127.0.0.1 "bad handshake"
wait_for "grep -q 'refused: short handshake' '$WORK_DIR/dfly.log'" 15 ||
  fail "the DragonFly-scheme side did not refuse"
grep -q "up: peer" "$WORK_DIR/dfly.log" && fail "a mismatched link came up"
stop_ok "$DD" 10 "DragonFly-scheme daemon"

log "the man in the middle flips one byte of a write: record fails, reconnect, resend"
tampered_write 200 'dropping link: TLS record failed'

log "SIGTERM: both daemons exit 0"
stop_pair

scan_logs "warning: link 127\.0\.0\.1:[0-9]+: (refused: TLS handshake failed: .*|refused: short handshake .*|dropping link: TLS record failed: .*|dropping link: read error: connection reset by peer|dropping link: write error: (broken pipe|connection reset by peer))$|disk $SERIAL: no path left: I/O blocks"
log "PASS"
