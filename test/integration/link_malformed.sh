#!/bin/bash
# Malformed input: for every kind the independent peer can produce (bad magic,
# header/aux CRC, header size 0 and 33 units, aux over 1 MiB, aux_descr, a
# sequence gap, a duplicate CREATE, DELETE and REPLY for unknown transactions,
# a second LNK_CONN, garbage, a frame cut short by EOF, and a half-open peer
# that goes silent) the daemon drops that one link and logs
# 'dropping link: <reason>' naming what was wrong. Half-open relies on our
# liveness rule: the daemon PINGs after 1 s without sending and drops a link
# that sent nothing for --link-timeout (2000 ms here), so a peer holding the
# socket for 4 s without reading or writing must see EOF. A well-behaved link
# stays up through all of it, and afterwards the daemon still answers pings,
# still serves its export (client verify), and exits 0 on SIGTERM.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
peer_test python3 timeout


make_keys "$WORK_DIR/keys" 127.0.0.1
truncate -s 16M "$WORK_DIR/mal.img"
PORT=$(free_port)
start_exporter PID mal "$PORT" "$WORK_DIR/keys" "$WORK_DIR/mal.img,serno=mal1" -- --link-timeout 2000
DLOG=$WORK_DIR/mal.log

log "a well-behaved link that must survive every malformed one"
cat >"$WORK_DIR/bystander.py" <<'EOF'
import os, sys, time
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import dmsg_peer as p
host, port, stop = sys.argv[2], int(sys.argv[3]), sys.argv[4]
l = p.Link.connect(host, port).start()
l.wait_ready()
l.wait_span(10, "mal1")
n = 0
while not os.path.exists(stop):
    l.ping(5.0)          # raises if the link went down
    n += 1
    time.sleep(0.2)
l.close()
print("bystander: %d pings" % n)
EOF
timeout 120 python3 "$WORK_DIR/bystander.py" "$PEER" 127.0.0.1 "$PORT" "$WORK_DIR/stop" \
  >"$WORK_DIR/bystander.out" 2>&1 &
BYSTANDER=$!
cleanup_fn kill "$BYSTANDER"
wait_for "grep -q 'up: peer' '$DLOG'" 10 ||
  fail "bystander link did not come up"

# kind -> what the daemon's reason must mention (ERE, case-insensitive)
declare -A WANT=(
  [bad-magic]='bad magic'
  [bad-hdr-crc]='header crc'
  [bad-aux-crc]='aux crc'
  [size-units-0]='header size'
  [size-units-33]='header size'
  [aux-too-big]='aux too large'
  [aux-descr]='aux.descr'
  [bad-seq]='sequence'
  [dup-create]='duplicate CREATE.*BLK_OPEN'
  [delete-unknown]='unknown transaction.*LNK_ERROR\|DELETE'
  [reply-unknown]='unknown transaction.*LNK_ERROR\|CREATE\|DELETE\|REPLY'
  [second-conn]='second LNK_CONN'
  [garbage]='malformed frame'
  # EOF inside a frame is a short read, fatal like any other framing error.
  [truncated]='truncat|incomplete|short|partial|EOF'
  [half-open]='no data received'
)
KINDS=(bad-magic bad-hdr-crc bad-aux-crc size-units-0 size-units-33 aux-too-big aux-descr
  bad-seq dup-create delete-unknown reply-unknown second-conn garbage truncated half-open)

bad=()
bad_ports=""
for kind in "${KINDS[@]}"; do
  before=$(grep -c 'accepted' "$DLOG" || true)
  t0=$SECONDS
  rc=0
  peer malformed 127.0.0.1 "$PORT" "$kind" --timeout 5 --hold 4 >"$WORK_DIR/$kind.json" 2>&1 || rc=$?
  # The link this run opened: the newest accepted one.
  addr=$(grep 'accepted' "$DLOG" | tail -n 1 | sed -E 's/.*: link ([0-9.]+:[0-9]+): accepted.*/\1/')
  [ "$(grep -c 'accepted' "$DLOG")" = $((before + 1)) ] || fail "$kind: no new link accepted"
  bad_ports+="|${addr#*:}"
  if [ "$rc" != 0 ]; then
    log "$kind: the daemon did not drop the link: $(cat "$WORK_DIR/$kind.json")"
    bad+=("$kind(not dropped)")
    continue
  fi
  # The drop is logged once the link closes; allow a moment for it.
  if ! wait_for "grep -qE 'link $addr: (dropping link|peer closed|.*closing)' '$DLOG'" 5; then
    bad+=("$kind(no log line)")
    continue
  fi
  line=$(grep -E "link $addr: " "$DLOG" | grep -vE 'accepted|up: peer|advertising span' | tail -n 1)
  if ! printf '%s\n' "$line" | grep -qE "warning: link $addr: dropping link: "; then
    log "$kind: drop not logged as 'dropping link: <reason>': $line"
    bad+=("$kind(log)")
  elif ! printf '%s\n' "$line" | grep -qiE "${WANT[$kind]}"; then
    log "$kind: reason does not mention /${WANT[$kind]}/: $line"
    bad+=("$kind(reason)")
  else
    log "$kind: dropped in $((SECONDS - t0)) s: ${line#*dropping link: }"
  fi
  kill -0 "$PID" || fail "the daemon died on $kind"
done

log "half-open: dropped within --link-timeout, not by the peer's own timeout"
grep -qE 'dropping link: no data received for (19|20|21|22|23|24)[0-9]{2} ms' "$DLOG" ||
  bad+=("half-open(timing)")
grep -q '"bytes_received": [1-9]' "$WORK_DIR/half-open.json" ||
  bad+=("half-open(no LNK_CONN or PING sent to a silent peer)")

log "the daemon is alive and still serving"
kill -0 "$PID" || fail "the daemon died"
kill -0 "$BYSTANDER" || fail "the bystander link died: $(cat "$WORK_DIR/bystander.out")"
: >"$WORK_DIR/stop"
rc=0
wait "$BYSTANDER" || rc=$?
[ "$rc" = 0 ] || fail "the bystander link did not survive: $(cat "$WORK_DIR/bystander.out")"
log "$(cat "$WORK_DIR/bystander.out")"
peer client 127.0.0.1 "$PORT" ping --count 5 >"$WORK_DIR/ping.json" || fail "ping: $(cat "$WORK_DIR/ping.json")"
peer client 127.0.0.1 "$PORT" verify --bytes 2MiB >"$WORK_DIR/verify.json" ||
  fail "verify after the malformed links: $(cat "$WORK_DIR/verify.json")"
require_alive "$PID" "after the verify"

log "SIGTERM: exit 0"
stop_ok "$PID" 10

[ ${#bad[@]} -eq 0 ] || fail "malformed kinds not handled as required: ${bad[*]}"
# The drops of the malformed links were each checked above; the python
# peer's resets on close are expected too.
scan_logs "warning: link 127\.0\.0\.1:(${bad_ports#|}): dropping link: |dropping link: read error: connection reset by peer"
log "PASS"
