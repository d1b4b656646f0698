#!/bin/bash
# xdiskctl against a running pair (an exporter and an importer, each with its
# own --control socket): the socket is 0600; status, links, disks and stats
# answer in tables and in JSON, which the test parses; export add and remove
# at runtime show up and go away on the importing side; export errors exit 1
# with the daemon's message, usage errors exit 2 (also a --control path too
# long for a socket), an absent daemon exits 3; an export path that is not
# UTF-8 shows as '?' in tables and U+FFFD in JSON;
# disconnect takes the importer's link down with the disk held open, so
# `disks` shows it blocked (ISO time, queued read) until connect brings the
# link back and the read completes. SIGHUP: the exporter re-parses its
# command line (and its --config file when the daemon has --config): a
# runtime-added export not in the configuration goes, an export added to the
# file comes, the untouched export and the link carrying it stay (same
# inode, same link since); a configuration that does not parse changes
# nothing and is logged. Both daemons exit 0 on SIGTERM, the sockets go.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
fuse_test fusermount3 mountpoint dd truncate python3 ss stat
need_xdiskctl

ESOCK=$WORK_DIR/exp.sock
ISOCK=$WORK_DIR/imp.sock
for n in 1 2 3 4; do truncate -s $((64 * MIB)) "$WORK_DIR/d$n.img"; done

# ctl SOCK ARGS...: xdiskctl with its exit status in $RC, stdout in $OUT,
# stderr in $ERR; never fails the script by itself.
ctl() {
  local sock=$1
  shift
  RC=0
  "$XDISKCTL" --control "$sock" "$@" >"$WORK_DIR/out" 2>"$WORK_DIR/err" || RC=$?
  OUT=$(cat "$WORK_DIR/out")
  ERR=$(cat "$WORK_DIR/err")
}
# ctl_ok SOCK ARGS...: same, failing the test unless it exits 0.
ctl_ok() {
  ctl "$@"
  [ "$RC" = 0 ] || fail "xdiskctl $* exited $RC: $ERR"
}
# jq_py EXPR: evaluates a Python expression over the JSON object `d` in the
# last xdiskctl output, which must be exactly one line.
jq_py() {
  python3 -c '
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, "want one line of JSON, got %d" % len(lines)
d = json.loads(lines[0])
print(eval(sys.argv[2]))' "$WORK_DIR/out" "$1"
}
# disk_is SERIAL PYEXPR: true if the importer's disk SERIAL, as `x`, passes.
disk_is() {
  "$XDISKCTL" --control "$ISOCK" --json disks | python3 -c '
import json, sys
d = json.load(sys.stdin)
x = [x for x in d["disks"] if x["serial"] == sys.argv[1]][0]
sys.exit(0 if eval(sys.argv[2]) else 1)' "$1" "$2"
}
expect() {  # expect EXPR VALUE
  local got
  got=$(jq_py "$1") || fail "cannot evaluate $1 on: $OUT"
  [ "$got" = "$2" ] || fail "$1 is '$got', want '$2' in: $OUT"
}

# The exporter's exports come from a configuration file when the daemon has
# --config, so that SIGHUP can be tested with a changed file; otherwise from
# --export, and SIGHUP re-parses the unchanged command line.
HAVE_CONFIG=0
if "$XDISK" --help | grep -q -- '--config FILE'; then HAVE_CONFIG=1; fi
CONF=$WORK_DIR/exp.conf
PORT=$(free_port)
make_keys "$WORK_DIR/keys" 127.0.0.1
if [ "$HAVE_CONFIG" = 1 ]; then
  printf 'export = %s\n' "$WORK_DIR/d1.img,serno=ctl1" >"$CONF"
  start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" -- --config "$CONF" --control "$ESOCK"
else
  log "this xdisk-fuse has no --config: SIGHUP re-parses the command line only"
  start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$WORK_DIR/d1.img,serno=ctl1" -- \
    --control "$ESOCK"
fi
start_importer IMP importer "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- --control "$ISOCK"
wait_disk "$MNT" ctl1

log "the control sockets are root's, mode 0600"
for s in "$ESOCK" "$ISOCK"; do
  [ -S "$s" ] || fail "$s is not a socket"
  [ "$(stat -c '%a %U' "$s")" = "600 root" ] || fail "$s: $(stat -c '%a %U' "$s")"
done

log "status"
ctl_ok "$ISOCK" status
grep -q '^links: 1 (1 up)' <<<"$OUT" || fail "status: $OUT"
grep -q '^disks: 1 (1 online, 0 blocked, 0 offline)' <<<"$OUT" || fail "status: $OUT"
grep -q "^mount  *$MNT\$" <<<"$OUT" || fail "status mount line: $OUT"
ctl_ok "$ISOCK" --json status
expect 'd["ok"]' True
expect 'd["version"]' 1
expect 'd["daemon"]["mountpoint"]' "$MNT"
expect 'd["daemon"]["connect"]' "['127.0.0.1:$PORT']"
expect 'd["totals"]["links_up"]' 1
expect 'd["totals"]["online"]' 1
expect '[x["serial"] for x in d["disks"]]' "['ctl1']"
ctl_ok "$ESOCK" --json status
expect 'd["daemon"]["listen"]' "['127.0.0.1:$PORT']"
expect '[x["serial"] for x in d["exports"]]' "['ctl1']"
expect 'd["exports"][0]["size"]' $((64 * MIB))

log "links"
ctl_ok "$ISOCK" links
grep -qE "^127\.0\.0\.1:$PORT +out +up +[0-9]{4}-[0-9]{2}-[0-9]{2}T.* plaintext " <<<"$OUT" ||
  fail "links: $OUT"
ctl_ok "$ISOCK" --json links
expect 'len(d["links"])' 1
expect 'd["links"][0]["peer"]' "127.0.0.1:$PORT"
expect 'd["links"][0]["direction"]' out
expect 'd["links"][0]["state"]' up
expect 'd["links"][0]["encryption"]' plaintext
expect 'd["links"][0]["bytes_in"] > 0 and d["links"][0]["bytes_out"] > 0' True
expect 'd["links"][0]["since_ms"] > 0' True
ctl_ok "$ESOCK" --json links
expect 'd["links"][0]["direction"]' in

log "disks"
ctl_ok "$ISOCK" disks
head -1 <<<"$OUT" | grep -qE '^SERIAL +STATE +SIZE +INFLIGHT +QUEUED +JOURNAL +BLOCKED-SINCE +PATHS +NAMES$' ||
  fail "disks header: $OUT"
grep -qE "^ctl1 +online +64MiB +0 +0 +[^ ]+ +- +127\.0\.0\.1:$PORT/d[0-9]+ +xa0,serno/ctl1," <<<"$OUT" ||
  fail "disks row: $OUT"
ctl_ok "$ISOCK" --json disks
expect 'd["disks"][0]["state"]' online
expect 'd["disks"][0]["size"]' $((64 * MIB))
expect 'd["disks"][0]["names"][:2]' "['xa0', 'serno/ctl1']"
expect 'd["disks"][0]["paths"][0]["link"]' "127.0.0.1:$PORT"
expect 'd["disks"][0]["blocked_since"]' None
expect 'd["disks"][0]["queued"] + d["disks"][0]["inflight"]' 0

log "stats after 2 MiB of writes and reads"
dd if=/dev/urandom of="$MNT/xa0" bs=1M count=2 oflag=direct conv=notrunc status=none
dd if="$MNT/xa0" of=/dev/null bs=1M count=2 iflag=direct status=none
ctl_ok "$ISOCK" stats
grep -qE '^ctl1 +read ' <<<"$OUT" || fail "stats: $OUT"
grep -qE '^ +write +[0-9]+ +2\.0MiB ' <<<"$OUT" || fail "stats write row: $OUT"
ctl_ok "$ISOCK" --json stats
expect 'd["disks"][0]["serial"]' ctl1
expect 'd["disks"][0]["write"]["bytes"]' $((2 * MIB))
expect 'd["disks"][0]["read"]["bytes"] >= 2 * 1048576' True
expect 'd["disks"][0]["write"]["completed"] >= 2' True
expect '0 < d["disks"][0]["write"]["p50_us"] <= d["disks"][0]["write"]["p99_us"]' True

log "export add and remove at runtime"
ctl_ok "$ESOCK" export add "$WORK_DIR/d2.img,serno=ctl2"
grep -q '^exported ctl2: ' <<<"$OUT" || fail "export add: $OUT"
wait_disk "$MNT" ctl2
ctl_ok "$ESOCK" --json export add "$WORK_DIR/d3.img,serno=ctl3,ro"
expect 'd["export"]["serial"]' ctl3
expect 'd["export"]["read_only"]' True
wait_disk "$MNT" ctl3
ctl_ok "$ESOCK" export remove ctl3
grep -q 'ctl3' <<<"$OUT" || fail "export remove: $OUT"
wait_for "[ ! -e '$MNT/serno/ctl3' ]" 10 || fail "ctl3 is still on the importing side"
ctl_ok "$ISOCK" --json disks
expect 'sorted((x["serial"], x["state"]) for x in d["disks"])' \
  "[('ctl1', 'online'), ('ctl2', 'online'), ('ctl3', 'offline')]"

log "daemon errors exit 1 with the daemon's message"
ctl "$ESOCK" export remove nosuch
[ "$RC" = 1 ] || fail "export remove nosuch exited $RC"
grep -q "no export with serial 'nosuch'" <<<"$ERR" || fail "stderr: $ERR"
ctl "$ESOCK" --json export remove nosuch
[ "$RC" = 1 ] || fail "--json export remove nosuch exited $RC"
expect 'd["ok"]' False
expect 'd["error"]["code"]' not_found
ctl "$ESOCK" export add "$WORK_DIR/absent.img"
[ "$RC" = 1 ] || fail "export add of a missing file exited $RC"
grep -q 'absent.img' <<<"$ERR" || fail "stderr: $ERR"
ctl "$ESOCK" export add "$WORK_DIR/d4.img,serno=ctl1"
[ "$RC" = 1 ] || fail "a second export with serial ctl1 exited $RC"
ctl "$ISOCK" disconnect 127.0.0.1:1
[ "$RC" = 1 ] || fail "disconnect of an unknown target exited $RC"
ctl "$ISOCK" connect "127.0.0.1:$PORT"
[ "$RC" = 1 ] || fail "a second connect to the same target exited $RC"

log "an export path that is not UTF-8 does not break status"
BADNAME=$WORK_DIR/$(printf 'caf\xe9.img')
truncate -s $((16 * MIB)) "$BADNAME"
# An explicit label: the default one comes from the file name, and the
# importer journal's DiskHeader.label is still a proto3 string.
ctl_ok "$ESOCK" export add "$BADNAME,serno=ctl5,label=ctl5"
ctl_ok "$ESOCK" status
grep -q 'caf?\.img' <<<"$OUT" || fail "status does not show the path with '?': $OUT"
ctl_ok "$ESOCK" --json status
expect '[x["path"].endswith("caf\ufffd.img") for x in d["exports"] if x["serial"] == "ctl5"]' \
  "[True]"
ctl_ok "$ESOCK" export remove ctl5

log "usage errors exit 2, an unreachable daemon 3"
ctl "$ISOCK" frobnicate
[ "$RC" = 2 ] || fail "unknown command exited $RC"
ctl "$ISOCK" connect host:0
[ "$RC" = 2 ] || fail "bad port exited $RC"
ctl "$ISOCK" export add "$WORK_DIR/d4.img,bogus=1"
[ "$RC" = 2 ] || fail "bad export spec exited $RC"
ctl "$WORK_DIR/nobody-here.sock" status
[ "$RC" = 3 ] || fail "absent socket exited $RC"
ctl "/$(printf 'x%.0s' {1..200})" status
[ "$RC" = 2 ] || fail "a --control path too long for a socket exited $RC"

log "disconnect with the disk open: blocked since, queued read; connect resumes"
exec 3<"$MNT/serno/ctl1"
ctl_ok "$ISOCK" disconnect "127.0.0.1:$PORT"
wait_for "disk_is ctl1 'x[\"state\"] == \"blocked\"'" 10 ||
  fail "ctl1 did not become blocked"
dd if="$MNT/serno/ctl1" of="$WORK_DIR/blocked-read" bs=4096 count=1 iflag=direct status=none &
DD=$!
cleanup_fn kill "$DD"
wait_for "disk_is ctl1 'x[\"queued\"] + x[\"inflight\"] > 0'" 10 ||
  fail "the read on the blocked disk is not counted"
ctl_ok "$ISOCK" disks
grep -qE "^ctl1 +blocked +64MiB +[0-9]+ +[0-9]+ +[^ ]+ +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}[+-][0-9]{2}:[0-9]{2} \([0-9]+s\) +- " <<<"$OUT" ||
  fail "blocked disk row: $OUT"
ctl_ok "$ISOCK" --json disks
expect '[x for x in d["disks"] if x["serial"] == "ctl1"][0]["blocked_since_ms"] > 0' True
expect '[x for x in d["disks"] if x["serial"] == "ctl1"][0]["paths"]' '[]'
ctl_ok "$ISOCK" --json status
expect 'd["totals"]["blocked"]' 1
expect 'd["daemon"]["connect"]' '[]'
ctl_ok "$ISOCK" connect "127.0.0.1:$PORT"
wait_exit "$DD" 20 || fail "the blocked read did not complete after connect"
cmp -n 4096 "$WORK_DIR/blocked-read" "$WORK_DIR/d1.img" || fail "the blocked read returned wrong data"
exec 3<&-
ctl_ok "$ISOCK" --json disks
expect '[x for x in d["disks"] if x["serial"] == "ctl1"][0]["state"]' online
ctl_ok "$ISOCK" --json links
LINK_SINCE=$(jq_py 'd["links"][0]["since_ms"]')
INO1=$(stat -c %i "$MNT/serno/ctl1")

log "SIGHUP on the exporter"
if [ "$HAVE_CONFIG" = 1 ]; then
  printf 'export = %s\nexport = %s\n' "$WORK_DIR/d1.img,serno=ctl1" "$WORK_DIR/d4.img,serno=ctl4" >"$CONF"
fi
kill -HUP "$EXP"
wait_for "grep -q 'reload: export ctl2 removed' '$WORK_DIR/exporter.log'" 10 ||
  fail "the runtime export ctl2 was not withdrawn by the reload"
wait_for "[ ! -e '$MNT/serno/ctl2' ]" 10 || fail "ctl2 is still on the importing side"
if [ "$HAVE_CONFIG" = 1 ]; then
  wait_disk "$MNT" ctl4
  grep -q 'reload: export ctl4 added' "$WORK_DIR/exporter.log" || fail "no log of ctl4 added"
fi
grep -q 'reload: export ctl1' "$WORK_DIR/exporter.log" && fail "the reload touched ctl1"
[ "$(stat -c %i "$MNT/serno/ctl1")" = "$INO1" ] || fail "ctl1 changed inode"
ctl_ok "$ISOCK" --json links
expect 'len(d["links"])' 1
expect 'd["links"][0]["since_ms"]' "$LINK_SINCE"
dd if="$MNT/serno/ctl1" of=/dev/null bs=1M count=1 iflag=direct status=none || fail "ctl1 I/O after reload"

if [ "$HAVE_CONFIG" = 1 ]; then
  log "SIGHUP with a configuration that does not parse keeps everything"
  printf 'lisen = 1.2.3.4\n' >"$CONF"
  kill -HUP "$EXP"
  wait_for "grep -q 'keeping the running configuration' '$WORK_DIR/exporter.log'" 10 ||
    fail "no log line for the bad reload"
  sleep 0.5
  ctl_ok "$ESOCK" --json disks
  expect 'sorted(x["serial"] for x in d["exports"])' "['ctl1', 'ctl4']"
fi

log "SIGHUP on the importer with nothing changed"
kill -HUP "$IMP"
wait_for "grep -q 'reload: no changes to exports or peers' '$WORK_DIR/importer.log'" 10 ||
  fail "the importer did not log its reload"
ctl_ok "$ISOCK" --json links
expect 'd["links"][0]["since_ms"]' "$LINK_SINCE"
require_alive "$EXP" "after the reloads"
require_alive "$IMP" "after the reloads"

log "SIGTERM: both exit 0 and remove their sockets"
stop_pair
[ ! -e "$ESOCK" ] || fail "$ESOCK left behind"
[ ! -e "$ISOCK" ] || fail "$ISOCK left behind"
scan_logs 'keeping the running configuration|lisen|no path left: I/O blocks'
log "PASS"
