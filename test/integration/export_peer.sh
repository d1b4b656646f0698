#!/bin/bash
# Exporting a file to the independent peer: on a sparse 256 MiB image the
# peer's 64 MiB random write/read-back verify passes with 16 requests in
# flight (including flush, trim, and a read past the end that fails without
# breaking the link); BLK_FREEBLKS punches a real hole in the image (its
# allocated blocks shrink by the trimmed range, the range reads zero, the
# neighbours keep their data); a ',ro' export answers writes and trims with
# DMSG_ERR_IO (0x22) and leaves the image untouched while reads and flushes
# work; the advertised span carries pfs_label = serial, peer_label =
# <hostname>/<basename>, blksize 512 and the image size; and a second run
# with the same --state-dir advertises the same pfs_id and peer_id. Every
# daemon exits 0 on SIGTERM.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
peer_test python3 timeout cmp

MIB=1048576
# json FILE KEY: a top-level scalar from the first JSON line in FILE

# A tiny driver for specific I/O through the peer's Disk API.
cat >"$WORK_DIR/io.py" <<'EOF'
import os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import dmsg_peer as p
host, port, serial, op = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
args = [int(a) for a in sys.argv[6:]]
l = p.Link.connect(host, port).start()
l.wait_ready()
sp = l.wait_span(10, serial)
d = l.disk(sp["msgid"])
d.open()
def die(msg):
    print("io.py %s: %s" % (op, msg))
    l.close()
    sys.exit(1)
if op == "trim":                     # trim OFF LEN, then flush; range must read zero
    off, n = args
    r = d.trim(off, n)
    if r.error or r.resid:
        die("trim error 0x%x resid %d" % (r.error, r.resid))
    r = d.flush()
    if r.error:
        die("flush error 0x%x" % r.error)
    for o in range(off, off + n, 1 << 17):
        r = d.read(o, 1 << 17)
        if r.error or r.data != bytes(1 << 17):
            die("trimmed range at %d does not read back as zeros (error 0x%x)" % (o, r.error))
elif op == "ro":                     # ro: writes and trims fail with IO, reads and flush work
    r = d.read(0, 4096)
    if r.error or len(r.data) != 4096:
        die("read on a read-only export: error 0x%x" % r.error)
    before = r.data
    r = d.write(0, os.urandom(4096))
    if r.error != p.DMSG_ERR_IO:
        die("write on a read-only export: error 0x%x, want 0x22" % r.error)
    r = d.trim(0, 4096)
    if r.error != p.DMSG_ERR_IO:
        die("trim on a read-only export: error 0x%x, want 0x22" % r.error)
    r = d.flush()
    if r.error:
        die("flush on a read-only export: error 0x%x" % r.error)
    r = d.read(0, 4096)
    if r.error or r.data != before:
        die("read after the refused write: error 0x%x, same data %s" % (r.error, r.data == before))
    r = d.read(1 << 20, 1 << 17)     # the link is still usable for bigger reads
    if r.error:
        die("second read: error 0x%x" % r.error)
else:
    die("unknown op")
d.close()
l.close()
print("io.py %s: ok" % op)
EOF
io() { timeout 60 python3 "$WORK_DIR/io.py" "$PEER" 127.0.0.1 "$@"; }

make_keys "$WORK_DIR/keys" 127.0.0.1
IMG=$WORK_DIR/disk.img
truncate -s $((256 * MIB)) "$IMG"
HOST=$(uname -n)

log "export a sparse 256 MiB image"
PORT=$(free_port)
start_exporter PID exp "$PORT" "$WORK_DIR/keys" "$IMG,serno=exp1"

log "the advertised span"
peer client 127.0.0.1 "$PORT" spans --wait 1 >"$WORK_DIR/spans1.json" || fail "spans failed"
[ "$(wc -l <"$WORK_DIR/spans1.json")" = 1 ] || fail "want one span: $(cat "$WORK_DIR/spans1.json")"
[ "$(json "$WORK_DIR/spans1.json" pfs_label)" = exp1 ] || fail "pfs_label: $(cat "$WORK_DIR/spans1.json")"
[ "$(json "$WORK_DIR/spans1.json" peer_label)" = "$HOST/disk.img" ] ||
  fail "peer_label, want '$HOST/disk.img': $(cat "$WORK_DIR/spans1.json")"
[ "$(json "$WORK_DIR/spans1.json" blksize)" = 512 ] || fail "blksize: $(cat "$WORK_DIR/spans1.json")"
[ "$(json "$WORK_DIR/spans1.json" bytes)" = $((256 * MIB)) ] || fail "bytes: $(cat "$WORK_DIR/spans1.json")"
[ "$(json "$WORK_DIR/spans1.json" peer_type)" = 2 ] || fail "peer_type: $(cat "$WORK_DIR/spans1.json")"
PFS_ID=$(json "$WORK_DIR/spans1.json" pfs_id)
PEER_ID=$(json "$WORK_DIR/spans1.json" peer_id)
[ "$PFS_ID" != 00000000000000000000000000000000 ] || fail "nil pfs_id"
[ "$PEER_ID" != 00000000000000000000000000000000 ] || fail "nil peer_id"

log "client verify --bytes 64MiB --qd 16"
t0=$SECONDS
peer client 127.0.0.1 "$PORT" --serial exp1 verify --bytes 64MiB --qd 16 >"$WORK_DIR/verify.json" ||
  fail "verify: $(cat "$WORK_DIR/verify.json")"
grep -q '"ok": true' "$WORK_DIR/verify.json" || fail "verify: $(cat "$WORK_DIR/verify.json")"
log "verify passed in $((SECONDS - t0)) s: $(cat "$WORK_DIR/verify.json")"
require_alive "$PID" "after the verify"

log "FREEBLKS punches a hole in the image"
# 6 MiB of data at 128 MiB, written straight into the image (the exporter
# must not cache), of which the middle 4 MiB are trimmed through the peer.
head -c $((6 * MIB)) /dev/urandom >"$WORK_DIR/six"
dd if="$WORK_DIR/six" of="$IMG" bs=1M seek=128 conv=notrunc,fsync status=none
blocks_before=$(stat -c %b "$IMG")
io "$PORT" exp1 trim $((129 * MIB)) $((4 * MIB)) || fail "trim through the peer"
sync "$IMG"
blocks_after=$(stat -c %b "$IMG")
freed_kib=$(((blocks_before - blocks_after) * $(stat -c %B "$IMG") / 1024))
log "allocated: $blocks_before -> $blocks_after blocks ($freed_kib KiB freed)"
[ "$freed_kib" -ge 4096 ] || fail "trim freed only $freed_kib KiB of the image, want 4096"
cmp -n $((4 * MIB)) <(dd if="$IMG" bs=1M skip=129 count=4 status=none) /dev/zero ||
  fail "the trimmed range of the image is not zero"
cmp <(dd if="$IMG" bs=1M skip=128 count=1 status=none) <(head -c $MIB "$WORK_DIR/six") ||
  fail "the trim touched the MiB before it"
cmp <(dd if="$IMG" bs=1M skip=133 count=1 status=none) <(tail -c $MIB "$WORK_DIR/six") ||
  fail "the trim touched the MiB after it"

log "SIGTERM: exit 0"
stop_ok "$PID" 10

log "same --state-dir: same identity; ro: writes fail with 0x22"
head -c $((2 * MIB)) /dev/urandom >"$WORK_DIR/ro.img"
cp "$WORK_DIR/ro.img" "$WORK_DIR/ro.orig"
PORT2=$(free_port)
# start_exporter uses $WORK_DIR/state-NAME, so the name "exp" reuses the
# first run's state directory.
start_exporter PID2 exp "$PORT2" "$WORK_DIR/keys" "$IMG,serno=exp1" "$WORK_DIR/ro.img,serno=ro1,ro"
peer client 127.0.0.1 "$PORT2" spans --wait 1 >"$WORK_DIR/spans2.json" || fail "spans failed"
grep '"pfs_label": "exp1"' "$WORK_DIR/spans2.json" >"$WORK_DIR/exp1.json" || fail "exp1 not advertised"
grep '"pfs_label": "ro1"' "$WORK_DIR/spans2.json" >"$WORK_DIR/ro1.json" || fail "ro1 not advertised"
[ "$(json "$WORK_DIR/exp1.json" pfs_id)" = "$PFS_ID" ] ||
  fail "pfs_id changed across restarts: $PFS_ID -> $(json "$WORK_DIR/exp1.json" pfs_id)"
[ "$(json "$WORK_DIR/exp1.json" peer_id)" = "$PEER_ID" ] || fail "peer_id changed across restarts"
[ "$(json "$WORK_DIR/ro1.json" pfs_id)" != "$PFS_ID" ] || fail "two disks share a pfs_id"
[ "$(json "$WORK_DIR/ro1.json" bytes)" = $((2 * MIB)) ] || fail "ro1 size"
[ "$(json "$WORK_DIR/ro1.json" peer_label)" = "$HOST/ro.img" ] || fail "ro1 peer_label"
io "$PORT2" ro1 ro || fail "read-only export"
cmp "$WORK_DIR/ro.img" "$WORK_DIR/ro.orig" || fail "a read-only export changed its image"
stop_ok "$PID2" 10 "second run"

scan_logs "dropping link: read error: connection reset by peer"
log "PASS"
