#!/bin/bash
# A far link that dies mid-transaction, through relay B. Two python block
# peers S (dist 0) and S2 (dist 1) are linked to B and advertise the same
# node; a strict python client K linked to B sees one copy of it (S's,
# dist 1), opens the disk and sends a read that S holds. S's link then
# closes. K must get, in this order: LOSTLINK (LNK_ERROR|DELETE, 0x21) on
# the read, LOSTLINK on the open (children before parents, forwarded by
# B), and the DELETE of the withdrawn copy, with the copy from S2 (dist 2)
# advertised before that DELETE; on it K opens the disk again and its
# resent read is answered. K and S2 see no §5.4 violation. B exits 0.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
python_relay

# Deliberate repeat: each python peer program starts like relay_lostlink's
# and relay_badinput's (import dmsg_peer from the repository, port from argv).
cat >"$WORK_DIR/lostlink.py" <<'PYEOF'
import json, os, sys, time
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import dmsg_peer as p
port = int(sys.argv[2])

def wait_for(pred, what, timeout=20):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.02)

def server(name, dist, hold_reads):
    s = p.Link.connect("127.0.0.1", port, peer_type=p.PEER_BLOCK, peer_mask=0,
                       label="test/" + name, strict=True, name=name)
    held = []
    def on_create(link, t, f):
        if f.basecmd == p.BLK_OPEN:
            t.kind = "open"
            link.send_on(t, p.LNK_ERROR, p.F_CREATE)
            return True
        if f.basecmd == p.BLK_READ:
            if hold_reads:
                held.append(t)
            else:
                _, _, n = p.unpack_io(f.ext)
                link.send_on(t, p.LNK_ERROR, p.F_CREATE | p.F_DELETE, aux=b"\x5a" * n)
            return True
        return False
    s.create_handler = on_create
    s.start()
    s.wait_ready()
    s.my_span = s.open_trans(None, p.LNK_SPAN, kind="span", ext=p.pack_span(
        media_bytes=1 << 20, peer_label="lost/disk", pfs_label="lost1",
        peer_id=p._uuid_from("peer:lost"), pfs_id=p._uuid_from("pfs:lost1"), dist=dist))
    return s, held

k = p.Link.connect("127.0.0.1", port, peer_type=p.PEER_CLIENT, peer_mask=1 << p.PEER_BLOCK,
                   label="test/client", strict=True, name="client")
seen = []  # (msgid, flags, error, basecmd) of every message K receives
dispatch = k._dispatch
k._dispatch = lambda f: (seen.append((f.msgid, f.flags, f.error, f.basecmd)), dispatch(f))[1]
k.start()
k.wait_ready()
s, held = server("s", 0, True)
info = k.wait_span(pfs_label="lost1")
s2, _ = server("s2", 1, False)
time.sleep(0.5)  # S2's span reaches B, which keeps relaying S's (better) copy
with k.lock:
    assert len(k.spans) == 1, k.spans
disk = k.open_disk(info["msgid"])
tk = p.Ticket("read", 0, 4096)
rt = k.open_trans(disk.open_t, p.BLK_READ, p.F_DELETE, ext=p.pack_io(0, 4096), kind="io",
                  ticket=tk)
wait_for(lambda: held, "S holding the read")
mark = len(seen)
s.close()
res = k.wait(tk, 20)
wait_for(lambda: any(m[0] == info["msgid"] and m[1] & p.F_DELETE for m in seen[mark:]),
         "the old copy's DELETE")
after = seen[mark:]
def where(pred):
    return next((i for i, m in enumerate(after) if pred(m)), -1)
lost = p.DMSG_ERR_LOSTLINK
report = dict(
    read_error=res.error, read_synthesized=res.synthesized,
    read_lost=where(lambda m: m[0] == rt.msgid and m[1] & p.F_DELETE and m[2] == lost),
    open_lost=where(lambda m: m[0] == disk.open_t.msgid and m[1] & p.F_DELETE and m[2] == lost),
    new_span=where(lambda m: m[1] & p.F_CREATE and not m[1] & p.F_REPLY),
    old_delete=where(lambda m: m[0] == info["msgid"] and m[1] & p.F_DELETE))
# The resend path: the copy from S2, open again, read answered.
with k.lock:
    left = [(mid, sp) for mid, sp in k.spans.items()]
report["spans_left"] = [sp["dist"] for _, sp in left]
disk2 = k.open_disk(left[0][0])
again = disk2.read(0, 4096, timeout=20)
report["resent_ok"] = again.ok and again.data == b"\x5a" * 4096
report["violations"] = k.violations + s2.violations
print(json.dumps(report), flush=True)
k.close()
s2.close()
PYEOF

python3 "$WORK_DIR/lostlink.py" "$PEER" "$PB" >"$WORK_DIR/lostlink.out" 2>"$WORK_DIR/lostlink.err" ||
  { cat "$WORK_DIR/lostlink.err" >&2; fail "the python peers failed"; }
cat "$WORK_DIR/lostlink.out" >&2
check() { json "$WORK_DIR/lostlink.out" "$1"; }
[ "$(check read_error)" = 33 ] || fail "the held read ended with error $(check read_error), want LOSTLINK"
[ "$(check read_synthesized)" = False ] || fail "K heard no LOSTLINK on the read: B did not forward it"
r=$(check read_lost) o=$(check open_lost) n=$(check new_span) d=$(check old_delete)
[ "$r" -ge 0 ] && [ "$o" -gt "$r" ] || fail "LOSTLINK not on the read ($r) before the open ($o)"
[ "$d" -gt "$o" ] || fail "the copy's DELETE ($d) came before the open's LOSTLINK ($o)"
[ "$n" -ge 0 ] && [ "$n" -lt "$d" ] || fail "the next copy ($n) was not advertised before the DELETE ($d)"
[ "$(check spans_left)" = "[2]" ] || fail "K has copies with dist $(check spans_left), want [2]"
[ "$(check resent_ok)" = True ] || fail "the read on the next copy failed"
[ "$(check violations)" = "[]" ] || fail "violations: $(check violations)"
require_alive "$RELAY" "after the far link died"

stop_all "$RELAY"
scan_logs ""
log "PASS"
