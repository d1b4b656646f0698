#!/bin/bash
# Link basics: bad options exit 2 and name the option, --help exits 0; a
# listening daemon answers LNK_PING from the independent peer and advertises
# no spans when it exports nothing; a daemon whose keys directory has no
# 127.0.0.1.none refuses the peer (the link is closed, the log says
# 'refused'), and a daemon told to --connect to an address its policy does not
# allow never opens the link; an exporting daemon that --connects to a
# listening daemon brings the link up on both sides and its span arrives; all
# daemons exit 0 on SIGTERM and their logs hold nothing unexpected.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
peer_test python3 timeout


# expect_usage_error OPTION_TEXT ARGS...: exit 2, the message names OPTION_TEXT.
expect_usage_error() {
  local want=$1
  shift
  local rc=0
  timeout 10 "$XDISK" --state-dir "$WORK_DIR/state-bad" "$@" >"$WORK_DIR/bad.out" 2>"$WORK_DIR/bad.err" ||
    rc=$?
  [ "$rc" = 2 ] || fail "'$*': exit status $rc, want 2 ($(cat "$WORK_DIR/bad.err"))"
  grep -qF -- "$want" "$WORK_DIR/bad.err" ||
    fail "'$*': message does not name '$want': $(cat "$WORK_DIR/bad.err")"
  [ ! -s "$WORK_DIR/bad.out" ] || fail "'$*': wrote to stdout"
}

log "bad options exit 2 and name the option"
expect_usage_error "--bogus" --bogus
expect_usage_error "--listen" --listen 1.2.3.4:x
expect_usage_error "'x'" --listen 1.2.3.4:x
expect_usage_error "--export" --export "$WORK_DIR/no-such-image"
expect_usage_error "$WORK_DIR/no-such-image" --export "$WORK_DIR/no-such-image"
truncate -s 1M "$WORK_DIR/small.img"
expect_usage_error "bogus" --export "$WORK_DIR/small.img,bogus=1"
expect_usage_error "--export" --export "$WORK_DIR/small.img,bogus=1"
expect_usage_error "--link-timeout" --listen 127.0.0.1:1 --link-timeout abc

log "--help exits 0 and prints usage on stdout"
timeout 10 "$XDISK" --help >"$WORK_DIR/help.out" 2>"$WORK_DIR/help.err" || fail "--help exit status $?"
grep -q "^Usage: xdisk-fuse" "$WORK_DIR/help.out" || fail "--help: no usage text"
grep -q -- "--listen" "$WORK_DIR/help.out" || fail "--help does not mention --listen"

make_keys "$WORK_DIR/keys" 127.0.0.1
mkdir -p "$WORK_DIR/nokeys/remote"
: >"$WORK_DIR/nokeys/remote/10.9.8.7.none" # some other address, never ours

log "a listening daemon answers pings and advertises nothing"
PA=$(free_port)
start_daemon DA listener "$XDISK" --listen "127.0.0.1:$PA" --keys "$WORK_DIR/keys" \
  --state-dir "$WORK_DIR/state-listener"
wait_listening "$PA" || fail "listener is not listening on $PA"
peer client 127.0.0.1 "$PA" ping --count 5 >"$WORK_DIR/ping.json" || fail "ping: $(cat "$WORK_DIR/ping.json")"
grep -q '"ok": true' "$WORK_DIR/ping.json" || fail "ping: $(cat "$WORK_DIR/ping.json")"
peer client 127.0.0.1 "$PA" spans --wait 1 >"$WORK_DIR/spans.json" || fail "spans failed"
[ ! -s "$WORK_DIR/spans.json" ] || fail "a daemon exporting nothing advertised: $(cat "$WORK_DIR/spans.json")"
wait_for "grep -q \"up: peer 'linux/dmsg-peer'\" '$WORK_DIR/listener.log'" 5 ||
  fail "listener did not log the peer's link as up"

log "a daemon without 127.0.0.1.none refuses the peer"
PR=$(free_port)
start_daemon DR refuser "$XDISK" --listen "127.0.0.1:$PR" --keys "$WORK_DIR/nokeys" \
  --state-dir "$WORK_DIR/state-refuser"
wait_listening "$PR" || fail "refuser is not listening on $PR"
if peer client 127.0.0.1 "$PR" --ready-timeout 5 ping --count 1 >"$WORK_DIR/refused.json" 2>&1; then
  fail "ping through a refused link succeeded: $(cat "$WORK_DIR/refused.json")"
fi
grep -q '"ok": false' "$WORK_DIR/refused.json" || fail "refused ping: $(cat "$WORK_DIR/refused.json")"
wait_for "grep -q 'refused: .*127.0.0.1' '$WORK_DIR/refuser.log'" 5 || fail "refuser did not log 'refused'"
grep -q "up: peer" "$WORK_DIR/refuser.log" && fail "refuser brought a refused link up"
kill -0 "$DR" || fail "refuser died"

log "a daemon does not --connect to an address its own policy refuses"
start_daemon DN noconnect "$XDISK" --connect "127.0.0.1:$PA" --keys "$WORK_DIR/nokeys" \
  --state-dir "$WORK_DIR/state-noconnect"
wait_for "grep -q 'refused by peer policy' '$WORK_DIR/noconnect.log'" 5 ||
  fail "connector did not log its refusal"
nlisten=$(grep -c 'accepted' "$WORK_DIR/listener.log" || true)

log "an exporter --connects to the listener: both sides up, the span arrives"
truncate -s 8M "$WORK_DIR/exp.img"
start_daemon DE exporter "$XDISK" --connect "127.0.0.1:$PA" --keys "$WORK_DIR/keys" \
  --state-dir "$WORK_DIR/state-exporter" --export "$WORK_DIR/exp.img,serno=lb1" --hostname exphost
wait_for "grep -q \"up: peer 'exphost/xdisk-fuse'\" '$WORK_DIR/listener.log'" 10 ||
  fail "listener did not log the exporter's link as up"
wait_for "grep -q \"up: peer '.*/xdisk-fuse' type 1\" '$WORK_DIR/exporter.log'" 10 ||
  fail "exporter did not log its link as up"
wait_for "grep -q \"span 'lb1' from 'exphost/exp.img'\" '$WORK_DIR/listener.log'" 10 ||
  fail "listener did not receive the exporter's span"
# The refusing connector never reached the listener (only the ping, spans and
# exporter links were accepted).
[ "$(grep -c 'accepted' "$WORK_DIR/listener.log")" = $((nlisten + 1)) ] ||
  fail "the policy-refused connector reached the listener anyway"
kill -0 "$DA" && kill -0 "$DE" && kill -0 "$DN" || fail "a daemon died"
peer client 127.0.0.1 "$PA" ping --count 2 >/dev/null || fail "listener stopped answering pings"

log "SIGTERM: every daemon exits 0"
for p in "$DE" "$DN" "$DR" "$DA"; do
  rc=0
  stop_daemon "$p" 10 TERM || rc=$?
  [ "$rc" = 0 ] || fail "pid $p: exit status $rc after SIGTERM"
done
for n in listener refuser noconnect exporter; do
  grep -q "main: exit 0" "$WORK_DIR/$n.log" || fail "$n: no clean exit in the log"
done

# Expected: the refuser's refusal, the connector's own-policy refusal, and a
# reset from the python peer: it shuts its socket down with bytes still
# unread (the daemon's acks), which the kernel turns into an RST.
scan_logs "dropping link: read error: connection reset by peer|warning: link 127\.0\.0\.1:[0-9]+: refused: neither .*/nokeys/remote/127\.0\.0\.1\.(none|pub)|warning: connect 127\.0\.0\.1:$PA: refused by peer policy"
log "PASS"
