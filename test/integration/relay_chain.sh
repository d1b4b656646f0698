#!/bin/bash
# A chain A -> B -> C: A exports, B only relays (no export, no mount), C
# imports and is linked to B alone. The disk appears on C with dist 1;
# `xdiskctl spans` on B shows the relayed copy; fio writes and verifies
# random 4 KiB and sequential 1 MiB blocks through B; ext4 made on C's disk
# survives a remount and e2fsck on C and on A's image; B's stats count the
# relayed transactions and bytes. Every daemon exits 0 on SIGTERM and logs
# no warning.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test chain1 512 losetup mkfs.ext4 e2fsck sha256sum fio

FS=$WORK_DIR/fs
mkdir -p "$FS"
make_keys "$WORK_DIR/keys" 127.0.0.1
read -r PA PB <<<"$(free_ports 2)"

start_exporter EXP a "$PA" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
start_relay RELAY b "$PB" "$WORK_DIR/keys" "127.0.0.1:$PA"
start_importer IMP c "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PB" -- --control "$WORK_DIR/c.sock"
wait_disk "$MNT" "$SERIAL"

log "C sees the disk through B with dist 1"
dist=$(CTL=$WORK_DIR/c.sock ctl --json disks | python3 -c '
import json, sys
d = json.load(sys.stdin)["disks"]
print(",".join(str(p["dist"]) for x in d for p in x["paths"]))')
[ "$dist" = 1 ] || fail "C's paths have dist '$dist', want one path with dist 1"
CTL=$WORK_DIR/b.sock ctl spans >"$WORK_DIR/spans.txt"
cat "$WORK_DIR/spans.txt" >&2
grep -qE "^$SERIAL +127\.0\.0\.1:[0-9]+ +127\.0\.0\.1:$PA +1 " "$WORK_DIR/spans.txt" ||
  fail "B's xdiskctl spans does not show $SERIAL relayed from A with dist 1"

log "fio: random 4 KiB and sequential 1 MiB writes, verified, through B"
(cd "$WORK_DIR" && fio --name=rand --filename="$MNT/xa0" --ioengine=libaio --direct=1 \
  --rw=randwrite --bs=4k --size=256M --io_size=64M --iodepth=16 --verify=crc32c \
  --verify_fatal=1 --output="$WORK_DIR/rand.out") || {
  cat "$WORK_DIR/rand.out" >&2
  fail "fio random"
}
(cd "$WORK_DIR" && fio --name=seq --filename="$MNT/xa0" --ioengine=libaio --direct=1 \
  --rw=write --bs=1M --offset=256M --size=256M --iodepth=8 --verify=crc32c --verify_fatal=1 \
  --output="$WORK_DIR/seq.out") || {
  cat "$WORK_DIR/seq.out" >&2
  fail "fio sequential"
}
grep -q "err= 0" "$WORK_DIR/rand.out" && grep -q "err= 0" "$WORK_DIR/seq.out" || fail "fio errors"

log "ext4 on C's disk, through B"
attach_loop LOOP "$MNT/xa0" --direct-io=on
mkfs.ext4 -q -F "$LOOP"
mount "$LOOP" "$FS"
mount_cleanup "$FS"
for i in $(seq -w 1 10); do
  head -c $(((1024 + RANDOM % 2048) * 1024 + RANDOM % 4096)) /dev/urandom >"$FS/f$i"
done
mkdir "$FS/sub"
for i in $(seq 1 30); do echo "small $i" >"$FS/sub/s$i"; done
(cd "$FS" && sha256sum f* sub/* >"$WORK_DIR/sums")
umount "$FS"
e2fsck -fn "$LOOP" >"$WORK_DIR/e2fsck-loop.log" 2>&1 || {
  cat "$WORK_DIR/e2fsck-loop.log" >&2
  fail "e2fsck on C's disk"
}
mount "$LOOP" "$FS"
(cd "$FS" && sha256sum -c --quiet "$WORK_DIR/sums") || fail "contents after remount"
umount "$FS"
losetup -d "$LOOP"
e2fsck -fn "$IMG" >"$WORK_DIR/e2fsck-img.log" 2>&1 || {
  cat "$WORK_DIR/e2fsck-img.log" >&2
  fail "e2fsck on A's image"
}

log "B counts what it relayed"
CTL=$WORK_DIR/b.sock ctl --json stats | python3 -c '
import json, sys
links = json.load(sys.stdin)["links"]
txns = sum(int(l["relayed_txns"]) for l in links)
data = sum(int(l["relayed_bytes"]) for l in links)
print("relayed transactions", txns, "bytes", data, file=sys.stderr)
sys.exit(0 if txns > 10000 and data > 512 * 1048576 else 1)' || fail "B's relay counters are too low"

log "SIGTERM: C, B and A exit 0"
stop_all "$IMP" "$RELAY" "$EXP"
! mountpoint -q "$MNT" || fail "still mounted after C's SIGTERM"

scan_logs ""
log "PASS"
