#!/bin/bash
# The only relay of a chain A -> B -> C restarts under load: while fio
# writes random 4 KiB blocks with crc32c verification on C, B is SIGKILLed
# (C's disk waits with no path), then started again on the same port. C's
# link comes back, the span is relayed again, the held and resent requests
# complete, and fio ends with exit 0, err=0: nothing was lost. B is killed
# twice; then the exporter A is killed and restarted behind the surviving
# B (the relay passes LOSTLINK on to C and withdraws its copy). Every daemon
# exits 0 on SIGTERM.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test restart1 512 fio

ILOG=$WORK_DIR/c.log
make_keys "$WORK_DIR/keys" 127.0.0.1
read -r PA PB <<<"$(free_ports 2)"

start_exporter EXP a "$PA" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
start_relay RELAY b "$PB" "$WORK_DIR/keys" "127.0.0.1:$PA"
start_importer IMP c "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PB"
wait_disk "$MNT" "$SERIAL"
paths() { grep -c "disk $SERIAL: path via link 127\.0\.0\.1:$PB (dist 1)" "$ILOG" || true; }

(cd "$WORK_DIR" && exec fio --name=rand --filename="$MNT/xa0" --ioengine=libaio --direct=1 \
  --rw=randwrite --bs=4k --size=384M --io_size=256M --iodepth=16 --verify=crc32c \
  --verify_backlog=256 --verify_fatal=1 --output="$WORK_DIR/rand.out") &
FIO=$!
cleanup_fn kill -KILL "$FIO"

for round in 1 2; do
  sleep 2
  kill -0 "$FIO" 2>/dev/null || fail "fio finished before round $round"
  before=$(paths)
  kill -KILL "$RELAY"
  wait "$RELAY" 2>/dev/null || true
  log "round $round: killed relay B under fio"
  wait_for "grep -q 'disk $SERIAL: no path left' '$ILOG'" 10 || fail "C did not lose its path"
  sleep 1
  start_relay RELAY b "$PB" "$WORK_DIR/keys" "127.0.0.1:$PA"
  wait_for "[ \$(paths) -gt $before ]" 15 || fail "C did not regain its path through B"
  log "round $round: B is back, C has its path again"
done

# The far side goes: A is SIGKILLed under fio. B ends the transactions it
# relayed for C with LOSTLINK and withdraws its copy of the span; C waits,
# and resends once A is back and B relays the span again.
sleep 2
kill -0 "$FIO" 2>/dev/null || fail "fio finished before A was killed"
before=$(paths)
lost=$(grep -c "disk $SERIAL: no path left" "$ILOG" || true)
kill -KILL "$EXP"
wait "$EXP" 2>/dev/null || true
log "killed exporter A under fio"
wait_for "[ \$(grep -c 'disk $SERIAL: no path left' '$ILOG') -gt $lost ]" 10 ||
  fail "C did not lose its path when A went"
sleep 1
start_exporter EXP a "$PA" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
wait_for "[ \$(paths) -gt $before ]" 15 || fail "C did not regain its path when A came back"
log "A is back, C has its path again"

wait_fio "$FIO" "$WORK_DIR/rand.out" 120
log "fio: exit 0, err=0"

log "SIGTERM: C, B and A exit 0"
stop_all "$IMP" "$RELAY" "$EXP"

# Each kill drops B's links at A and at C, leaves C without a path and its
# reconnects refused until B is back.
scan_logs "warning: (link 127\.0\.0\.1:[0-9]+: dropping link: (read|write) error: (connection reset by peer|broken pipe)|link 127\.0\.0\.1:($PB|$PA): cannot connect: connection refused \(will retry\)|disk $SERIAL: no path left: I/O blocks until the disk returns \([0-9]+ queued\))$"
log "PASS"
