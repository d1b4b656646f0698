#!/bin/bash
# Bad spans on the import side: an importing daemon connected to several
# python block servers refuses, with a warning each and without crashing, a
# span with an empty serial, a span for a zero-size disk, and a second span
# claiming an already imported serial with a different size (the first disk
# stays usable); it imports a span whose serial and label are 100 characters
# long under names cut to 63 characters (serno/<first 63>, by-label/<first
# 63>), and serves it and a plain good disk (dd reads match the images). It
# exits 0 on SIGTERM and the mount is gone. The python oracle refuses to send
# empty or over-long names, so this test lifts that check in a wrapper.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
fuse_test python3 timeout mountpoint cmp


# The server CLI, with BlockServer's name checks lifted.
cat >"$WORK_DIR/srv.py" <<'EOF'
import os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import dmsg_peer as p
orig = p.BlockServer.__init__
def init(self, image_path, serial, label, blksize=512, verbose=False):
    orig(self, image_path, "placeholder", "placeholder/x", blksize, verbose)
    self.serial, self.label = serial, label
p.BlockServer.__init__ = init
sys.exit(p.main(sys.argv[2:]))
EOF

# start_server VAR NAME PORT IMAGE SERIAL LABEL: a python block server
# listening on PORT; its log is not scanned (it logs stats like io_error=0).
start_server() {
  start_peer_server "$1" "$WORK_DIR/$2.log" "$3" python3 "$WORK_DIR/srv.py" "$PEER" server \
    --listen "127.0.0.1:$3" --image "$4" --serial "$5" --label "$6" --fail-on-violation
  log "started server $2 (pid ${!1}) on $3, serial '$5'"
}

make_keys "$WORK_DIR/keys" 127.0.0.1
head -c $((4 * MIB)) /dev/urandom >"$WORK_DIR/good.img"
head -c $((2 * MIB)) /dev/urandom >"$WORK_DIR/empty.img"
head -c $((3 * MIB)) /dev/urandom >"$WORK_DIR/long.img"
: >"$WORK_DIR/zero.img"
head -c $((4 * MIB)) /dev/urandom >"$WORK_DIR/dupa.img"
head -c $((8 * MIB)) /dev/urandom >"$WORK_DIR/dupb.img"

LONG_SERIAL=L$(printf '%099d' 7)                    # 100 characters
LONG_LABEL=longhost/$(printf 'd%.0s' $(seq 1 91))   # 100 characters
CUT_SERIAL=${LONG_SERIAL:0:63}
CUT_LABEL=${LONG_LABEL:0:63}

P_GOOD=$(free_port)
P_EMPTY=$(free_port)
P_LONG=$(free_port)
P_ZERO=$(free_port)
P_DUPA=$(free_port)
P_DUPB=$(free_port)
start_server S_GOOD good "$P_GOOD" "$WORK_DIR/good.img" good1 pyhost/good
start_server S_EMPTY empty "$P_EMPTY" "$WORK_DIR/empty.img" "" pyhost/empty
start_server S_LONG long "$P_LONG" "$WORK_DIR/long.img" "$LONG_SERIAL" "$LONG_LABEL"
start_server S_ZERO zero "$P_ZERO" "$WORK_DIR/zero.img" zero0 pyhost/zero
start_server S_DUPA dupa "$P_DUPA" "$WORK_DIR/dupa.img" dup1 pyhost/dupa

# The second claimant of dup1 is not listening yet: the importer keeps
# retrying it, and it comes up once the first dup1 is imported, so which
# one is "first" is not a race.
start_importer PID imp "$MNT" "$WORK_DIR/keys" "127.0.0.1:$P_GOOD" "127.0.0.1:$P_EMPTY" \
  "127.0.0.1:$P_LONG" "127.0.0.1:$P_ZERO" "127.0.0.1:$P_DUPA" "127.0.0.1:$P_DUPB"
ILOG=$WORK_DIR/imp.log

log "the good disks appear"
wait_disk "$MNT" good1
wait_disk "$MNT" dup1
wait_disk "$MNT" "$CUT_SERIAL"
[ "$(stat -c %s "$MNT/serno/good1")" = $((4 * MIB)) ] || fail "good1 size"
[ "$(stat -c %s "$MNT/serno/dup1")" = $((4 * MIB)) ] || fail "dup1 size"
[ "$(stat -c %s "$MNT/serno/$CUT_SERIAL")" = $((3 * MIB)) ] || fail "long serial size"

log "an empty serial and a zero-size disk are refused with a warning"
wait_for "grep -q \"warning: .*not importing span '' .*empty serial\" '$ILOG'" 10 ||
  fail "no warning for the empty serial"
wait_for "grep -q \"warning: .*not importing span 'zero0'.*zero-size\" '$ILOG'" 10 ||
  fail "no warning for the zero-size disk"
[ ! -e "$MNT/serno/zero0" ] || fail "the zero-size disk was imported"

log "names cut to 63 characters"
[ -e "$MNT/by-label/$CUT_LABEL" ] || fail "by-label/$CUT_LABEL missing: $(cd "$MNT" && find by-label)"
[ "$(stat -c %i "$MNT/by-label/$CUT_LABEL")" = "$(stat -c %i "$MNT/serno/$CUT_SERIAL")" ] ||
  fail "the cut label and serial are different inodes"
[ ! -e "$MNT/serno/$LONG_SERIAL" ] || fail "the 100-character serial exists"
grep -q "warning: .*span '$CUT_SERIAL': names cut to 63 characters" "$ILOG" ||
  fail "no warning about the cut names"

log "a second dup1 with another size is refused"
start_server S_DUPB dupb "$P_DUPB" "$WORK_DIR/dupb.img" dup1 pyhost/dupb
wait_for "grep -q \"warning: .*not importing span 'dup1': size $((8 * MIB))/512 differs\" '$ILOG'" 15 ||
  fail "no warning for the second dup1"
[ "$(stat -c %s "$MNT/serno/dup1")" = $((4 * MIB)) ] || fail "dup1 changed size"
[ ! -e "$MNT/by-label/pyhost/dupb" ] || fail "the refused dup1 got a label"

log "the imported disks work"
# Exactly three disks: good1, dup1 and the long one.
names=$(cd "$MNT/serno" && ls | sort | tr '\n' ' ')
[ "$names" = "$(printf '%s\n' good1 dup1 "$CUT_SERIAL" | sort | tr '\n' ' ')" ] || fail "serno/ holds: $names"
cmp "$MNT/serno/good1" "$WORK_DIR/good.img" || fail "good1 reads differ from its image"
cmp "$MNT/serno/dup1" "$WORK_DIR/dupa.img" || fail "dup1 does not read the first claimant's image"
cmp "$MNT/serno/$CUT_SERIAL" "$WORK_DIR/long.img" || fail "the long-serial disk reads differ"
dd if="$MNT/by-label/pyhost/dupa" of=/dev/null bs=64k iflag=direct status=none || fail "O_DIRECT read"
head -c $MIB /dev/urandom >"$WORK_DIR/w"
dd if="$WORK_DIR/w" of="$MNT/serno/dup1" bs=64k seek=16 oflag=direct conv=notrunc,fsync status=none ||
  fail "write to dup1"
cmp <(dd if="$WORK_DIR/dupa.img" bs=1M skip=1 count=1 status=none) "$WORK_DIR/w" ||
  fail "the write to dup1 did not reach the first claimant"
cmp -s <(head -c $MIB "$WORK_DIR/dupb.img") "$WORK_DIR/w" && fail "impossible"
kill -0 "$PID" || fail "the importer died"

log "SIGTERM: exit 0, unmounted"
stop_importer_quietly "$PID" "$ILOG"

log "no server saw a protocol violation"
for v in S_GOOD S_EMPTY S_LONG S_ZERO S_DUPA S_DUPB; do
  rc=0
  stop_daemon "${!v}" 10 TERM || rc=$?
  [ "$rc" = 0 ] || fail "server ${v#S_}: exit status $rc: $(tail -n 3 "$WORK_DIR/$(tr 'A-Z' 'a-z' <<<"${v#S_}").log")"
done

scan_logs "warning: link 127\.0\.0\.1:[0-9]+: (not importing span '(|zero0|dup1)'|span '$CUT_SERIAL': names cut to 63)|warning: link 127\.0\.0\.1:$P_DUPB: cannot connect: connection refused \(will retry\)"
log "PASS"
