#!/bin/bash
# Hostile span input on a relay. A python peer (the independent oracle's
# Link) connected to relay B advertises 3000 spans, 5 spans with dist 15 and
# 5 with dist 16, flaps one span (open, DELETE) 2000 times as fast as it
# can, sends two spans whose reserved bytes (and, for a HAMMER2 span, media
# union) are noise, then 1100 more spans: past B's limit of 4096 spans per
# link by 16. A strict python client on B's other side (it drops the link
# on any §5.4 violation) must end up with exactly the 3000 + 5 + 2 + 1084
# relayable spans, the dist-15 ones arriving with dist 16, none of dist 16
# relayed, no flapping span left, the two noisy spans byte for byte as sent
# but for dist and rnss; B logs the refusal once, stays up with bounded
# memory, and once the flooder goes the client sees every copy withdrawn.
# B exits 0 on SIGTERM.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
python_relay

# Deliberate repeat: each python peer program starts like relay_lostlink's
# and relay_badinput's (import dmsg_peer from the repository, port from argv).
cat >"$WORK_DIR/flood.py" <<'EOF'
import json, os, sys, time
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import dmsg_peer as p
port = int(sys.argv[2])
ctl = sys.argv[3]  # a file: "go" lines from the shell, one per phase

def wait_for(pred, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.05)

# The client keeps each span's bytes as received.
unpack = p.unpack_span
p.unpack_span = lambda ext: dict(unpack(ext), raw=bytes(ext).hex())
client = p.Link.connect("127.0.0.1", port, peer_type=p.PEER_CLIENT,
                        peer_mask=(1 << p.PEER_BLOCK) | (1 << p.PEER_HAMMER2), label="test/client", strict=True,
                        name="client").start()
client.wait_ready()
flood = p.Link.connect("127.0.0.1", port, peer_type=p.PEER_BLOCK, peer_mask=0,
                       label="test/flood", strict=True, name="flood").start()
flood.wait_ready()

def span(serial, dist=0):
    return p.pack_span(media_bytes=1 << 20, peer_label="flood/" + serial, pfs_label=serial,
                       peer_id=p._uuid_from("peer:flood"), pfs_id=p._uuid_from("pfs:" + serial),
                       dist=dist)

for i in range(3000):
    flood.open_trans(None, p.LNK_SPAN, ext=span("s%04d" % i), kind="span")
for i in range(5):
    flood.open_trans(None, p.LNK_SPAN, ext=span("edge%d" % i, 15), kind="span")
    flood.open_trans(None, p.LNK_SPAN, ext=span("far%d" % i, 16), kind="span")
for _ in range(2000):
    t = flood.open_trans(None, p.LNK_SPAN, ext=span("flap"), kind="span")
    flood.send_on(t, p.LNK_ERROR, p.F_DELETE)
# Noise where the relay must not look: reserved02 (0x28), the media union
# after media_bytes (0x44..0x70), and a HAMMER2 span's whole media union.
noisy = {}
for name, ptype in (("noisyblk", p.PEER_BLOCK), ("noisyh2", p.PEER_HAMMER2)):
    b = bytearray(span(name))
    b[0x21] = ptype
    noise = os.urandom(0x70)
    lo = 0x38 if ptype == p.PEER_HAMMER2 else 0x44
    b[0x28:0x30] = noise[0x28:0x30]
    b[lo:0x70] = noise[lo:0x70]
    noisy[name] = bytes(b)
    flood.open_trans(None, p.LNK_SPAN, ext=noisy[name], kind="span")
for i in range(1100):
    flood.open_trans(None, p.LNK_SPAN, ext=span("c%04d" % i), kind="span")

def relayed():
    with client.lock:
        return list(client.spans.values())
wait_for(lambda: len(relayed()) >= 4091 and not any(s["pfs_label"] == "flap" for s in relayed()),
         "4091 relayed spans")
time.sleep(1)
got = relayed()
by = {s["pfs_label"]: s for s in got}
report = dict(spans=len(got), far=sum(1 for s in got if s["pfs_label"].startswith("far")),
              flap=sum(1 for s in got if s["pfs_label"] == "flap"),
              edge_dist=sorted({s["dist"] for s in got if s["pfs_label"].startswith("edge")}),
              flood_dist=sorted({s["dist"] for s in got if s["pfs_label"].startswith("s")}),
              # Bytes that differ from what the flooder sent, outside dist
              # and rnss (0x30..0x38).
              noisy_diff=sorted(
                  i for name, sent in noisy.items() for i, (x, y) in
                  enumerate(zip(bytes.fromhex(by[name]["raw"]) if name in by else b"", sent))
                  if x != y and not 0x30 <= i < 0x38) if all(n in by for n in noisy) else "missing",
              client_violations=client.violations)
print(json.dumps(report), flush=True)
# The shell checks the relay now; it says "go" to end the flooder.
wait_for(lambda: os.path.exists(ctl), "the shell", timeout=60)
flood.close()
wait_for(lambda: len(relayed()) == 0, "every copy withdrawn")
client._raise_if_dead()
print(json.dumps(dict(after=len(relayed()), client_violations=client.violations)), flush=True)
client.close()
EOF

python3 "$WORK_DIR/flood.py" "$PEER" "$PB" "$WORK_DIR/go" >"$WORK_DIR/flood.out" 2>"$WORK_DIR/flood.err" &
FLOOD=$!
cleanup_fn _kill_quietly "$FLOOD"
wait_for "[ -s '$WORK_DIR/flood.out' ] || ! kill -0 $FLOOD 2>/dev/null" 120 || fail "the flood did not end"
cat "$WORK_DIR/flood.out" >&2
[ -s "$WORK_DIR/flood.out" ] || { cat "$WORK_DIR/flood.err" >&2; fail "the flooder failed"; }
require_alive "$RELAY" "under the span flood"
check() { json "$WORK_DIR/flood.out" "$1"; }
[ "$(check spans)" = 4091 ] || fail "the client got $(check spans) spans, want 4091"
[ "$(check noisy_diff)" = "[]" ] || fail "relayed span bytes changed: $(check noisy_diff)"
[ "$(grep -c "refusing spans beyond the relay's limit of 4096 per link" "$WORK_DIR/b.log")" = 1 ] ||
  fail "B did not log the span limit once"
[ "$(check far)" = 0 ] || fail "spans with dist 16 were relayed"
[ "$(check flap)" = 0 ] || fail "the flapping span is still relayed"
[ "$(check edge_dist)" = "[16]" ] || fail "dist-15 spans arrived with $(check edge_dist)"
[ "$(check flood_dist)" = "[1]" ] || fail "the flood's spans arrived with $(check flood_dist)"
[ "$(check client_violations)" = "[]" ] || fail "the client saw violations: $(check client_violations)"
n=$(CTL=$WORK_DIR/b.sock ctl --json spans | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["relayed"]))')
[ "$n" = 4091 ] || fail "xdiskctl spans lists $n copies, want 4091"
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$RELAY/status")
log "B relays $n spans, VmRSS ${rss} kB"
[ "$rss" -lt $((200 * 1024)) ] || fail "B uses ${rss} kB"

touch "$WORK_DIR/go"
wait_exit "$FLOOD" 60 || { cat "$WORK_DIR/flood.err" >&2; fail "the flooder failed after the flood"; }
tail -n1 "$WORK_DIR/flood.out" >&2
require_alive "$RELAY" "after the flooder left"
n=$(CTL=$WORK_DIR/b.sock ctl --json spans | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["relayed"]))')
[ "$n" = 0 ] || fail "xdiskctl spans still lists $n copies"

stop_all "$RELAY"
scan_logs "refusing spans beyond the relay's limit"
log "PASS"
