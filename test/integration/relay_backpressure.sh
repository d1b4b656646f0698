#!/bin/bash
# Backpressure end to end: a slow far side slows the relay's reads from the
# near side, and the relay's memory stays within its documented bound
# (docs/design.md "Relay": about 8 MiB + 1.3 MiB per feeding link above
# idle). Exporter A runs in a network namespace whose veth is shaped with
# tbf to 64 Mbit/s toward A; relay B links to A over the veth and to
# importer C on loopback. C writes 1 MiB blocks with 64 requests in flight
# (64 MiB: what B would hold without backpressure) and verifies them. fio
# ends with err=0 (B resumed C every time), and B's VmHWM grew by less than
# 24 MiB over its idle size. Every daemon exits 0 on SIGTERM.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test bp1 256 fio ip tc
veth_netns
tc qdisc add dev "$VH" root tbf rate 64mbit burst 64kb latency 500ms

read -r PA PB <<<"$(free_ports 2)"
make_keys "$WORK_DIR/keys" "$HOST_IP" "$NS_IP" 127.0.0.1
start_daemon EXP a ip netns exec "$NS" "$XDISK" --listen "$NS_IP:$PA" --keys "$WORK_DIR/keys" \
  --state-dir "$WORK_DIR/state-a" --export "$IMG,serno=$SERIAL"
wait_for "ip netns exec '$NS' ss -Hltn 'sport = :$PA' | grep -q ." 10 ||
  fail "A is not listening on $NS_IP:$PA"
# Under ASan (XDISK=build/san/...) freed buffers would sit in its
# quarantine and count as resident: measure the live ones.
ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0 \
  start_relay RELAY b "$PB" "$WORK_DIR/keys" "$NS_IP:$PA"
start_importer IMP c "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PB"
wait_disk "$MNT" "$SERIAL"

kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
idle=$(kb "$RELAY" VmRSS)
log "B idle: VmRSS $idle kB; fio: 1 MiB writes, 64 in flight, through the 64 Mbit/s veth"
(cd "$WORK_DIR" && exec fio --name=seq --filename="$MNT/xa0" --ioengine=libaio --direct=1 \
  --rw=write --bs=1M --size=128M --iodepth=64 --verify=crc32c --verify_fatal=1 \
  --output="$WORK_DIR/seq.out") &
FIO=$!
cleanup_fn kill -KILL "$FIO"
wait_fio "$FIO" "$WORK_DIR/seq.out" 120
hwm=$(kb "$RELAY" VmHWM)
log "B: VmHWM $hwm kB, $(((hwm - idle) / 1024)) MiB above idle"
[ $((hwm - idle)) -lt $((24 * 1024)) ] ||
  fail "B grew by $(((hwm - idle) / 1024)) MiB under a slow far side (bound: 24)"
require_alive "$RELAY" "after the slow writes"

stop_all "$IMP" "$RELAY" "$EXP"
scan_logs ""
log "PASS"
