#!/bin/bash
# The README's main-job command works: scripts/demo mounts the demo disk at
# the given directory, prints the tree, and on Ctrl-C (here SIGTERM, handled the same) stops both
# daemons, unmounts and removes its temporary files.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
require_root
require_fuse

MNT=$WORK_DIR/mnt
mkdir -p "$MNT"
mount_fuse_cleanup "$MNT"
start_daemon DEMO demo "$SOURCE_DIR/scripts/demo" "$MNT"
wait_for "[ -e '$MNT/serno/demo-disk-1' ]" 60 || fail "demo disk did not appear"
wait_for "grep -q 'Press Ctrl-C' '$WORK_DIR/demo.log'" 10 || fail "demo did not print its tree"
grep -q 'serno/demo-disk-1' "$WORK_DIR/demo.log" || fail "tree listing lacks serno/demo-disk-1"
grep -qE '^  demo-disk-1 +online' "$WORK_DIR/demo.log" || fail "no xdiskctl disks line for demo-disk-1"
[ "$(stat -c %s "$MNT/xa0")" -eq $((1 << 30)) ] || fail "demo disk is not 1 GiB"
[ "$(stat -c %i "$MNT/xa0")" -eq "$(stat -c %i "$MNT/serno/demo-disk-1")" ] || fail "names differ"
tmp=$(sed -n 's/^demo: exporting \(.*\)\/demo.img.*/\1/p' "$WORK_DIR/demo.log")
[ -d "$tmp" ] || fail "cannot find the demo's work directory"

# A background job of a non-interactive shell starts with SIGINT ignored
# (and bash cannot trap it then), so the test stops it with SIGTERM, which
# the demo handles exactly like Ctrl-C.
kill -TERM "$DEMO"
rc=0
wait_exit "$DEMO" 20 || rc=$?
[ "$rc" -eq 0 ] || fail "demo exited $rc after SIGTERM"
mountpoint -q "$MNT" && fail "mount left behind"
[ ! -e "$tmp" ] || fail "demo left $tmp behind"
pgrep -f "$tmp" >/dev/null && fail "daemons left behind"
log "ok"
