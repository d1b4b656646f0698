#!/bin/bash
# The independent python peer on both sides of our relay B: B links to the
# python block server (serial pysrv1) and to our exporter A (serial rexp1);
# the python client, linked to B alone, sees both spans with dist 1 and runs
# its write/read-back/flush/trim/error verify on each through B with 16
# requests in flight. The client and the server check every message against
# §5.4 strictly (a violation fails them). B and A exit 0 on SIGTERM.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
peer_test python3 ss truncate

MIB=1048576
make_keys "$WORK_DIR/keys" 127.0.0.1
truncate -s $((64 * MIB)) "$WORK_DIR/py.img"
truncate -s $((64 * MIB)) "$WORK_DIR/exp.img"
read -r PS PA PB <<<"$(free_ports 3)"

python3 "$PEER" server --listen "127.0.0.1:$PS" --image "$WORK_DIR/py.img" --serial pysrv1 \
  --label pyhost/pydisk --fail-on-violation >"$WORK_DIR/pysrv.log" 2>&1 &
SRV=$!
cleanup_fn _kill_quietly "$SRV"
wait_for "grep -q '\"event\": \"listening\"' '$WORK_DIR/pysrv.log'" 10 ||
  fail "python server is not listening: $(cat "$WORK_DIR/pysrv.log")"
start_exporter EXP a "$PA" "$WORK_DIR/keys" "$WORK_DIR/exp.img,serno=rexp1"
start_relay RELAY b "$PB" "$WORK_DIR/keys" "127.0.0.1:$PS" "127.0.0.1:$PA"
wait_for "peer client 127.0.0.1 $PB spans --wait 0.5 | grep -c '\"dist\": 1' | grep -qx 2" 15 ||
  fail "the client does not see two spans with dist 1: $(peer client 127.0.0.1 "$PB" spans)"

for serial in pysrv1 rexp1; do
  log "client verify of $serial through B"
  peer client 127.0.0.1 "$PB" --serial "$serial" verify --bytes 32MiB --qd 16 \
    >"$WORK_DIR/verify-$serial.json" || fail "verify $serial: $(cat "$WORK_DIR/verify-$serial.json")"
  grep -q '"ok": true' "$WORK_DIR/verify-$serial.json" ||
    fail "verify $serial: $(cat "$WORK_DIR/verify-$serial.json")"
  require_alive "$RELAY" "after the verify of $serial"
done
# --fail-on-violation: the server exits on the first one.
kill -0 "$SRV" 2>/dev/null || fail "the python server stopped: $(tail -n 5 "$WORK_DIR/pysrv.log")"

stop_all "$RELAY" "$EXP"
scan_logs ""
log "PASS"
