#!/bin/bash
# Docs agree with the programs, install, and the configuration file works:
# - every long option of `xdisk-fuse --help` is described in xdisk-fuse.8,
#   and (but help, version, config, no-config, journal-dump) is a key in
#   xdisk-fuse.conf.5; every option of xdisk-fuse.8's OPTIONS section and
#   every key of xdisk-fuse.conf.5 exists; every key of the example config
#   is accepted by the daemon;
# - every command in xdiskctl.8 is in `xdiskctl --help` (when xdiskctl is
#   built);
# - groff and man render the three pages without a warning;
# - `meson install --destdir` installs the three pages, the systemd unit and
#   the example config, and `systemd-analyze verify` accepts the unit;
# - a bad key or value in a --config file exits 2 naming FILE:LINE, a
#   missing --config file exits 2 naming it; a daemon configured only by a
#   file listens where the file says, a --listen on the command line
#   replaces the file's, and SIGTERM makes it exit 0.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
peer_test timeout ss

DOCS=$SOURCE_DIR/docs
MAN8=$DOCS/xdisk-fuse.8
CTL8=$DOCS/xdiskctl.8
CONF5=$DOCS/xdisk-fuse.conf.5
EXAMPLE=$DOCS/xdisk-fuse.conf.example
for f in "$MAN8" "$CTL8" "$CONF5" "$EXAMPLE"; do
  [ -f "$f" ] || fail "missing $f"
done

# roff source with the escapes that split words undone: \- is '-', font
# changes and zero-width marks go.
plain() { sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' -e 's/\\&//g' -e 's/\\%//g' -e 's/\\c$//' "$@"; }
# section NAME FILE: the roff lines of one .SH section.
section() { awk -v s="$1" '/^\.SH /{on = ($0 == ".SH " s)} on' "$2"; }
# tags FILE: the first word (or first quoted string) of each .TP tag line.
tags() {
  awk 'prev == ".TP" && /^\.(B|BI|BR|IR) / {print} {prev = $1}' "$1" |
    sed -E -e 's/^\.[A-Z]+ //' -e '/^"/{s/^"([^"]*)".*/\1/;s/ +$//;b' -e '}' -e 's/^([^ ]*).*/\1/'
}
# has_word WORD FILE: WORD appears, not as part of a longer option name.
has_word() { grep -qE -- "(^|[^a-z0-9-])$1([^a-z0-9-]|\$)" "$2"; }

log "every --help option is in xdisk-fuse.8 and a key of xdisk-fuse.conf.5"
# long_opts: the --long-options a text on stdin names, one per line, sorted.
long_opts() { grep -oE -- '(^|[ ,"(])--[a-z][a-z0-9-]*' | sed -E 's/^[ ,"(]+//' | sort -u; }
# each_listed LIST OTHER WHY: every line of LIST is a line of OTHER, else fail "LINE WHY".
each_listed() {
  local item
  while read -r item; do grep -qxF -- "$item" "$2" || fail "$item $3"; done <"$1"
}

timeout 10 "$XDISK" --help >"$WORK_DIR/help.out" || fail "--help: exit status $?"
long_opts <"$WORK_DIR/help.out" >"$WORK_DIR/help.opts"
[ "$(wc -l <"$WORK_DIR/help.opts")" -ge 20 ] || fail "too few options in --help: $(cat "$WORK_DIR/help.opts")"
plain "$MAN8" >"$WORK_DIR/man8.txt"
section KEYS "$CONF5" | plain >"$WORK_DIR/conf5.keys.roff"
section KEYS "$CONF5" | tags /dev/stdin | plain >"$WORK_DIR/conf5.keys"
while read -r opt; do
  has_word "$opt" "$WORK_DIR/man8.txt" || fail "$opt is in --help but not in xdisk-fuse.8"
  case $opt in --help | --version | --config | --no-config | --journal-dump) continue ;; esac
  grep -qxF -- "${opt#--}" "$WORK_DIR/conf5.keys" ||
    fail "$opt is in --help but '${opt#--}' is not a key in xdisk-fuse.conf.5"
done <"$WORK_DIR/help.opts"
if grep -qE '^ +-o ' "$WORK_DIR/help.out"; then
  grep -qxF option "$WORK_DIR/conf5.keys" || fail "-o has no 'option' key in xdisk-fuse.conf.5"
fi

log "every option in xdisk-fuse.8 and every key in xdisk-fuse.conf.5 exists"
section OPTIONS "$MAN8" | plain | long_opts >"$WORK_DIR/man8.opts"
[ -s "$WORK_DIR/man8.opts" ] || fail "no options found in xdisk-fuse.8"
each_listed "$WORK_DIR/man8.opts" "$WORK_DIR/help.opts" "is in xdisk-fuse.8 but not in --help"
while read -r key; do
  case $key in mountpoint | option) continue ;; esac
  grep -qxF -- "--$key" "$WORK_DIR/help.opts" || fail "key '$key' of xdisk-fuse.conf.5 is no option"
done <"$WORK_DIR/conf5.keys"

log "every key of the example configuration is accepted"
# Uncomment every "#key ..." line and end with a bad key on the last line:
# the file is applied in order and stops at the first error, so an error
# naming that last line means every line before it was accepted, without
# starting a daemon on the example's addresses and devices.
sed -E 's/^#([a-z][a-z0-9-]*([ =]|$))/\1/' "$EXAMPLE" >"$WORK_DIR/example.conf"
echo "no-such-key" >>"$WORK_DIR/example.conf"
last=$(wc -l <"$WORK_DIR/example.conf")
[ "$(grep -cE '^[a-z]' "$WORK_DIR/example.conf")" -ge 15 ] || fail "too few keys in $EXAMPLE"
rc=0
timeout 10 "$XDISK" --config "$WORK_DIR/example.conf" >/dev/null 2>"$WORK_DIR/example.err" || rc=$?
grep -qF "example.conf:$last: unknown key 'no-such-key'" "$WORK_DIR/example.err" ||
  fail "the example configuration is not accepted (exit $rc): $(cat "$WORK_DIR/example.err")"

CTL=$(find "$BUILD_DIR" -name xdiskctl -type f -perm -u+x 2>/dev/null | head -n 1)
if [ -z "$CTL" ]; then
  log "SKIP (part): no xdiskctl binary under $BUILD_DIR; its commands are not checked"
else
  log "every command in xdiskctl.8 is in '$CTL --help'"
  timeout 10 "$CTL" --help >"$WORK_DIR/ctl.help" || fail "xdiskctl --help: exit status $?"
  section COMMANDS "$CTL8" | tags /dev/stdin | plain >"$WORK_DIR/ctl.cmds"
  [ "$(wc -l <"$WORK_DIR/ctl.cmds")" -ge 8 ] || fail "too few commands in xdiskctl.8"
  while read -r cmd; do
    has_word "$cmd" "$WORK_DIR/ctl.help" || fail "xdiskctl.8 command '$cmd' is not in xdiskctl --help"
  done <"$WORK_DIR/ctl.cmds"
  # Long options, both ways: the OPTIONS section against --help.
  section OPTIONS "$CTL8" | plain | long_opts >"$WORK_DIR/ctl8.opts"
  long_opts <"$WORK_DIR/ctl.help" >"$WORK_DIR/ctl.opts"
  [ -s "$WORK_DIR/ctl.opts" ] || fail "no options in xdiskctl --help"
  each_listed "$WORK_DIR/ctl8.opts" "$WORK_DIR/ctl.opts" "is an xdiskctl.8 option not in xdiskctl --help"
  each_listed "$WORK_DIR/ctl.opts" "$WORK_DIR/ctl8.opts" "is an xdiskctl --help option not in xdiskctl.8"
fi

log "the pages hold no control characters"
for page in "$MAN8" "$CTL8" "$CONF5" "$EXAMPLE"; do
  if LC_ALL=C grep -nP '[\x00-\x08\x0b-\x1f\x7f]' "$page" >"$WORK_DIR/ctrl.txt"; then
    fail "control characters in $page: $(cat -A "$WORK_DIR/ctrl.txt")"
  fi
done

if command -v groff >/dev/null; then
  log "groff and man render the pages without warnings"
  for page in "$MAN8" "$CTL8" "$CONF5"; do
    out=$(LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z "$page" 2>&1) || fail "groff failed on $page: $out"
    [ -z "$out" ] || fail "groff warns on $page: $out"
    if command -v man >/dev/null; then
      out=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null) ||
        fail "man -l failed on $page: $out"
      [ -z "$out" ] || fail "man -l warns on $page: $out"
    fi
  done
else
  log "SKIP (part): no groff (scripts/bootstrap installs groff-base)"
fi

if command -v meson >/dev/null && [ -f "$BUILD_DIR/meson-private/coredata.dat" ]; then
  log "meson install --destdir installs the pages, the unit and the example"
  DEST=$WORK_DIR/dest
  timeout 300 meson install -C "$BUILD_DIR" --no-rebuild --destdir "$DEST" >"$WORK_DIR/install.log" 2>&1 ||
    fail "meson install: $(tail -20 "$WORK_DIR/install.log")"
  for want in man8/xdisk-fuse.8 man8/xdiskctl.8 man5/xdisk-fuse.conf.5 \
    xdisk-fuse/xdisk-fuse.conf.example systemd/system/xdisk-fuse.service; do
    found=$(find "$DEST" -path "*/$want" | head -n 1)
    [ -n "$found" ] || fail "meson install did not install */$want"
  done
  UNIT=$(find "$DEST" -path '*/systemd/system/xdisk-fuse.service' | head -n 1)
  exec_path=$(sed -nE 's/^ExecStart=([^ ]+).*/\1/p' "$UNIT")
  [ -x "$DEST$exec_path" ] || fail "the unit's ExecStart $exec_path was not installed"
  grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$UNIT" || fail "the unit does not reload with SIGHUP"
  grep -qx 'Restart=on-failure' "$UNIT" || fail "the unit does not restart on failure"
  grep -q '^ExecStart=.* --config /etc/xdisk-fuse/xdisk-fuse.conf$' "$UNIT" ||
    fail "the unit does not read /etc/xdisk-fuse/xdisk-fuse.conf"
  ! grep -qE '^(PrivateDevices|ProtectSystem|PrivateTmp|DeviceAllow)=' "$UNIT" ||
    fail "the unit has hardening that hides the FUSE mount or /dev/fuse"
  if command -v systemd-analyze >/dev/null; then
    log "systemd-analyze verify accepts the unit"
    # Verify a copy whose ExecStart points into DEST, with the installed
    # pages on MANPATH, so that the binary and the Documentation= pages
    # are checked as installed.
    mkdir -p "$WORK_DIR/verify"
    sed "s|^ExecStart=$exec_path|ExecStart=$DEST$exec_path|" "$UNIT" >"$WORK_DIR/verify/xdisk-fuse.service"
    man_dir=$(dirname "$(dirname "$(find "$DEST" -path '*/man8/xdisk-fuse.8' | head -n 1)")")
    out=$(cd "$WORK_DIR/verify" && MANPATH=$man_dir timeout 60 systemd-analyze verify ./xdisk-fuse.service 2>&1) ||
      fail "systemd-analyze verify: $out"
    [ -z "$out" ] || fail "systemd-analyze verify warns: $out"
  else
    log "SKIP (part): no systemd-analyze"
  fi
else
  log "SKIP (part): no meson or no configured build at $BUILD_DIR; install not checked"
fi

# ---- the configuration file, end to end --------------------------------------

# expect_config_error TEXT WANT: a daemon reading a file with TEXT exits 2
# and says WANT (FILE is replaced by the file's path) on stderr only.
expect_config_error() {
  local text=$1 want=$2 conf=$WORK_DIR/bad.conf rc=0
  printf '%s' "$text" >"$conf"
  timeout 10 "$XDISK" --config "$conf" >"$WORK_DIR/bad.out" 2>"$WORK_DIR/bad.err" || rc=$?
  [ "$rc" = 2 ] || fail "config '$text': exit status $rc, want 2 ($(cat "$WORK_DIR/bad.err"))"
  grep -qF -- "${want//FILE/$conf}" "$WORK_DIR/bad.err" ||
    fail "config '$text': message is not '${want//FILE/$conf}': $(cat "$WORK_DIR/bad.err")"
  [ ! -s "$WORK_DIR/bad.out" ] || fail "config '$text': wrote to stdout"
}

log "configuration errors exit 2 and name the file and line"
expect_config_error $'listen 127.0.0.1:1\n# a comment\n\nlisen 127.0.0.1\n' "FILE:4: unknown key 'lisen'"
expect_config_error $'# x\nlisten = 127.0.0.1:x\n' "FILE:2: listen: bad port 'x'"
expect_config_error $'listen 127.0.0.1\nconfig /etc/other.conf\n' "FILE:2: 'config'"
rc=0
timeout 10 "$XDISK" --config "$WORK_DIR/no-such.conf" 2>"$WORK_DIR/missing.err" || rc=$?
[ "$rc" = 2 ] || fail "missing --config file: exit status $rc, want 2"
grep -qF -- "$WORK_DIR/no-such.conf" "$WORK_DIR/missing.err" ||
  fail "missing --config file is not named: $(cat "$WORK_DIR/missing.err")"

make_keys "$WORK_DIR/keys" 127.0.0.1
P1=$(free_port)
P2=$(free_port)
while [ "$P2" = "$P1" ]; do P2=$(free_port); done
CONF=$WORK_DIR/xdisk-fuse.conf
cat >"$CONF" <<EOF
# Written by $TEST_NAME.
listen = 127.0.0.1:$P1    # the file's address
keys $WORK_DIR/keys
state-dir $WORK_DIR/state
control $WORK_DIR/control.sock
log-level info
EOF

log "a daemon configured by a file listens where the file says"
start_daemon D1 conf "$XDISK" --config "$CONF"
wait_listening "$P1" || fail "not listening on the file's port $P1: $(cat "$WORK_DIR/conf.log")"
rc=0
stop_daemon "$D1" || rc=$?
[ "$rc" = 0 ] || fail "SIGTERM: exit status $rc, want 0"

log "--listen on the command line replaces the file's listen"
start_daemon D2 override "$XDISK" --config "$CONF" --listen "127.0.0.1:$P2"
wait_listening "$P2" || fail "not listening on the command line's port $P2"
if ss -Hltn "sport = :$P1" | grep -q .; then
  fail "also listening on the file's port $P1"
fi
rc=0
stop_daemon "$D2" || rc=$?
[ "$rc" = 0 ] || fail "SIGTERM: exit status $rc, want 0"

scan_logs
log "PASS"
