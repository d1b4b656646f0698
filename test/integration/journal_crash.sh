#!/bin/bash
# Crash loops: the importing daemon is SIGKILLed at random moments while an
# application writes, ROUNDS times in each journal mode (--sync=remote, the
# default, and --sync=journal, write-back), and started again on the same
# journal. The application is crashwriter.py: random runs of 4 KiB blocks,
# each stamped with its block number and a generation, logged once pwrite
# returned. After every restart every logged block must read back with at
# least its logged generation (an older one would be a lost acknowledged
# write). Once the journal has drained, the exporter's image itself must
# pass the same check, and match what the application reads through FUSE.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
fuse_test fusermount3 mountpoint truncate ss cmp

ROUNDS=${JOURNAL_CRASH_ROUNDS:-20}
BLOCKS=8192 # 32 MiB of 4 KiB blocks: runs overlap often
WRITER=$SOURCE_DIR/test/integration/crashwriter.py
PORT=$(free_port)
make_keys "$WORK_DIR/keys" 127.0.0.1

restart_importer() {
  start_importer IMP importer "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- \
    --sync="$MODE" --journal "$JDIR"
  wait_disk "$MNT" "$SERIAL" 20
}

for MODE in remote journal; do
  SERIAL=crash-$MODE
  IMG=$WORK_DIR/$SERIAL.img
  JDIR=$WORK_DIR/journal-$MODE
  WLOG=$WORK_DIR/$SERIAL.writes
  truncate -s $((64 * MIB)) "$IMG"
  start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
  wait_listening "$PORT"
  restart_importer
  log "--sync=$MODE: $ROUNDS crash rounds"
  for ((round = 1; round <= ROUNDS; round++)); do
    # In write-back mode, every other round stops the exporter first: the
    # writes then complete into the journal only, and what the writer saw
    # complete must come back from the journal after the restart.
    stopped=0
    if [ "$MODE" = journal ] && ((round % 2 == 0)); then
      kill -STOP "$EXP"
      stopped=1
    fi
    rm -f "$WORK_DIR/writer.ready"
    python3 "$WRITER" write "$MNT/serno/$SERIAL" "$WLOG" --blocks $BLOCKS --seconds 30 \
      --seed "$round" --ready "$WORK_DIR/writer.ready" >"$WORK_DIR/writer.out" 2>&1 &
    writer=$!
    cleanup_fn kill -KILL "$writer"
    # The writer reads its whole log before it starts (it grows every
    # round): the kill timer runs from its first completed write.
    wait_for "[ -e '$WORK_DIR/writer.ready' ]" 30 ||
      { cat "$WORK_DIR/writer.out" >&2; fail "round $round: the writer never completed a write"; }
    # 0.2 .. 1.4 s into the writes
    sleep "$(python3 -c "import random; random.seed($round); print(0.2 + random.random() * 1.2)")"
    kill -0 "$writer" 2>/dev/null || { cat "$WORK_DIR/writer.out" >&2; fail "the writer ended early"; }
    kill_importer
    rc=0
    wait_exit "$writer" 30 || rc=$?
    [ "$rc" = 0 ] || { cat "$WORK_DIR/writer.out" >&2; fail "the writer ended with status $rc after the importer died"; }
    [ "$stopped" = 0 ] || kill -CONT "$EXP"
    log "round $round: $(cat "$WORK_DIR/writer.out")"
    restart_importer
    python3 "$WRITER" verify "$MNT/serno/$SERIAL" "$WLOG" --blocks $BLOCKS >"$WORK_DIR/verify.out" 2>&1 ||
      { cat "$WORK_DIR/verify.out" >&2; fail "--sync=$MODE round $round: acknowledged writes lost"; }
  done
  log "--sync=$MODE: $(cat "$WORK_DIR/verify.out")"
  require_alive "$IMP" "after the crash rounds"
  # Drain: every record reaches the exporter and is retired.
  wait_for "journal_pending '$JDIR' | grep -qx 0" 60 ||
    fail "--sync=$MODE: the journal did not drain ($(journal_pending "$JDIR") pending)"
  dd if="$MNT/serno/$SERIAL" of="$WORK_DIR/view.img" bs=1M iflag=direct status=none
  stop_daemon "$IMP" 15 TERM || fail "importer exit status $? after SIGTERM"
  stop_daemon "$EXP" 15 TERM || fail "exporter exit status $? after SIGTERM"
  python3 "$WRITER" verify "$IMG" "$WLOG" --blocks $BLOCKS >"$WORK_DIR/verify.out" 2>&1 ||
    { cat "$WORK_DIR/verify.out" >&2; fail "--sync=$MODE: the exported image lost acknowledged writes"; }
  cmp "$WORK_DIR/view.img" "$IMG" || fail "--sync=$MODE: the image differs from what FUSE showed"
  log "--sync=$MODE: image verified after the drain"
done

# Killing the importer is the point here; reconnects and replays are logged.
scan_logs "warning: .*(dropping link|no path left|cannot connect|connection reset|broken pipe|journal replay: .*torn)"
log "PASS"
