#!/bin/bash
# Encrypted links (docs/link-crypto.md) between two daemons on loopback:
# - `xdisk-fuse keygen` makes rsa.prv (0400) and rsa.pub (0444) in a 0700
#   directory and never overwrites them;
# - with each side's rsa.pub as the other's remote/127.0.0.1.pub, the link
#   comes up as dragonfly-gcm-a on both sides (log and `xdiskctl links`),
#   through a relaying man in the middle; fio --verify and an ext4 round
#   trip run through it, and the relayed bytes never show the plaintext;
# - a peer with the wrong key is refused on both sides ("bad handshake"),
#   a .none peer against a .pub side is refused on both sides with a line
#   that says so (once, though it retries), and neither refusal disturbs
#   the working link; `xdiskctl links` shows the last refusal's kind ("key
#   mismatch", "policy mismatch", after the flip below "bad tag");
# - the man in the middle flips one byte of a write: the exporter drops the
#   link on the bad tag, the importer reconnects and resends, and the disk
#   holds exactly what was written;
# - both daemons exit 0 on SIGTERM and the logs hold only what the test
#   caused.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test crypt1 512 fio losetup mkfs.ext4 e2fsck sha256sum cmp dd python3 stat timeout
need_xdiskctl

FS=$WORK_DIR/fs
EK=$WORK_DIR/ekeys
IK=$WORK_DIR/ikeys
mkdir -p "$FS"

# keygen DIR NAME: xdisk-fuse keygen --keys DIR, output in $WORK_DIR/NAME.out.
keygen() {
  local rc=0
  timeout 120 "$XDISK" keygen --keys "$1" >"$WORK_DIR/$2.out" 2>"$WORK_DIR/$2.err" || rc=$?
  [ "$rc" = 0 ] || fail "keygen --keys $1: exit status $rc: $(cat "$WORK_DIR/$2.err")"
}

log "keygen: a key pair with the right modes, never overwritten"
keygen "$EK" keygen-e
keygen "$IK" keygen-i
[ "$(stat -c %a "$EK")" = 700 ] || fail "keys directory mode $(stat -c %a "$EK"), want 700"
[ "$(stat -c %a "$EK/rsa.prv")" = 400 ] || fail "rsa.prv mode $(stat -c %a "$EK/rsa.prv"), want 400"
[ "$(stat -c %a "$EK/rsa.pub")" = 444 ] || fail "rsa.pub mode $(stat -c %a "$EK/rsa.pub"), want 444"
[ -d "$EK/remote" ] || fail "keygen did not create remote/"
grep -q "BEGIN RSA PRIVATE KEY" "$EK/rsa.prv" || fail "rsa.prv is not a PKCS#1 PEM key"
grep -q "BEGIN PUBLIC KEY" "$EK/rsa.pub" || fail "rsa.pub is not a SubjectPublicKeyInfo PEM key"
grep -q "remote/" "$WORK_DIR/keygen-e.out" || fail "keygen does not say where the key goes"
cmp -s <(sed -n '/BEGIN PUBLIC KEY/,/END PUBLIC KEY/p' "$WORK_DIR/keygen-e.out") "$EK/rsa.pub" ||
  fail "keygen does not print the public key to copy"
if command -v openssl >/dev/null; then
  bits=$(openssl rsa -in "$EK/rsa.prv" -noout -text 2>/dev/null | sed -n 's/.*Private-Key: (\([0-9]*\) bit.*/\1/p')
  [ "$bits" = 2048 ] || fail "rsa.prv has ${bits:-no} bits, want 2048"
fi
before=$(sha256sum "$EK/rsa.prv" "$EK/rsa.pub")
keygen "$EK" keygen-again
grep -q "rsa.prv exists: kept" "$WORK_DIR/keygen-again.out" || fail "second keygen: $(cat "$WORK_DIR/keygen-again.out")"
[ "$(sha256sum "$EK/rsa.prv" "$EK/rsa.pub")" = "$before" ] || fail "a second keygen changed the keys"
trust_each_other "$EK" "$IK"

log "an encrypted link through a man in the middle: dragonfly-gcm-a on both sides"
start_proxied_pair
for n in exporter importer; do
  grep -q "handshake verified with .*/remote/127.0.0.1.pub, stream dragonfly-gcm-a" "$WORK_DIR/$n.log" ||
    fail "$n did not log a verified handshake"
done
for sock in exp imp; do
  expect_link "$WORK_DIR/$sock.sock" dragonfly-gcm-a
  "$XDISKCTL" --control "$WORK_DIR/$sock.sock" --json links >"$WORK_DIR/links.json"
  [ "$(json "$WORK_DIR/links.json" links | grep -o dragonfly-gcm-a | wc -l)" = 1 ] ||
    fail "xdiskctl --json links ($sock): $(cat "$WORK_DIR/links.json")"
done

log "fio --verify through the encrypted link"
fio_verify crypt

log "ext4 round trip through the encrypted link"
attach_loop LOOP "$MNT/xa0" --direct-io=on --offset $((128 * MIB)) --sizelimit $((256 * MIB))
timeout -k 5 120 mkfs.ext4 -q -F "$LOOP"
timeout -k 5 60 mount "$LOOP" "$FS"
mount_cleanup "$FS"
CANARY="plaintext-canary-$RANDOM$RANDOM$RANDOM"
for i in $(seq 1 64); do echo "$CANARY $i"; done >"$FS/canary"
for i in 1 2 3 4 5 6; do head -c $((1 * MIB + RANDOM)) /dev/urandom >"$FS/f$i"; done
(cd "$FS" && sha256sum canary f* >"$WORK_DIR/sums")
timeout -k 5 60 umount "$FS"
timeout -k 5 120 e2fsck -fn "$LOOP" >"$WORK_DIR/e2fsck.log" 2>&1 || {
  cat "$WORK_DIR/e2fsck.log" >&2
  fail "e2fsck on the encrypted disk"
}
timeout -k 5 60 mount "$LOOP" "$FS"
(cd "$FS" && sha256sum -c --quiet "$WORK_DIR/sums") || fail "contents after remount"
timeout -k 5 60 umount "$FS"
losetup -d "$LOOP"
grep -qaF "$CANARY" "$IMG" || fail "the canary did not reach the exported image"
[ -s "$WORK_DIR/capture" ] || fail "the proxy captured nothing"
! grep -qaF "$CANARY" "$WORK_DIR/capture" || fail "the canary crossed the wire in plaintext"

log "a peer with the wrong key is refused on both sides"
WK=$WORK_DIR/wkeys
keygen "$WK" keygen-w
cp "$EK/rsa.pub" "$WK/remote/127.0.0.1.pub" # the exporter expects the importer's key, not this one
start_daemon DW wrongkey "$XDISK" --connect "127.0.0.1:$PORT" --keys "$WK" \
  --state-dir "$WORK_DIR/state-wrongkey"
wait_for "grep -q 'refused: bad handshake' '$WORK_DIR/wrongkey.log'" 15 ||
  fail "the wrong-key side did not log its refusal"
wait_for "grep -q 'refused: bad handshake' '$WORK_DIR/exporter.log'" 15 ||
  fail "the exporter did not log its refusal of the wrong key"
grep -q "up: peer" "$WORK_DIR/wrongkey.log" && fail "a link with the wrong key came up"
expect_refusal "$WORK_DIR/exp.sock" 127.0.0.1 "key mismatch"
stop_ok "$DW" 10 "wrong-key daemon"

log ".none on one side, .pub on the other: refused on both sides"
NK=$WORK_DIR/nkeys
make_keys "$NK" 127.0.0.1
start_daemon DN plain "$XDISK" --connect "127.0.0.1:$PORT" --keys "$NK" \
  --state-dir "$WORK_DIR/state-plain"
wait_for "grep -q 'the peer may be sending an encrypted handshake' '$WORK_DIR/plain.log'" 15 ||
  fail "the .none side did not say why it dropped the link"
wait_for "grep -q 'refused: the peer speaks plaintext' '$WORK_DIR/exporter.log'" 15 ||
  fail "the .pub side did not say why it refused"
grep -q "up: peer" "$WORK_DIR/plain.log" && fail "a .none link to a .pub side came up"
expect_refusal "$WORK_DIR/exp.sock" 127.0.0.1 "policy mismatch"
# It retries; each side logs its refusal once all the same.
wait_for "[ \$(grep -c ': connected\$' '$WORK_DIR/plain.log') -ge 3 ]" 20 ||
  fail "the .none side did not retry"
[ "$(grep -c 'may be sending an encrypted handshake' "$WORK_DIR/plain.log")" = 1 ] ||
  fail "the .none side logged its refusal more than once"
[ "$(grep -c 'refused: the peer speaks plaintext' "$WORK_DIR/exporter.log")" = 1 ] ||
  fail "the .pub side logged its refusal more than once"
stop_ok "$DN" 10 ".none daemon"
require_alive "$EXP" "after the refusals"
"$XDISKCTL" --control "$WORK_DIR/imp.sock" links >"$WORK_DIR/links.txt"
grep -qE " up .* dragonfly-gcm-a " "$WORK_DIR/links.txt" ||
  fail "the refusals disturbed the working link: $(cat "$WORK_DIR/links.txt")"
[ "$(grep -c 'handshake verified' "$WORK_DIR/importer.log")" = 1 ] ||
  fail "the working link was lost during the refusals"

log "the man in the middle flips one byte of a write: bad tag, reconnect, resend"
tampered_write 400 'dropping link: bad tag on chunk'
wait_for "[ \$(grep -c 'handshake verified' '$WORK_DIR/importer.log') -ge 2 ]" 20 ||
  fail "the importer did not reconnect with a new handshake"
dd if="$MNT/xa0" bs=1M skip=400 count=4 iflag=direct status=none | cmp - "$WORK_DIR/rand" ||
  fail "reading back through the link differs"

log "SIGTERM: both daemons exit 0"
stop_pair

# Expected: the two refusals on each side, the exporter's drop on the bad
# tag, and on the importer the lost path while it reconnects.
scan_logs "warning: link 127\.0\.0\.1:[0-9]+: (refused: bad handshake: .*wrong key on either side, or not a handshake\)|refused: the peer speaks plaintext .*|dropping link: bad tag on chunk [0-9]+ .*|refused: malformed frame: bad magic .*the peer may be sending an encrypted handshake .*)$|disk $SERIAL: no path left: I/O blocks"
log "PASS"
