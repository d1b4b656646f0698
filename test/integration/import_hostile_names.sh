#!/bin/bash
# Hostile names from a peer: python block servers whose LNK_CONN and span
# labels hold a newline followed by a forged "xdisk-fuse: error:" line, a
# label with "." / ".." components, and a serial that is not UTF-8. The
# importer logs every one of them escaped (no forged line, no raw byte),
# gives none of those labels a by-label/ name (logged once per span), keeps
# each disk reachable under serno/ and xaN, and xdiskctl prints no raw
# control character either.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
fuse_test python3 timeout mountpoint
need_xdiskctl

ISOCK=$WORK_DIR/imp.sock

# The server CLI, with BlockServer's name checks lifted; serial and label
# arrive hex-encoded, so that any byte can be sent.
cat >"$WORK_DIR/srv.py" <<'PYEOF'
import os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import dmsg_peer as p
args = sys.argv[2:]
serial = bytes.fromhex(args[args.index("--serial") + 1])
label = bytes.fromhex(args[args.index("--label") + 1])
args[args.index("--serial") + 1] = "placeholder"
args[args.index("--label") + 1] = "placeholder/x"
orig_init = p.BlockServer.__init__
def init(self, image_path, s, l, blksize=512, verbose=False):
    orig_init(self, image_path, s, l, blksize, verbose)
    self.label = label.decode("latin-1")  # LNK_CONN label: str, sent as latin-1 below
def send_span(self, link):
    ext = p.pack_span(peer_type=p.PEER_BLOCK, pfs_type=p.PFS_TYPE_SERVER,
                      media_bytes=self.size, blksize=self.blksize,
                      peer_label=label, pfs_label=serial,
                      peer_id=p._uuid_from("peer:h"), pfs_id=p._uuid_from("pfs:" + serial.hex()))
    link.my_span = link.open_trans(None, p.LNK_SPAN, ext=ext, kind="span")
p.BlockServer.__init__ = init
p.BlockServer._send_span = send_span
# LNK_CONN labels are encoded with str.encode(): keep the bytes as given.
orig_label = p._label
p._label = lambda s: orig_label(s.encode("latin-1") if isinstance(s, str) else s)
sys.exit(p.main(args))
PYEOF

hex() { printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'; }

start_server() {
  start_peer_server "$1" "$WORK_DIR/$2.log" "$3" python3 "$WORK_DIR/srv.py" "$PEER" server \
    --listen "127.0.0.1:$3" --image "$4" --serial "$5" --label "$6"
}

make_keys "$WORK_DIR/keys" 127.0.0.1
for n in 1 2 3; do head -c $((1 * MIB)) /dev/urandom >"$WORK_DIR/d$n.img"; done
P1=$(free_port)
P2=$(free_port)
P3=$(free_port)
start_server S1 srv1 "$P1" "$WORK_DIR/d1.img" "$(hex evil1)" "$(hex $'h/d\nxdisk-fuse: error: FAKE')"
start_server S2 srv2 "$P2" "$WORK_DIR/d2.img" "$(hex $'\xff\xfeS')" "$(hex h/ok2)"
start_server S3 srv3 "$P3" "$WORK_DIR/d3.img" "$(hex evil3)" "$(hex x/../../y)"

start_importer PID imp "$MNT" "$WORK_DIR/keys" "127.0.0.1:$P1" "127.0.0.1:$P2" "127.0.0.1:$P3" \
  -- --control "$ISOCK"
ILOG=$WORK_DIR/imp.log

log "every disk is reachable under serno/"
wait_disk "$MNT" evil1
wait_disk "$MNT" evil3
wait_disk "$MNT" $'\xff\xfeS'
cmp "$MNT/serno/evil1" "$WORK_DIR/d1.img" || fail "evil1 reads differ"
cmp "$MNT/serno/evil3" "$WORK_DIR/d3.img" || fail "evil3 reads differ"
cmp "$MNT/serno/"$'\xff\xfeS' "$WORK_DIR/d2.img" || fail "the non-UTF-8 serial reads differ"

log "no forged log line, no raw control character or stray byte in the log"
if grep -a -n '^xdisk-fuse: error: FAKE' "$ILOG"; then fail "a peer forged a log line"; fi
if LC_ALL=C grep -a -n $'[\x01-\x08\x0b-\x1f\x7f]' "$ILOG"; then fail "raw control characters in the log"; fi
if ! iconv -f UTF-8 -t UTF-8 "$ILOG" >/dev/null 2>&1; then fail "the log is not valid UTF-8"; fi
grep -q 'h/d\\x0axdisk-fuse: error: FAKE' "$ILOG" || fail "the newline label is not logged escaped"
grep -q "span '\\\\xff\\\\xfeS'" "$ILOG" || fail "the non-UTF-8 serial is not logged escaped"

log "labels with control characters or '..' get no by-label name, logged once per span"
names=$(cd "$MNT/by-label" && find . -mindepth 1 | sort | tr '\n' ' ')
[ "$names" = "./h ./h/ok2 " ] || fail "by-label holds: $(printf '%q' "$names")"
[ "$(grep -c "span 'evil1': label 'h/d\\\\x0axdisk-fuse: error: FAKE' gets no by-label name" "$ILOG")" = 1 ] ||
  fail "the newline label is not warned about exactly once"
[ "$(grep -c "span 'evil3': label 'x/../../y' gets no by-label name" "$ILOG")" = 1 ] ||
  fail "the '..' label is not warned about exactly once"
[ -e "$MNT/xa0" ] && [ -e "$MNT/xa1" ] && [ -e "$MNT/xa2" ] || fail "xaN names missing"

log "xdiskctl prints no raw control character either"
"$XDISKCTL" --control "$ISOCK" links >"$WORK_DIR/links.txt"
"$XDISKCTL" --control "$ISOCK" disks >"$WORK_DIR/disks.txt"
for f in links disks; do
  if LC_ALL=C grep -a -n $'[\x01-\x08\x0b-\x1f\x7f]' "$WORK_DIR/$f.txt"; then fail "xdiskctl $f: raw control characters"; fi
  if grep -a -n 'FAKE' "$WORK_DIR/$f.txt" | grep -v 'h/d'; then fail "xdiskctl $f: a label starts a line of its own"; fi
done
[ "$(wc -l <"$WORK_DIR/disks.txt")" = 4 ] || fail "xdiskctl disks: $(cat "$WORK_DIR/disks.txt")"

log "SIGTERM: exit 0, unmounted"
stop_ok "$PID" 15
! mountpoint -q "$MNT" || fail "still mounted after SIGTERM"

scan_logs "gets no by-label name|h/d\\\\x0axdisk-fuse: error: FAKE"
log "PASS"
