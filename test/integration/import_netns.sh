#!/bin/bash
# A cut network costs the application nothing: the exporter runs in its own
# network namespace behind a veth pair (169.254.N.0/30, private to this
# test), the importer connects to it from the root namespace, both with
# --link-timeout 3000. While fio writes random 4 KiB blocks with crc32c
# verification through MNT/xa0, the namespace's end of the veth is taken down
# for 5 s (packets die at the veth; none leave by another route), longer than
# the link timeout, so both sides really drop the link; the disk stays
# listed, and once the veth is up again the importer reconnects, resends the
# blocked I/O and fio ends with exit 0, err=0 and every block verified. The
# namespace and the veth pair are removed even when the test fails.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test netns1 1024 fio ip
veth_netns

PORT=$(free_port)
# Each side allows the other's veth address.
make_keys "$WORK_DIR/keys" "$HOST_IP" "$NS_IP"
start_daemon EXP exporter ip netns exec "$NS" "$XDISK" --listen "$NS_IP:$PORT" \
  --keys "$WORK_DIR/keys" --state-dir "$WORK_DIR/state-exporter" --link-timeout 3000 \
  --export "$IMG,serno=$SERIAL"
wait_for "ip netns exec '$NS' ss -Hltn 'sport = :$PORT' | grep -q ." 10 ||
  fail "exporter is not listening on $NS_IP:$PORT"
start_importer IMP importer "$MNT" "$WORK_DIR/keys" "$NS_IP:$PORT" -- --link-timeout 3000
wait_disk "$MNT" "$SERIAL"

log "fio with verify; cut the veth for 5 s"
(cd "$WORK_DIR" && exec fio --name=rand --filename="$MNT/xa0" --ioengine=libaio --direct=1 \
  --rw=randwrite --bs=4k --size=512M --io_size=128M --iodepth=16 --verify=crc32c \
  --verify_backlog=256 --verify_fatal=1 --output="$WORK_DIR/rand.out") &
FIO=$!
# SIGKILL without waiting: fio cannot exit while its I/O is blocked on the
# importer, and the importer's own cleanup (which runs next) fails it.
cleanup_fn kill -KILL "$FIO"
sleep 2
kill -0 "$FIO" 2>/dev/null || fail "fio finished before the cut; make it longer"
ip -n "$NS" link set "$VN" down
log "$VN down"
wait_for "grep -q 'disk $SERIAL: no path left' '$WORK_DIR/importer.log'" 10 ||
  fail "the importer did not drop the link within 10 s of the cut"
[ "$(ls "$MNT/serno")" = "$SERIAL" ] || fail "serno/$SERIAL not listed during the cut"
sleep 2
wait_for "grep -q 'dropping link' '$WORK_DIR/exporter.log'" 5 ||
  fail "the exporter did not drop the link"
[ "$(ls "$MNT/serno")" = "$SERIAL" ] || fail "serno/$SERIAL not listed during the cut"
kill -0 "$FIO" 2>/dev/null || fail "fio ended during the cut"
ip -n "$NS" link set "$VN" up
log "$VN up"

wait_fio "$FIO" "$WORK_DIR/rand.out" 60
reads=$(sed -n 's/.*issued rwts: total=\([0-9]*\),.*/\1/p' "$WORK_DIR/rand.out")
[ "${reads:-0}" -gt 0 ] || fail "fio verified nothing"
log "fio: exit 0, err=0, $reads verify reads"
grep -qE "disk $SERIAL: open via .*, [1-9][0-9]* requests to \(re\)send" "$WORK_DIR/importer.log" ||
  fail "no blocked I/O was resent after the cut"

log "SIGTERM: both daemons exit 0"
stop_pair

# Expected from the cut: both sides drop the silent link, the importer loses
# its only path, and reconnecting fails while the veth is down.
scan_logs "warning: (link [0-9.]+:[0-9]+: dropping link: no data received for [0-9]+ ms$|disk $SERIAL: no path left: I/O blocks|(link|connect) $NS_IP:$PORT: cannot connect: .* \(will retry\))"
log "PASS"
