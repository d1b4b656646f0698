#!/bin/bash
# A ring of three relays R1 -> R2 -> R3 -> R1 with one exporter A linked to
# R1, and an importer C linked to R2 alone. Spans go round the ring but
# converge: every relayed copy carries a dist of 16 or less and the copies
# stop changing. C reads and writes the disk through R2 (dist 2: A's span
# passed on by R1 and by R2, the shortest way round). When A stops, its span is withdrawn everywhere: within
# seconds no relay relays anything and C has no path left. Nothing logs a
# warning; every daemon exits 0 on SIGTERM.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
fuse_test fusermount3 mountpoint truncate ss cmp

SERIAL=ring1
IMG=$WORK_DIR/ring.img
truncate -s $((64 * MIB)) "$IMG"
make_keys "$WORK_DIR/keys" 127.0.0.1

declare -A PORT PID
read -r PORT[a] PORT[r1] PORT[r2] PORT[r3] <<<"$(free_ports 4)"

start_exporter EXP a "${PORT[a]}" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
for r in r1 r2 r3; do
  start_relay NEW_PID "$r" "${PORT[$r]}" "$WORK_DIR/keys"
  PID[$r]=$NEW_PID
done
# Linked once every relay listens, so that no attempt is refused.
CTL=$WORK_DIR/r1.sock ctl connect "127.0.0.1:${PORT[r2]}" >/dev/null
CTL=$WORK_DIR/r2.sock ctl connect "127.0.0.1:${PORT[r3]}" >/dev/null
CTL=$WORK_DIR/r3.sock ctl connect "127.0.0.1:${PORT[r1]}" >/dev/null
CTL=$WORK_DIR/r1.sock ctl connect "127.0.0.1:${PORT[a]}" >/dev/null
start_importer IMP c "$MNT" "$WORK_DIR/keys" "127.0.0.1:${PORT[r2]}" -- \
  --control "$WORK_DIR/c.sock"
wait_disk "$MNT" "$SERIAL"

# spans_of R: R's relayed copies as "serial to from dist" lines, sorted.
spans_of() {
  CTL=$WORK_DIR/$1.sock ctl --json spans | python3 -c '
import json, sys
for s in sorted(json.load(sys.stdin)["relayed"], key=lambda s: (s["to"], s["from"])):
    print(s["serial"], s["to"], s["from"], s["dist"])'
}
all_spans() { for r in r1 r2 r3; do spans_of "$r" | sed "s/^/$r /"; done; }
max_dist() { all_spans | awk '{if ($5 > m) m = $5} END {print m + 0}'; }

log "the ring converges"
sleep 2
all_spans >"$WORK_DIR/spans1"
sleep 2
all_spans >"$WORK_DIR/spans2"
cat "$WORK_DIR/spans2" >&2
cmp -s "$WORK_DIR/spans1" "$WORK_DIR/spans2" || fail "the relayed spans still change"
[ -s "$WORK_DIR/spans2" ] || fail "nothing is relayed"
[ "$(max_dist)" -le 16 ] || fail "a relayed span carries dist $(max_dist)"
# R1 passes A's span to R2 and R3 with dist 1.
grep -q "^r1 $SERIAL 127\.0\.0\.1:[0-9]* 127\.0\.0\.1:${PORT[a]} 1$" "$WORK_DIR/spans2" ||
  fail "R1 does not relay A's span with dist 1"
dist=$(CTL=$WORK_DIR/c.sock ctl --json disks | python3 -c '
import json, sys
print(min(p["dist"] for d in json.load(sys.stdin)["disks"] for p in d["paths"]))')
[ "$dist" = 2 ] || fail "C's best path has dist $dist, want 2 (A -> R1 -> R2 -> C)"

log "C writes and reads back 8 MiB through the ring"
head -c $((8 * MIB)) /dev/urandom >"$WORK_DIR/data"
dd if="$WORK_DIR/data" of="$MNT/xa0" bs=1M oflag=direct status=none
dd if="$MNT/xa0" of="$WORK_DIR/back" bs=1M count=8 iflag=direct status=none
cmp -s "$WORK_DIR/data" "$WORK_DIR/back" || fail "read back differs"

log "A stops: the withdrawal reaches every relay and C"
stop_all "$EXP"
wait_for '[ -z "$(all_spans)" ]' 10 || {
  all_spans >&2
  fail "relayed spans remain after A stopped"
}
paths() {
  CTL=$WORK_DIR/c.sock ctl --json disks | python3 -c '
import json, sys
print(sum(len(d["paths"]) for d in json.load(sys.stdin)["disks"]))'
}
wait_for '[ "$(paths)" = 0 ]' 10 || fail "C still has $(paths) path(s)"
copies=$(cat "$WORK_DIR"/r?.log | grep -c "relaying span" || true)
sleep 2
[ "$(cat "$WORK_DIR"/r?.log | grep -c "relaying span" || true)" = "$copies" ] ||
  fail "spans are still being relayed after the withdrawal"
log "$copies copies relayed in all, none left"

log "SIGTERM: C and the relays exit 0"
stop_all "$IMP" "${PID[r1]}" "${PID[r2]}" "${PID[r3]}"
# A's stop leaves C without a path and R1 retrying A; R3 retries R1 once
# R1 stopped.
scan_logs "(link 127\.0\.0\.1:(${PORT[a]}|${PORT[r1]}): cannot connect: connection refused \(will retry\)|disk $SERIAL: no path left: I/O blocks until the disk returns \(0 queued\))$"
log "PASS"
