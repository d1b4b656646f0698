#!/bin/bash
# 200 clients that connect to the control socket and then hang (never send,
# or send one request and never again) do not lock the operator out:
# xdiskctl keeps answering (the daemon closes the connection idle for
# longest when all 16 are taken, and xdiskctl retries a full backlog within
# its --timeout), and connections that never sent a byte are closed after a
# few seconds. The daemon still exits 0 on SIGTERM.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
peer_test python3 truncate timeout
need_xdiskctl

truncate -s 1M "$WORK_DIR/f.img"
make_keys "$WORK_DIR/keys" 127.0.0.1
SOCK=$WORK_DIR/ctl.sock
PORT=$(free_port)
start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$WORK_DIR/f.img,serno=flood1" -- --control "$SOCK"
wait_for "[ -S '$SOCK' ]" 10 || fail "no control socket"

# The hung clients: 150 silent ones, 50 that send one STATUS request and
# never read or send again. They hold their sockets until told to stop
# (the file $WORK_DIR/stop), then report how many the daemon closed.
cat >"$WORK_DIR/hang.py" <<'PYEOF'
import os, socket, struct, sys, time
path, stop = sys.argv[1], sys.argv[2]
# A StatusCommand request: version 1 (field 1), status {} (field 2).
req = bytes([0x08, 0x01, 0x12, 0x00])
frame = struct.pack(">I", len(req)) + req
socks, again = [], 0
for i in range(200):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
    except BlockingIOError:
        again += 1
        s.close()
        continue
    if i % 4 == 0:
        s.send(frame)
    socks.append(s)
print("connected %d, EAGAIN %d" % (len(socks), again), flush=True)
while not os.path.exists(stop):
    time.sleep(0.1)
closed = 0
for s in socks:
    try:
        while True:
            b = s.recv(65536)
            if not b:
                closed += 1
                break
    except BlockingIOError:
        pass
    except ConnectionResetError:
        closed += 1
print("closed by the daemon %d of %d" % (closed, len(socks)), flush=True)
PYEOF
python3 "$WORK_DIR/hang.py" "$SOCK" "$WORK_DIR/stop" >"$WORK_DIR/hang.out" 2>&1 &
HANG=$!
cleanup_fn _kill_quietly "$HANG"
wait_for "grep -q connected '$WORK_DIR/hang.out'" 20 || fail "the hung clients did not connect"
log "hung clients: $(cat "$WORK_DIR/hang.out")"

log "xdiskctl keeps answering while they hang"
for i in 1 2 3 4 5; do
  rc=0
  timeout 20 "$XDISKCTL" --control "$SOCK" --timeout 5 status >"$WORK_DIR/st.out" 2>&1 || rc=$?
  [ "$rc" = 0 ] || fail "xdiskctl status #$i exited $rc: $(cat "$WORK_DIR/st.out")"
done

log "silent connections are closed after a few seconds"
sleep 4
touch "$WORK_DIR/stop"
wait_exit "$HANG" 20 || fail "the hung clients did not finish"
log "$(tail -n 1 "$WORK_DIR/hang.out")"
closed=$(sed -n 's/^closed by the daemon \([0-9]*\) of \([0-9]*\)$/\1/p' "$WORK_DIR/hang.out")
total=$(sed -n 's/^closed by the daemon \([0-9]*\) of \([0-9]*\)$/\2/p' "$WORK_DIR/hang.out")
[ -n "$closed" ] && [ "$closed" -ge $((total - 16)) ] || fail "only $closed of $total hung connections closed"

log "SIGTERM: exit 0"
stop_ok "$EXP" 15
[ ! -e "$SOCK" ] || fail "the socket is still there"
scan_logs
log "PASS"
