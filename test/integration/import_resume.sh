#!/bin/bash
# An outage seen through xdiskctl, and how soon I/O resumes:
#  - BLOCKED-SINCE is when the oldest waiting request was made: a write
#    made just after the exporter hung (SIGSTOP) shows that moment, not the
#    moment the link was given up (--link-timeout later);
#  - `xdiskctl links` lists the connect target while it is between
#    attempts, with its state ("retrying"), the next attempt and the last
#    error;
#  - while a disk has blocked I/O, the next attempt is never more than a
#    second away, however long the outage (the 5 s backoff cap would
#    otherwise keep the I/O waiting after the exporter is back); the write
#    completes once the exporter returns;
#  - with no I/O waiting, an idle target keeps its backoff (attempts seconds
#    apart).
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
fuse_test python3 dd cmp timeout
need_xdiskctl

SERIAL=resume1
IMG=$WORK_DIR/r.img
ISOCK=$WORK_DIR/imp.sock
head -c $((16 * MIB)) /dev/urandom >"$IMG"
head -c $MIB /dev/urandom >"$WORK_DIR/w1"
start_pair -- --link-timeout 3000 --control "$ISOCK"
restart_exporter() {
  start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
}
now_ms() { date +%s%3N; }
# ctl_json CMD PYEXPR: evaluates PYEXPR with d = the JSON answer of CMD and
# now = the time of the answer in ms.
ctl_json() {
  timeout 20 "$XDISKCTL" --control "$ISOCK" --json "$1" >"$WORK_DIR/ctl.json"
  python3 -c 'import json, sys, time
d = json.load(open(sys.argv[1])); now = time.time() * 1000
print(eval(sys.argv[2]))' "$WORK_DIR/ctl.json" "$2"
}
disk_state() { ctl_json disks '[x["state"] for x in d["disks"] if x["serial"] == "'"$SERIAL"'"][0]'; }
# The connect target's retry delay as seen now, in ms ("none" while it has a
# link, i.e. is connecting or up).
retry_in() {
  ctl_json links '([int(l["next_retry_ms"] - now) for l in d["links"] if l["state"] == "retrying"] or ["none"])[0]'
}

log "the exporter hangs; a write made just after it waits"
kill -STOP "$EXP"
cleanup_fn kill -CONT "$EXP"
sleep 0.5
T1=$(now_ms)
timeout -k 5 120 dd if="$WORK_DIR/w1" of="$MNT/serno/$SERIAL" bs=1M seek=3 oflag=direct conv=notrunc \
  status=none &
DD=$!
cleanup_fn kill -KILL "$DD"
wait_for "[ \"\$(disk_state)\" = blocked ]" 15 || fail "the disk never counted as blocked"
since=$(ctl_json disks '[x["blocked_since_ms"] for x in d["disks"] if x["serial"] == "'"$SERIAL"'"][0]')
log "write made at $T1, BLOCKED-SINCE $since ($((since - T1)) ms later; the link timeout is 3000 ms)"
[ "$since" -le $((T1 + 1500)) ] || fail "BLOCKED-SINCE is $((since - T1)) ms after the write began waiting"

log "the exporter is gone for good; the target shows as retrying, never more than 1 s away"
kill -KILL "$EXP"
wait "$EXP" 2>/dev/null || true
sleep 8
end=$((SECONDS + 3))
seen=0
while [ "$SECONDS" -lt "$end" ]; do
  r=$(retry_in)
  if [ "$r" != none ]; then
    [ "$r" -le 1000 ] || fail "blocked I/O, but the next attempt is $r ms away"
    seen=$((seen + 1))
  fi
done
[ "$seen" -gt 0 ] || fail "the connect target never showed as retrying"
ctl_json links 'd["links"]' >"$WORK_DIR/links.txt"
ctl_json links '[l["last_error"] for l in d["links"] if l["state"] == "retrying"]' | grep -q "connection refused" ||
  fail "no retrying target with its last error: $(cat "$WORK_DIR/links.txt")"
"$XDISKCTL" --control "$ISOCK" links >"$WORK_DIR/links.table"
grep -qE "127\.0\.0\.1:$PORT +out +retrying +next try .*error: .*connection refused" "$WORK_DIR/links.table" ||
  fail "xdiskctl links: $(cat "$WORK_DIR/links.table")"
kill -0 "$DD" 2>/dev/null || fail "the write did not wait"

log "the exporter returns: the write completes"
t0=$(now_ms)
restart_exporter
rc=0
wait "$DD" || rc=$?
[ "$rc" = 0 ] || fail "the write failed ($rc)"
log "the write completed $(($(now_ms) - t0)) ms after the exporter was started again"
cmp <(dd if="$IMG" bs=1M skip=3 count=1 status=none) "$WORK_DIR/w1" || fail "the write did not land"

log "with no I/O waiting, an idle target keeps its backoff"
kill -KILL "$EXP"
wait "$EXP" 2>/dev/null || true
sleep 9
# Over 4 s, the next attempt must at some moment be well over a second away
# (the backoff is at its 5 s cap by now, +-25%).
max=0
end=$((SECONDS + 4))
while [ "$SECONDS" -lt "$end" ]; do
  r=$(retry_in)
  if [ "$r" != none ] && [ "$r" -gt "$max" ]; then max=$r; fi
done
[ "$max" -gt 1500 ] || fail "an idle target retries every ${max} ms or less"
restart_exporter
wait_for "[ \"\$(disk_state)\" = online ]" 15 || fail "the disk did not return"

stop_pair
scan_logs "dropping link|cannot connect: connection refused|no path left|link .*(timed out|lost|closed)|I/O blocks"
log "PASS"
