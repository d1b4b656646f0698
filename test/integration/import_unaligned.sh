#!/bin/bash
# The disk file is a regular file to its users: reads and writes at any
# offset and length work (read-modify-write of the partial blocks), also
# two threads writing different bytes of the same blocks at once (no lost
# update: the read-modify-write is ordered like any other write), and an
# unaligned punch-hole zeroes exactly its range; `dd bs=1 seek=3
# conv=notrunc` works. Every byte matches a model of the disk and the
# exported image. A request the remote refuses (a write to a read-only
# export) fails alone, within one open, without re-opening the disk.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
fuse_test python3 dd cmp truncate fallocate timeout

SERIAL=unal1
IMG=$WORK_DIR/u.img
RO_IMG=$WORK_DIR/ro.img
head -c $((8 * MIB)) /dev/urandom >"$IMG"
head -c $((1 * MIB)) /dev/urandom >"$RO_IMG"
cp "$IMG" "$WORK_DIR/model.img"

PORT=$(free_port)
make_keys "$WORK_DIR/keys" 127.0.0.1
start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL" "$RO_IMG,serno=ro1,ro"
start_importer IMP importer "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- -v
wait_disk "$MNT" "$SERIAL"
wait_disk "$MNT" ro1
DISK=$MNT/serno/$SERIAL

log "unaligned reads and writes in one open, checked against a model"
timeout -k 5 120 python3 - "$DISK" "$WORK_DIR/model.img" <<'PYEOF' || fail "unaligned I/O"
import os, random, sys, threading
disk, model_path = sys.argv[1], sys.argv[2]
fd = os.open(disk, os.O_RDWR)
model = bytearray(open(model_path, "rb").read())
rnd = random.Random(17)
def write(off, data):
    n = os.pwrite(fd, data, off)
    assert n == len(data), (off, len(data), n)
    model[off:off + len(data)] = data
# Edges of every kind: inside one block, across one boundary, long ones
# with partial blocks at both ends, and aligned ones in between.
cases = [(3, 1), (511, 2), (0, 1), (4095, 5000), (7, 130 * 1024 + 5), (12345, (1 << 20) + 3),
         (8 * 1048576 - 1, 1), (1024, 512), (513, 510)]
cases += [(rnd.randrange(0, 8 * 1048576 - 70000), rnd.randrange(1, 70000)) for _ in range(60)]
for off, n in cases:
    write(off, os.urandom(n))
    if rnd.random() < 0.5:
        o2 = max(0, off - rnd.randrange(0, 700)); n2 = rnd.randrange(1, 3000)
        got = os.pread(fd, n2, o2)
        assert got == bytes(model[o2:o2 + n2]), ("read after write", o2, n2)
for _ in range(100):
    o = rnd.randrange(0, 8 * 1048576 - 1); n = rnd.randrange(1, 100000)
    n = min(n, 8 * 1048576 - o)
    assert os.pread(fd, n, o) == bytes(model[o:o + n]), ("read", o, n)
# Two threads, each writing its own bytes of the same blocks at once: a
# read-modify-write that let the other one in between would lose them.
def hammer(tag, first):
    for blk in range(64):
        for rep in range(4):
            off = blk * 512 + first + rep * 8
            os.pwrite(fd, tag * 3, off)
ts = [threading.Thread(target=hammer, args=(b"A", 10)), threading.Thread(target=hammer, args=(b"B", 300))]
for t in ts: t.start()
for t in ts: t.join()
for blk in range(64):
    for rep in range(4):
        for tag, first in ((b"A", 10), (b"B", 300)):
            off = blk * 512 + first + rep * 8
            model[off:off + 3] = tag * 3
got = os.pread(fd, 64 * 512, 0)
assert got == bytes(model[:64 * 512]), "lost update between concurrent partial-block writes"
os.fsync(fd)
os.close(fd)
open(model_path, "wb").write(model)
print("ok", len(cases))
PYEOF

log "dd bs=1 seek=3 conv=notrunc, and an unaligned punch hole"
printf 'Z' >"$WORK_DIR/z"
timeout -k 5 30 dd if="$WORK_DIR/z" of="$DISK" bs=1 seek=3 conv=notrunc status=none || fail "dd bs=1 seek=3"
printf 'Z' | dd of="$WORK_DIR/model.img" bs=1 seek=3 conv=notrunc status=none
timeout -k 5 30 fallocate -p -o 1000 -l 3000 "$DISK" || fail "unaligned punch hole"
dd if=/dev/zero of="$WORK_DIR/model.img" bs=1 seek=1000 count=3000 conv=notrunc status=none
timeout -k 5 60 cmp "$DISK" "$WORK_DIR/model.img" || fail "the disk differs from the model"

log "a request the remote refuses fails alone and does not re-open the disk"
opens_before=$(grep -c "disk ro1: .*open" "$WORK_DIR/importer.log" || true)
timeout -k 5 30 python3 - "$MNT/serno/ro1" "$RO_IMG" <<'PYEOF' || fail "read-only export"
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
img = open(sys.argv[2], "rb").read()
for i in range(5):
    try:
        os.pwrite(fd, b"x" * 4096, 4096 * i)
        raise SystemExit("a write to a read-only export succeeded")
    except OSError as e:
        assert e.errno == errno.EIO, e
    assert os.pread(fd, 1000, 4096 * i + 3) == img[4096 * i + 3:4096 * i + 1003]
os.close(fd)
PYEOF
opens=$(( $(grep -c "disk ro1: .*open" "$WORK_DIR/importer.log" || true) - opens_before ))
[ "$opens" = 1 ] || fail "disk ro1 was opened $opens times in one session: $(grep 'disk ro1' "$WORK_DIR/importer.log")"

log "SIGTERM: both exit 0, the image matches the model"
stop_pair
cmp "$IMG" "$WORK_DIR/model.img" || fail "the exported image differs from the model"
scan_logs "disk ro1: write at [0-9]+\+4096 failed: IO$"
log "PASS"
