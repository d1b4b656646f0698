#!/bin/bash
# Span sizes on the import side, against python block servers:
#  - a disk whose size is not a multiple of its block size (1000 bytes,
#    blksize 512) is presented rounded down to whole blocks (512 bytes), and
#    reading it whole works (no EIO from the partial block);
#  - two servers advertise one serial with different sizes: the second is
#    refused while the first serves; when the first goes away, the second
#    (still advertised) is considered again and becomes the disk, with its
#    size and its data; a third claimant still refused at SIGTERM does not
#    become a disk during shutdown (exit 0).
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
fuse_test python3 timeout mountpoint cmp
need_xdiskctl


# The server CLI advertising the image's exact size (BlockServer rounds it
# down to whole blocks itself).
cat >"$WORK_DIR/srv.py" <<'PYEOF'
import os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import dmsg_peer as p
orig = p.BlockServer.__init__
def init(self, *a, **kw):
    orig(self, *a, **kw)
    self.size = os.fstat(self.fd).st_size
p.BlockServer.__init__ = init
sys.exit(p.main(sys.argv[2:]))
PYEOF

start_server() {
  start_peer_server "$1" "$WORK_DIR/$2.log" "$3" python3 "$WORK_DIR/srv.py" "$PEER" server \
    --listen "127.0.0.1:$3" --image "$4" --serial "$5" --label "$6"
}

make_keys "$WORK_DIR/keys" 127.0.0.1
head -c 1000 /dev/urandom >"$WORK_DIR/odd.img"
head -c $((4 * MIB)) /dev/urandom >"$WORK_DIR/dupa.img"
head -c $((8 * MIB)) /dev/urandom >"$WORK_DIR/dupb.img"
P_ODD=$(free_port)
P_DUPA=$(free_port)
P_DUPB=$(free_port)
start_server S_ODD odd "$P_ODD" "$WORK_DIR/odd.img" odd1 pyhost/odd
start_server S_DUPA dupa "$P_DUPA" "$WORK_DIR/dupa.img" dup1 pyhost/dupa

# The second claimant of dup1 starts listening once the first is imported.
ISOCK=$WORK_DIR/imp.sock
start_importer PID imp "$MNT" "$WORK_DIR/keys" "127.0.0.1:$P_ODD" "127.0.0.1:$P_DUPA" \
  "127.0.0.1:$P_DUPB" -- --control "$ISOCK"
ILOG=$WORK_DIR/imp.log

log "a 1000-byte disk with blksize 512 is presented as 512 bytes and reads whole"
wait_disk "$MNT" odd1
[ "$(stat -c %s "$MNT/serno/odd1")" = 512 ] || fail "odd1 size $(stat -c %s "$MNT/serno/odd1")"
timeout -k 5 30 dd if="$MNT/serno/odd1" of="$WORK_DIR/odd.read" bs=4096 iflag=direct status=none ||
  fail "reading odd1 whole failed"
cmp "$WORK_DIR/odd.read" <(head -c 512 "$WORK_DIR/odd.img") || fail "odd1 reads differ"
grep -q "span 'odd1': size 1000 is not a multiple of its block size 512; presented as 512 bytes" "$ILOG" ||
  fail "no log line about the rounded size"

log "a second dup1 with another size is refused while the first serves"
wait_disk "$MNT" dup1
[ "$(stat -c %s "$MNT/serno/dup1")" = $((4 * MIB)) ] || fail "dup1 size"
start_server S_DUPB dupb "$P_DUPB" "$WORK_DIR/dupb.img" dup1 pyhost/dupb
wait_for "grep -q \"not importing span 'dup1': size $((8 * MIB))/512 differs\" '$ILOG'" 15 ||
  fail "no warning for the second dup1"

log "the first dup1 goes away: the second one becomes the disk"
_kill_quietly "$S_DUPA"
wait_for "[ \"\$(stat -c %s '$MNT/serno/dup1' 2>/dev/null)\" = $((8 * MIB)) ]" 15 ||
  fail "dup1 was not taken over by the 8 MiB span (size $(stat -c %s "$MNT/serno/dup1" 2>&1))"
cmp "$MNT/serno/dup1" "$WORK_DIR/dupb.img" || fail "dup1 does not read the second claimant's image"
[ -e "$MNT/by-label/pyhost/dupb" ] || fail "by-label/pyhost/dupb missing"
kill -0 "$PID" || fail "the importer died"

log "a third dup1 of yet another size is refused, and still advertised at SIGTERM"
# At shutdown the spans go as the links close: whichever goes first, the
# refused one must not become a disk then (it did, and the daemon crashed
# on exit with handles of a disk made after Shutdown).
head -c $((2 * MIB)) /dev/urandom >"$WORK_DIR/dupc.img"
P_DUPC=$(free_port)
start_server S_DUPC dupc "$P_DUPC" "$WORK_DIR/dupc.img" dup1 pyhost/dupc
"$XDISKCTL" --control "$ISOCK" connect "127.0.0.1:$P_DUPC" >/dev/null || fail "xdiskctl connect"
wait_for "grep -q \"not importing span 'dup1': size $((2 * MIB))/512 differs\" '$ILOG'" 15 ||
  fail "no warning for the third dup1"

log "SIGTERM: exit 0, unmounted"
stop_ok "$PID" 15
! mountpoint -q "$MNT" || fail "still mounted after SIGTERM"

scan_logs "not importing span 'dup1'|cannot connect: connection refused|no path left"
log "PASS"
