#!/bin/bash
# An exporter that dies under load costs the application nothing: fio writes
# random 4 KiB blocks with crc32c verification through MNT/xa0 while the
# exporter is SIGKILLed and, 3 s later, started again with the same
# arguments; the disk stays listed under serno/ during the outage, blocked
# I/O is resent once the importer reconnects, and fio ends with exit 0,
# err=0 and every block verified. A second outage hits a rate-limited
# sequential read pass that verifies what an earlier sequential write left,
# which must also end clean. Only the
# warnings an outage explains may appear in the logs.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test outage1 1024 fio

start_pair

# start_fio VAR NAME FIO-ARGS...: fio in the background on MNT/xa0, cwd
# $WORK_DIR (its verify state files land there), output in $WORK_DIR/NAME.out.
start_fio() {
  local var=$1 name=$2
  shift 2
  (cd "$WORK_DIR" && exec fio --name="$name" --filename="$MNT/xa0" --ioengine=libaio \
    --direct=1 --verify=crc32c --verify_fatal=1 --output="$WORK_DIR/$name.out" "$@") &
  printf -v "$var" '%s' "$!"
  # SIGKILL without waiting: fio cannot exit while its I/O is blocked on
  # the importer, and the importer's own cleanup (which runs next) fails it.
  cleanup_fn kill -KILL "$!"
  log "started fio $name (pid $!): $*"
}

# check_fio PID NAME [MIN_READS]: fio exits 0 within 60 s with err=0, having
# issued at least MIN_READS (default 1) reads, i.e. verified something.
check_fio() {
  local pid=$1 name=$2 min_reads=${3:-1} rc=0 reads
  wait_exit "$pid" 60 || rc=$?
  if [ "$rc" != 0 ] || ! grep -q "err= 0" "$WORK_DIR/$name.out"; then
    cat "$WORK_DIR/$name.out" >&2 || true
    fail "fio $name: exit status $rc"
  fi
  reads=$(sed -n 's/.*issued rwts: total=\([0-9]*\),.*/\1/p' "$WORK_DIR/$name.out")
  [ "${reads:-0}" -ge "$min_reads" ] || fail "fio $name: ${reads:-no} reads issued"
  log "fio $name: exit 0, err=0, $reads reads"
}

# no_paths: how many times the importer lost its last path to the disk.
no_paths() { grep -c "disk $SERIAL: no path left" "$WORK_DIR/importer.log" || true; }

# outage SECONDS: SIGKILL the exporter, check the disk stays listed, start it
# again with the same arguments (same log, same state directory).
outage() {
  local secs=$1 lost
  lost=$(no_paths)
  kill -KILL "$EXP"
  wait "$EXP" 2>/dev/null || true
  log "exporter killed"
  wait_for "[ \$(no_paths) -gt $lost ]" 15 || fail "the importer did not notice the outage"
  [ "$(ls "$MNT/serno")" = "$SERIAL" ] || fail "serno/$SERIAL not listed during the outage"
  [ -e "$MNT/xa0" ] || fail "xa0 vanished during the outage"
  sleep "$secs"
  [ "$(ls "$MNT/serno")" = "$SERIAL" ] || fail "serno/$SERIAL not listed after ${secs}s of outage"
  start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
}

# reopens: how many times the importer reopened the disk with I/O to resend.
reopens() { grep -cE "disk $SERIAL: open via .*, [1-9][0-9]* requests to \(re\)send" \
  "$WORK_DIR/importer.log" || true; }

log "outage 1: SIGKILL the exporter under random writes with verify"
start_fio FIO rand --rw=randwrite --bs=4k --size=512M --io_size=192M --iodepth=16 \
  --verify_backlog=256
sleep 2
kill -0 "$FIO" 2>/dev/null || fail "fio finished before the outage; make it longer"
outage 3
check_fio "$FIO" rand
[ "$(reopens)" -ge 1 ] || fail "no blocked I/O was resent after outage 1"

log "outage 2: SIGKILL the exporter under a sequential verifying read"
seq_args=(--bs=64k --size=128M --offset=$((768 * MIB)) --iodepth=4)
start_fio FIO seqw --rw=write "${seq_args[@]}" --do_verify=0
check_fio "$FIO" seqw 0
# A read job with --verify checks each block's header and crc32c as written
# by seqw. At 32 MiB/s the 128 MiB take ~4 s; the outage comes 1 s in.
start_fio FIO seqr --rw=read "${seq_args[@]}" --rate=32m
sleep 1
kill -0 "$FIO" 2>/dev/null || fail "the read pass finished before the outage"
before=$(reopens)
outage 2
check_fio "$FIO" seqr 2048
[ "$(reopens)" -gt "$before" ] || fail "no blocked read was resent after outage 2"

log "SIGTERM: both daemons exit 0"
stop_pair

# The importer's link drops when the exporter dies, it loses its only path,
# and reconnecting fails until the exporter is back.
scan_logs "warning: (link 127\.0\.0\.1:$PORT: dropping link: (read|write) error: (connection reset by peer|broken pipe)$|disk $SERIAL: no path left: I/O blocks|connect 127\.0\.0\.1:$PORT: cannot connect: connection refused \(will retry\)|link 127\.0\.0\.1:$PORT: cannot connect: connection refused \(will retry\))"
log "PASS"
