# shellcheck shell=bash
# xdisk-fuse helpers for integration tests; source after functions.sh.
#
#   XDISK, PEER           the daemon binary and the independent python peer
#   make_keys DIR ADDR... a keys directory allowing plaintext from each ADDR
#   peer_test [CMD...]    the start of a test without a mount: needs root
#                         and each CMD (else skips)
#   fuse_test [CMD...]    the start of a test that mounts: needs root,
#                         FUSE and each CMD (else skips); sets MIB and MNT
#                         ($WORK_DIR/mnt)
#   disk_test SERIAL MIB [CMD...]  fuse_test of a test around one exported
#                         image, with fusermount3, mountpoint, truncate, ss
#                         and each CMD; sets SERIAL and IMG (a sparse image
#                         of MIB MiB in $WORK_DIR) too
#   need_xdiskctl         sets XDISKCTL (the built one unless given), or skips
#   python_relay          the start of a test of python peers around a relay:
#                         needs root, python3 and ss; relay b ($RELAY) on a
#                         free port $PB, keys in $WORK_DIR/keys
#   veth_netns            a network namespace $NS joined to this one by a
#                         veth pair: host end $VH with $HOST_IP, namespace
#                         end $VN with $NS_IP (a /30 of 169.254/16 unused
#                         here); both removed at cleanup
#   wait_fio PID OUT SEC  until the background fio PID ends; fails unless it
#                         exits 0 within SEC with "err= 0" in its output OUT
#   start_fio_verify SIZE IO_SIZE  fio in the background (pid in FIO): 4 KiB
#                         random writes at QD16 with crc32c verify over
#                         SIZE of $MNT/xa0, IO_SIZE in all, output in
#                         $WORK_DIR/rand.out (wait_fio FIO ... to check)
#   free_port             an unused TCP port on 127.0.0.1
#   free_ports N          N distinct unused ports, on one line
#   start_exporter VAR NAME PORT KEYS EXPORT... [-- EXTRA ARGS]
#   start_importer VAR NAME MNT KEYS CONNECT... [-- EXTRA ARGS]
#   start_relay VAR NAME PORT KEYS CONNECT...
#                         a daemon that only listens on PORT and connects
#                         (a relay), control socket $WORK_DIR/NAME.sock
#   wait_listening PORT   until something accepts on 127.0.0.1:PORT
#   wait_disk MNT SERIAL  until MNT/serno/SERIAL exists
#   start_pair [-- IMPORTER ARGS]  exporter of $IMG as $SERIAL on a free port
#                         (PORT, keys in $WORK_DIR/keys), importer mounting
#                         $MNT; sets EXP and IMP and waits for the disk
#   stop_pair             SIGTERM both: each exits 0, the mount is gone
#   stop_all PID...       SIGTERM each in turn; each must exit 0 (15 s)
#   Two paths a and b to disk $SERIAL, imported under $MNT by an importer
#   logging to $ILOG at debug level; PORT[a], PORT[b] are the peers the importer links to, PID[a],
#   PID[b] their daemons, $FIO a running fio:
#   paths_via X           how often the importer gained a path through X
#   opens_via X           how often it opened the disk through X
#   path_active           a or b: where the disk was last opened
#   path_other X          the other one
#   no_outage WHEN        fail if the disk went offline or lost every path
#   fail_over WHAT        SIGKILL the active one (a WHAT, for the log); the
#                         disk must reopen through the other; sets FIRST
#   peer ARGS...          the python peer, bounded by a 120 s timeout
#   json FILE KEY         KEY of the JSON object on FILE's first line
#   require_alive PID WHEN  fail with the daemon's exit status if it is gone
#   ctl ARGS...           xdiskctl on the control socket $CTL (10 s timeout)
#   daemon_field FIELD    daemon.FIELD of `ctl --json status`
#   proc_gone PID         true once PID is dead (a zombie counts: this
#                         machine's init does not reap orphans)
#   make_key_pairs EK IK  keygen in both directories, each trusting the
#                         other's key from 127.0.0.1 (encrypted links)
#   trust_each_other EK IK  only the trusting part of make_key_pairs
#   start_mitm_proxy [FILE...]  mitm_proxy.py from a free port PX to $PORT
#                         (flip and capture files in $WORK_DIR, extra
#                         switch files as given); sets PX and PROXY
#   expect_link SOCK ENC  `xdiskctl links` on SOCK shows an up link with
#                         encryption ENC (an ERE)
#   start_peer_server VAR LOG PORT CMD...  CMD, a python block server
#                         listening on PORT, in the background (pid in
#                         VAR, output appended to LOG); waits until it says
#                         it listens
#   stop_importer_quietly PID LOG  SIGTERM: exit 0, $MNT unmounted, and no
#                         warning or error in LOG after "shutting down"
#   start_proxied_pair    exporter (keys $EK, $IMG as $SERIAL, control
#                         exp.sock) on a free PORT and importer (keys $IK,
#                         $MNT, imp.sock) through start_mitm_proxy; waits
#                         for the disk
#   fio_verify NAME       64 MiB of 64 KiB random writes with crc32c verify
#                         on $MNT/xa0; fails on any error
#   tampered_write MIB DROP  4 MiB of random data written at MIB MiB while
#                         the proxy flips one byte: the exporter must log
#                         DROP (an ERE), show a "bad tag" refusal, the
#                         importer must resend, and the image must hold
#                         exactly the data (left in $WORK_DIR/rand)

XDISK=${XDISK:-$BUILD_DIR/daemon/xdisk-fuse}
# meson runs tests with MALLOC_PERTURB_ set; do the same when run by hand,
# so that a use-after-free in the daemon shows up here too.
export MALLOC_PERTURB_=${MALLOC_PERTURB_:-165}
PEER=${PEER:-$SOURCE_DIR/test/peer/dmsg_peer.py}
[ -x "$XDISK" ] || skip "no daemon binary at $XDISK (build first)"

python_relay() {
  peer_test python3 ss
  make_keys "$WORK_DIR/keys" 127.0.0.1
  PB=$(free_port)
  start_relay RELAY b "$PB" "$WORK_DIR/keys"
}

veth_netns() {
  requires ip netns list
  log "namespace, veth pair and addresses"
  # A /30 out of 169.254.0.0/16 that no interface here uses yet.
  local n
  for _ in $(seq 1 20); do
    n=$((2 + RANDOM % 160)) # below 169.254.169.0/24, where clouds keep metadata
    ip -4 -o addr show | grep -q " 169\.254\.$n\." || break
  done
  NS=xd-$$-$RANDOM
  VH=xdh$((RANDOM % 100000)) # host end (names are at most 15 characters)
  VN=xdn${VH#xdh}            # namespace end
  HOST_IP=169.254.$n.1
  NS_IP=169.254.$n.2
  ip netns add "$NS"
  cleanup_fn ip netns del "$NS"
  ip link add "$VH" type veth peer name "$VN" netns "$NS"
  # Deleting the namespace deletes its end, and with it the pair; this
  # covers the case where the namespace is gone but the host end is not.
  cleanup_fn ip link del "$VH"
  ip addr add "$HOST_IP/30" dev "$VH"
  ip link set "$VH" up
  ip -n "$NS" addr add "$NS_IP/30" dev "$VN"
  ip -n "$NS" link set "$VN" up
  ip -n "$NS" link set lo up
}

make_keys() {
  local dir=$1
  shift
  mkdir -p "$dir/remote"
  local a
  for a in "$@"; do : >"$dir/remote/$a.none"; done
}

peer_test() {
  local c
  require_root
  for c in "$@"; do requires "$c"; done
}

fuse_test() {
  require_root
  require_fuse
  peer_test "$@"
  MIB=1048576
  MNT=$WORK_DIR/mnt
}

disk_test() {
  fuse_test fusermount3 mountpoint truncate ss "${@:3}"
  SERIAL=$1
  IMG=$WORK_DIR/$1.img
  truncate -s $(($2 * MIB)) "$IMG"
}

wait_fio() {
  local rc=0
  wait_exit "$1" "$3" || rc=$?
  if [ "$rc" != 0 ] || ! grep -q "err= 0" "$2"; then
    cat "$2" >&2 || true
    fail "fio: exit status $rc"
  fi
}

start_fio_verify() {
  (cd "$WORK_DIR" && exec fio --name=rand --filename="$MNT/xa0" --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --size="$1" --io_size="$2" --iodepth=16 --verify=crc32c \
    --verify_backlog=256 --verify_fatal=1 --output="$WORK_DIR/rand.out") &
  FIO=$!
  # SIGKILL without waiting: fio cannot exit while its I/O is blocked on the
  # importer, and the importer's own cleanup (which runs next) fails it.
  cleanup_fn kill -KILL "$FIO"
}

need_xdiskctl() {
  XDISKCTL=${XDISKCTL:-$BUILD_DIR/daemon/xdiskctl}
  [ -x "$XDISKCTL" ] || skip "no xdiskctl at $XDISKCTL"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

free_ports() {
  local n=$1 out=" " p
  while [ "$n" -gt 0 ]; do
    p=$(free_port)
    [[ "$out" == *" $p "* ]] && continue
    out="$out$p "
    n=$((n - 1))
  done
  echo $out
}

# Looks at the listening sockets instead of connecting: a probe connection
# would itself be a (refused or reset) link in the daemon's log.
wait_listening() {
  wait_for "ss -Hltn 'sport = :$1' | grep -q ." 10
}

# start_exporter VAR NAME PORT KEYS EXPORT... [-- EXTRA]
start_exporter() {
  local var=$1 name=$2 port=$3 keys=$4
  shift 4
  local args=(--listen "127.0.0.1:$port" --keys "$keys" --state-dir "$WORK_DIR/state-$name")
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    args+=(--export "$1")
    shift
  done
  [ "${1:-}" = "--" ] && shift
  start_daemon "$var" "$name" "$XDISK" "${args[@]}" "$@"
  wait_listening "$port" || fail "$name is not listening on $port"
}

# start_importer VAR NAME MNT KEYS HOST:PORT... [-- EXTRA]
start_importer() {
  local var=$1 name=$2 mnt=$3 keys=$4
  shift 4
  mkdir -p "$mnt"
  local args=(--keys "$keys" --state-dir "$WORK_DIR/state-$name")
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    args+=(--connect "$1")
    shift
  done
  [ "${1:-}" = "--" ] && shift
  mount_fuse_cleanup "$mnt"
  start_daemon "$var" "$name" "$XDISK" "${args[@]}" "$@" "$mnt"
  wait_for "mountpoint -q '$mnt'" 10 || fail "$name did not mount $mnt"
}

# start_relay VAR NAME PORT KEYS HOST:PORT...: an exporter without exports.
start_relay() {
  local var=$1 name=$2 port=$3 keys=$4 target
  shift 4
  local extra=(--control "$WORK_DIR/$name.sock")
  for target in "$@"; do extra+=(--connect "$target"); done
  start_exporter "$var" "$name" "$port" "$keys" -- "${extra[@]}"
}

wait_disk() {
  wait_for "[ -e '$1/serno/$2' ]" "${3:-10}" || fail "disk $2 did not appear under $1"
}

peer() { timeout 120 python3 "$PEER" "$@"; }

json() {
  python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())[sys.argv[2]])' "$1" "$2"
}

# Fails with the daemon's exit status (139 = SIGSEGV) if PID is gone.
require_alive() {
  kill -0 "$1" 2>/dev/null && return 0
  local rc=0
  wait "$1" || rc=$?
  fail "the daemon died $2 (exit status $rc)"
}

start_pair() {
  PORT=$(free_port)
  make_keys "$WORK_DIR/keys" 127.0.0.1
  start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
  start_importer IMP importer "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" "$@"
  wait_disk "$MNT" "$SERIAL"
}

stop_pair() {
  local rc=0
  stop_daemon "$IMP" 15 TERM || rc=$?
  [ "$rc" = 0 ] || fail "importer exit status $rc after SIGTERM"
  ! mountpoint -q "$MNT" || fail "still mounted after the importer's SIGTERM"
  stop_ok "$EXP" 15 "exporter"
}

stop_all() {
  local pid rc
  for pid in "$@"; do
    rc=0
    stop_daemon "$pid" 15 TERM || rc=$?
    [ "$rc" = 0 ] || fail "pid $pid: exit status $rc after SIGTERM"
  done
}

paths_via() { grep -c "disk $SERIAL: path via link 127\.0\.0\.1:${PORT[$1]} " "$ILOG" || true; }
opens_via() { grep -c "disk $SERIAL: BLK_OPEN via link 127\.0\.0\.1:${PORT[$1]}$" "$ILOG" || true; }
path_active() {
  local port
  port=$(sed -n "s/.*disk $SERIAL: BLK_OPEN via link 127\.0\.0\.1:\([0-9]*\)$/\1/p" "$ILOG" | tail -n1)
  if [ "$port" = "${PORT[a]}" ]; then echo a; elif [ "$port" = "${PORT[b]}" ]; then echo b; fi
}
path_other() { if [ "$1" = a ]; then echo b; else echo a; fi; }
no_outage() {
  ! grep -qE "disk $SERIAL: (no path left|offline)" "$ILOG" || fail "the disk went offline: $1"
}
# SIGKILL without waiting for fio: it cannot exit while its I/O is blocked
# on the importer. fio drains its queue before each verify backlog, so the
# kill may find no I/O in flight: count reopens, not resends.
fail_over() {
  local what=$1 victim survivor opens
  victim=$(path_active)
  [ -n "$victim" ] || fail "cannot tell which path the disk is open on"
  survivor=$(path_other "$victim")
  kill -0 "$FIO" 2>/dev/null || fail "fio finished before killing $what $victim"
  opens=$(opens_via "$survivor")
  kill -KILL "${PID[$victim]}"
  wait "${PID[$victim]}" 2>/dev/null || true
  log "killed $what $victim (port ${PORT[$victim]}), the active path"
  wait_for "[ \$(opens_via $survivor) -gt $opens ]" 10 ||
    fail "the disk did not reopen through $what $survivor"
  log "I/O moved to $what $survivor"
  no_outage "after killing $what $victim"
  [ "$(ls "$MNT/serno")" = "$SERIAL" ] || fail "serno/$SERIAL not listed"
  FIRST=$victim
}

# journal_pending DIR / journal_bytes DIR: records pending, and bytes of
# segment files, over every journal under DIR (from --journal-dump's
# summary lines; 0 when DIR holds no journal or does not exist, as with
# --sync=remote, which writes none).
journal_pending() {
  { "$XDISK" --journal-dump "$1" 2>/dev/null || true; } |
    sed -n 's/^disk .* records, \([0-9]*\) pending .*/\1/p' | awk '{s += $1} END {print s + 0}'
}
journal_bytes() {
  { "$XDISK" --journal-dump "$1" 2>/dev/null || true; } |
    sed -n 's/^disk .* segments (\([0-9]*\) bytes).*/\1/p' | awk '{s += $1} END {print s + 0}'
}

# The importer runs under its keeper (daemon/import/keeper.h): $IMP, as started by
# start_importer, is the keeper's pid; the daemon serving the mount is its
# child.
#   importer_daemon        the serving daemon's pid ("" while none runs)
#   crash_importer [WAIT]  SIGKILL the serving daemon; with WAIT (default 1),
#                          wait until the keeper started the next one and it
#                          took the mount over (xdiskctl status answers)
importer_daemon() { pgrep -P "$IMP" -x xdisk-fuse || true; }

crash_importer() {
  local old
  old=$(importer_daemon)
  [ -n "$old" ] || fail "no importer daemon under keeper $IMP"
  kill -KILL "$old"
  [ "${1:-1}" = 1 ] || return 0
  wait_for "d=\$(importer_daemon); [ -n \"\$d\" ] && [ \"\$d\" != $old ]" 20 ||
    fail "the keeper did not start the importer again"
}

# kill_importer: SIGKILL the keeper and then the daemon ($IMP and its
# child), as a power loss would: nothing of the importer survives, and its
# dead FUSE mount ($MNT) is taken away (mountpoint(1) cannot stat a dead
# FUSE mount; /proc/mounts still lists it).
kill_importer() {
  local d
  d=$(importer_daemon)
  # Stopped first, the daemon cannot notice (and log) its keeper's death.
  [ -z "$d" ] || kill -STOP "$d" 2>/dev/null || true
  kill -KILL "$IMP" $d 2>/dev/null || true
  wait "$IMP" 2>/dev/null || true
  # Orphaned by its keeper, the daemon is nobody's child to reap.
  [ -z "$d" ] || wait_for "proc_gone $d" 10 || fail "importer daemon $d survived SIGKILL"
  umount -l "$MNT" 2>/dev/null || true
  wait_for "! grep -q ' $MNT fuse' /proc/mounts" 10 || fail "cannot unmount $MNT"
}

ctl() { timeout 10 "${XDISKCTL:-$BUILD_DIR/daemon/xdiskctl}" --control "$CTL" "$@"; }

daemon_field() {
  ctl --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["daemon"][sys.argv[1]])' "$1"
}

proc_gone() { ! ps -o stat= -p "$1" | grep -qv Z; }

make_key_pairs() {
  local k
  for k in "$1" "$2"; do
    timeout 120 "$XDISK" keygen --keys "$k" >/dev/null || fail "keygen --keys $k: exit status $?"
  done
  trust_each_other "$1" "$2"
}

trust_each_other() {
  cp "$2/rsa.pub" "$1/remote/127.0.0.1.pub"
  cp "$1/rsa.pub" "$2/remote/127.0.0.1.pub"
}

start_peer_server() {
  local var=$1 slog=$2 port=$3 n pid
  shift 3
  n=$(grep -c '"event": "listening"' "$slog" 2>/dev/null || true)
  "$@" >>"$slog" 2>&1 &
  pid=$!
  printf -v "$var" '%s' "$pid"
  cleanup_fn _kill_quietly "$pid"
  wait_for "[ \$(grep -c '\"event\": \"listening\"' '$slog') -gt ${n:-0} ]" 10 ||
    fail "the server for port $port is not listening: $(cat "$slog")"
}

stop_importer_quietly() {
  local rc=0 noise
  stop_daemon "$1" 15 TERM || rc=$?
  [ "$rc" = 0 ] || fail "exit status $rc after SIGTERM"
  ! mountpoint -q "$MNT" || fail "still mounted after SIGTERM"
  # A clean stop is not an outage: nothing after "shutting down" is a warning.
  noise=$(sed -n '/main: .*shutting down/,$p' "$2" | grep -E 'warning|error' || true)
  [ -z "$noise" ] || fail "a clean SIGTERM shutdown logged warnings:
$noise"
}

start_proxied_pair() {
  PORT=$(free_port)
  start_exporter EXP exporter "$PORT" "$EK" "$IMG,serno=$SERIAL" -- --control "$WORK_DIR/exp.sock"
  start_mitm_proxy
  start_importer IMP importer "$MNT" "$IK" "127.0.0.1:$PX" -- --control "$WORK_DIR/imp.sock"
  wait_disk "$MNT" "$SERIAL" 20
}

fio_verify() {
  local rc=0
  (cd "$WORK_DIR" && timeout -k 5 300 fio --name="$1" --filename="$MNT/xa0" --ioengine=libaio \
    --direct=1 --rw=randwrite --bs=64k --size=64M --iodepth=8 --verify=crc32c --verify_fatal=1 \
    --output="$WORK_DIR/fio.out") || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$WORK_DIR/fio.out" >&2 || true
    fail "fio: exit status $rc"
  fi
  grep -q "err= 0" "$WORK_DIR/fio.out" || fail "fio: $(cat "$WORK_DIR/fio.out")"
}

_reopens() {
  grep -cE "disk $SERIAL: open via .*, [1-9][0-9]* requests to \(re\)send" \
    "$WORK_DIR/importer.log" || true
}

tampered_write() {
  local at=$1 drop=$2 resent
  head -c $((4 * MIB)) /dev/urandom >"$WORK_DIR/rand"
  resent=$(_reopens)
  touch "$WORK_DIR/flip"
  timeout -k 5 120 dd if="$WORK_DIR/rand" of="$MNT/xa0" bs=1M seek="$at" oflag=direct \
    conv=notrunc,fsync status=none || fail "dd through the tampered link: exit status $?"
  [ ! -e "$WORK_DIR/flip" ] || fail "the proxy never flipped a byte"
  grep -q "flipped one byte" "$WORK_DIR/proxy.log" || fail "the proxy did not log its flip"
  wait_for "grep -qE '$drop' '$WORK_DIR/exporter.log'" 10 ||
    fail "the exporter did not log '$drop'"
  expect_refusal "$WORK_DIR/exp.sock" 127.0.0.1 "bad tag"
  [ "$(_reopens)" -gt "$resent" ] || fail "the importer did not resend after reconnecting"
  dd if="$IMG" bs=1M skip="$at" count=4 status=none | cmp - "$WORK_DIR/rand" ||
    fail "the exported image does not hold exactly what was written"
}

start_mitm_proxy() {
  PX=$(free_port)
  while [ "$PX" = "$PORT" ]; do PX=$(free_port); done
  start_daemon PROXY proxy python3 -u "$SOURCE_DIR/test/integration/mitm_proxy.py" "$PX" "$PORT" \
    "$WORK_DIR/flip" "$WORK_DIR/capture" "$@"
  wait_listening "$PX" || fail "the proxy is not listening on $PX"
}

# expect_refusal SOCK HOST KIND: `xdiskctl links` on SOCK shows HOST as
# recently refused, of KIND ("key mismatch", "bad tag", ...).
expect_refusal() {
  "${XDISKCTL:-$BUILD_DIR/daemon/xdiskctl}" --control "$1" links >"$WORK_DIR/links.txt" ||
    fail "xdiskctl links ($1)"
  grep -qE "^${2//./\\.} +(in|out) +refused .* $3 \(x[0-9]+\): " "$WORK_DIR/links.txt" ||
    fail "xdiskctl links ($1) shows no '$3' refusal of $2: $(cat "$WORK_DIR/links.txt")"
}

expect_link() {
  "${XDISKCTL:-$BUILD_DIR/daemon/xdiskctl}" --control "$1" links >"$WORK_DIR/links.txt" ||
    fail "xdiskctl links ($1)"
  grep -qE "^127\.0\.0\.1:[0-9]+ +(in|out) +up .* $2 " "$WORK_DIR/links.txt" ||
    fail "xdiskctl links ($1): $(cat "$WORK_DIR/links.txt")"
}
