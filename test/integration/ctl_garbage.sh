#!/bin/bash
# The control socket survives garbage, and only root may use it. Against one
# exporting daemon: a payload that is not a Request gets a MALFORMED reply
# and that connection is closed; another protocol version gets
# VERSION_MISMATCH and a request without a command MALFORMED, and the same
# connection then answers a good request; an oversize length prefix (and
# plain ASCII, which reads as one) gets an error reply and that connection
# is closed; 300 random frames, frames cut short by EOF, 100 pipelined
# requests (answered in order) and 200 connect-and-close probes leave the
# daemon serving; of 24 simultaneous connections 16 are served at once and
# the others as soon as those are done (answered and idle: the daemon closes
# them to make room). Floods from 16 clients that never read
# (garbage: disconnected; bad versions: throttled) keep the daemon's RSS
# under 64 MiB and log at most one warning per connection. A non-root user cannot connect to the 0600
# socket (xdiskctl exits 3); with the mode opened up by hand, SO_PEERCRED
# refuses it (exit 1, "permission denied", logged). A second daemon on the
# same --control path refuses to start (exit 1) while the first runs; a
# socket left by a SIGKILLed daemon is replaced.
# The daemon still serves its export and exits 0 on SIGTERM; its socket goes.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
peer_test python3 setpriv truncate ss stat
need_xdiskctl
id nobody >/dev/null 2>&1 || skip "no user 'nobody'"

# WORK_DIR is 0700; the socket lives where 'nobody' may look, so that the
# socket's own mode is what refuses it.
SOCKDIR=$(mktemp -d /tmp/xdisk-ctl-sock.XXXXXX)
cleanup_fn rm -rf "$SOCKDIR"
chmod 0755 "$SOCKDIR"
SOCK=$SOCKDIR/ctl.sock

make_keys "$WORK_DIR/keys" 127.0.0.1
truncate -s 16M "$WORK_DIR/g.img"
PORT=$(free_port)
start_exporter EXP garbage "$PORT" "$WORK_DIR/keys" "$WORK_DIR/g.img,serno=garb1" -- --control "$SOCK"
wait_for "[ -S '$SOCK' ]" 10 || fail "no control socket"

cat >"$WORK_DIR/garbage.py" <<'EOF'
import os, random, socket, struct, sys, time

path, daemon_pid, daemon_log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
STATUS = bytes([0x08, 0x01, 0x12, 0x00])        # Request{version: 1, status: {}}
V2 = bytes([0x08, 0x02, 0x12, 0x00])            # the same at version 2

def frame(p):
    return struct.pack(">I", len(p)) + p

def conn():
    # A full listen backlog answers EAGAIN at once; a bounded retry waits
    # for the daemon to accept what is queued.
    for attempt in range(500):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            time.sleep(0.01)
    raise RuntimeError("listen backlog stayed full")

def read_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("EOF after %d of %d bytes" % (len(b), n))
        b += c
    return b

def varint(b, i):
    v, shift = 0, 0
    while True:
        x = b[i]; i += 1
        v |= (x & 0x7f) << shift; shift += 7
        if not x & 0x80:
            return v, i

def fields(b):
    """Top-level protobuf fields: {number: value} (bytes for length-delimited)."""
    out, i = {}, 0
    while i < len(b):
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 2:
            n, i = varint(b, i); v = b[i:i + n]; i += n
        else:
            raise ValueError("wire type %d" % wt)
        out[num] = v
    return out

def response(s):
    n = struct.unpack(">I", read_exact(s, 4))[0]
    assert n <= 1 << 20, n
    f = fields(read_exact(s, n))
    assert f.get(1) == 1, "response version %r" % f.get(1)
    err = None
    if 2 in f:
        e = fields(f[2])
        err = (e.get(1, 0), e.get(2, b"").decode())
    return f, err

MALFORMED, VERSION_MISMATCH, PERMISSION_DENIED = 2, 1, 5

def expect_eof(s):
    s.settimeout(10)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass

def ok_status(s):
    s.sendall(frame(STATUS))
    f, err = response(s)
    assert err is None, err
    assert 3 in f, "no status result"

# 1. not a Request: an error reply, then EOF
s = conn()
s.sendall(frame(b"\xff\xff\xff\xff\x0f"))
f, err = response(s)
assert err and err[0] == MALFORMED and "does not parse" in err[1], err
expect_eof(s)
s.close()
# 2. another version, and no command: error replies on a usable connection
s = conn()
s.sendall(frame(V2))
f, err = response(s)
assert err and err[0] == VERSION_MISMATCH and "version 2" in err[1], err
ok_status(s)
s.sendall(frame(bytes([0x08, 0x01])))
f, err = response(s)
assert err and err[0] == MALFORMED, err
ok_status(s)
s.close()
print("malformed and version: ok")

# 3. oversize prefixes: an error reply, then EOF
for prefix in (b"\x7f\xff\xff\xff", b"\x00\x10\x00\x01", b"GET / HTTP/1.1\r\n\r\n"):
    s = conn()
    s.sendall(prefix)
    f, err = response(s)
    assert err and err[0] == MALFORMED and "exceeds" in err[1], err
    expect_eof(s)
    s.close()
print("oversize: ok")

# 4. random frames: each gets some reply; the stream stays usable unless
# the payload did not parse, which closes it
rnd = random.Random(1234)
s = conn()
closed = 0
for i in range(300):
    p = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 64)))
    s.sendall(frame(p))
    f, err = response(s)
    if err and err[0] == MALFORMED and "does not parse" in err[1]:
        expect_eof(s)
        s.close()
        s = conn()
        closed += 1
ok_status(s)
s.close()
assert 0 < closed < 300, closed
print("random frames: ok (%d closed)" % closed)

# 5. frames cut short by EOF, at every length up to the whole frame
whole = frame(STATUS)
for cut in range(len(whole)):
    s = conn()
    s.sendall(whole[:cut])
    s.shutdown(socket.SHUT_WR)
    expect_eof(s)
    s.close()
print("truncated: ok")

# 6. pipelined: 100 requests in one write, 100 answers in order
s = conn()
s.sendall(frame(STATUS) * 50 + frame(V2) + frame(STATUS) * 49)
for i in range(100):
    f, err = response(s)
    if i == 50:
        assert err and err[0] == VERSION_MISMATCH, (i, err)
    else:
        assert err is None and 3 in f, (i, err)
s.close()
print("pipelined: ok")

# 7. probes: connect and close
for i in range(200):
    conn().close()
# Accepting is first come, first served: once this answers, every probe was
# accepted; a moment later their EOFs have closed them.
s = conn()
ok_status(s)
s.close()
time.sleep(0.5)
print("probes: ok")

# 8. more connections than the daemon serves at once: 16 are served, the
# others wait in the backlog and are answered as the first ones are done
# (the daemon closes a connection that got its reply and sent nothing more
# to make room), so all are answered without anyone closing
import select
held = [conn() for _ in range(24)]
for s in held:
    s.sendall(frame(STATUS))
time.sleep(1.0)
ready = [s for s in held if select.select([s], [], [], 0)[0]]
assert len(ready) == 24, len(ready)
for s in held:
    f, err = response(s)
    assert err is None, err
    s.close()
print("connection limit: ok")

# 9. floods from clients that never read their replies
def rss_kib():
    with open("/proc/%d/status" % daemon_pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")

def warnings():
    with open(daemon_log, errors="replace") as f:
        return sum(1 for l in f if "warning" in l)

def flood(payload, seconds):
    """16 clients send `payload` as fast as the daemon takes it, never
    reading. Returns how many of them the daemon disconnected."""
    socks = [conn() for _ in range(16)]
    for s in socks:
        s.setblocking(False)
    chunk = payload * (65536 // len(payload))
    live = set(socks)
    end = time.time() + seconds
    while live and time.time() < end:
        for s in list(live):
            try:
                s.send(chunk)
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                live.discard(s)
        time.sleep(0.001)
    rss = rss_kib()
    for s in socks:
        s.close()
    return 16 - len(live), rss

rss0, warn0 = rss_kib(), warnings()
gone, rss = flood(frame(b"\xff\xff\xff\xff\x0f"), 3)
assert gone == 16, "%d of 16 garbage flooders disconnected" % gone
assert rss < 64 * 1024, "RSS %d KiB after the garbage flood" % rss
gone, rss = flood(frame(V2), 3)
assert rss < 64 * 1024, "RSS %d KiB after the bad-version flood" % rss
time.sleep(0.5)
nwarn = warnings() - warn0
assert nwarn <= 32, "%d warnings for 32 flooding connections" % nwarn
s = conn()
ok_status(s)
s.close()
print("floods: ok (RSS %d -> %d KiB, %d warnings)" % (rss0, rss_kib(), nwarn))
EOF
log "garbage on the control socket"
timeout 120 python3 "$WORK_DIR/garbage.py" "$SOCK" "$EXP" "$WORK_DIR/garbage.log" ||
  fail "garbage.py failed"
require_alive "$EXP" "after the garbage"
"$XDISKCTL" --control "$SOCK" status >/dev/null || fail "status after the garbage"

log "a non-root user cannot connect to the 0600 socket"
rc=0
setpriv --reuid=65534 --regid=65534 --clear-groups "$XDISKCTL" --control "$SOCK" status \
  >"$WORK_DIR/out" 2>"$WORK_DIR/err" || rc=$?
[ "$rc" = 3 ] || fail "nobody: exit $rc, want 3 ($(cat "$WORK_DIR/err"))"
grep -qi 'permission denied' "$WORK_DIR/err" || fail "nobody: $(cat "$WORK_DIR/err")"

log "with the mode opened up, SO_PEERCRED refuses it"
chmod 0666 "$SOCK"
rc=0
setpriv --reuid=65534 --regid=65534 --clear-groups "$XDISKCTL" --control "$SOCK" status \
  >"$WORK_DIR/out" 2>"$WORK_DIR/err" || rc=$?
chmod 0600 "$SOCK"
[ "$rc" = 1 ] || fail "nobody via 0666: exit $rc, want 1 ($(cat "$WORK_DIR/err"))"
grep -q 'permission denied: uid 65534' "$WORK_DIR/err" || fail "nobody: $(cat "$WORK_DIR/err")"
grep -q 'control uid 65534 pid [0-9]*: refused' "$WORK_DIR/garbage.log" || fail "refusal not logged"
"$XDISKCTL" --control "$SOCK" status >/dev/null || fail "root status after the refusal"

log "a second daemon on the same socket path refuses to start"
PORT2=$(free_port)
rc=0
timeout 20 "$XDISK" --listen "127.0.0.1:$PORT2" --keys "$WORK_DIR/keys" \
  --state-dir "$WORK_DIR/state-second" --control "$SOCK" >"$WORK_DIR/second.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "second daemon: exit $rc, want 1: $(cat "$WORK_DIR/second.out")"
grep -q 'in use by another running daemon' "$WORK_DIR/second.out" ||
  fail "second daemon: $(cat "$WORK_DIR/second.out")"
[ -S "$SOCK" ] || fail "the second daemon removed the first one's socket"
"$XDISKCTL" --control "$SOCK" status >/dev/null || fail "status after the second daemon"

log "a socket left by a SIGKILLed daemon is replaced"
SOCK3=$SOCKDIR/stale.sock
PORT3=$(free_port)
start_exporter KILLED killed "$PORT3" "$WORK_DIR/keys" -- --control "$SOCK3"
wait_for "[ -S '$SOCK3' ]" 10 || fail "no socket $SOCK3"
kill -KILL "$KILLED"
wait "$KILLED" 2>/dev/null || true
[ -S "$SOCK3" ] || fail "SIGKILL removed the socket?"
start_exporter AGAIN again "$PORT3" "$WORK_DIR/keys" -- --control "$SOCK3"
wait_for "grep -q 'removing stale socket' '$WORK_DIR/again.log'" 10 || fail "stale socket not replaced"
"$XDISKCTL" --control "$SOCK3" status >/dev/null || fail "status on the replaced socket"
stop_daemon "$AGAIN" 15 TERM || fail "the second exporter did not exit 0"
[ ! -e "$SOCK3" ] || fail "$SOCK3 left behind"

log "the daemon still serves its export"
peer client 127.0.0.1 "$PORT" --serial garb1 verify --bytes 4MiB >"$WORK_DIR/verify.json" ||
  fail "client verify after the garbage: $(tail -3 "$WORK_DIR/verify.json")"
"$XDISKCTL" --control "$SOCK" --json disks | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert [e["serial"] for e in d["exports"]] == ["garb1"], d' || fail "export list"

log "SIGTERM: exit 0, socket removed"
stop_ok "$EXP" 15
[ ! -e "$SOCK" ] || fail "$SOCK left behind"
scan_logs 'control uid [0-9]+ pid [0-9]+: (dropping connection|bad request|refused)'
log "PASS"
