#!/usr/bin/env python3
"""Independent DragonFly BSD "dmsg" protocol peer -- a test oracle.

Written from the protocol reference ONLY (no other implementation was consulted),
Python 3.11, standard library only.  Section references ("§3.2") point into
docs/dmsg-protocol.md.

It is both an importable library and a command line tool (see ``main()`` /
``--help``):

  * CRC-32C (§4), frame encoding and an incremental, fully validating frame decoder
    (§3), per-link sequence numbers (§3.6);
  * a socket ``Link`` with the two transaction tables L/R and the REVTRANS/REVCIRC
    rules of §5.2, which checks STRICTLY everything the remote sends against §5.4
    (and a few more rules of §3/§6/§7) and raises/records ``ProtocolViolation``;
  * LNK_CONN / LNK_SPAN / LNK_PING / LNK_ERROR handling (§6) and a block client
    (BLK_OPEN + pipelined READ/WRITE/FLUSH/FREEBLKS, §7) with strict reply checks;
  * ``BlockServer``: serves an image file as a BLOCK span (§6.4, §7, §9.1);
  * CLI: ``client`` (verify / ping / spans), ``server`` and ``malformed``.

Only the plaintext (".none", §2.1) transport is implemented; there is no crypto.

CLI (every mode prints JSON lines on stdout; events/warnings go to stderr):

  dmsg_peer.py client HOST PORT [--serial S] verify [--bytes 64MiB] [--qd 16] [--seed N]
        [--modes 1] [--no-probe] [--span-timeout 10] [--io-timeout 30]
  dmsg_peer.py client HOST PORT ping [--count 10]
  dmsg_peer.py client HOST PORT spans [--wait 2]
  dmsg_peer.py server (--listen HOST:PORT | --connect HOST:PORT) --image PATH
        --serial S --label L [--blksize 512] [--fail-on-violation]
  dmsg_peer.py malformed HOST PORT KIND [--timeout 5] [--hold 15] [--settle 0.3]
  (client/malformed also take --peer-type/--peer-mask/--label; -v logs every message)

Exit status: 0 success (malformed: the remote dropped the link), 1 failure.
The CRC is pure Python (~10 MB/s), so `verify --bytes 64MiB` takes ~40 s locally.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import queue
import random
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

# =====================================================================================
# Constants
# =====================================================================================

# §3.2 base header
DMSG_HDR_MAGIC = 0x4832          # wire bytes 32 48
DMSG_HDR_MAGIC_REV = 0x3248      # byte-swapped sender (we reject it, §3.1: send LE)
HDR_BASE = 64
ALIGN = 64
HDR_FMT = struct.Struct("<HHIQQQIIIIQII")   # §10: magic,res02,salt,msgid,circuit,res18,
assert HDR_FMT.size == 64                   #      cmd,aux_crc,aux_bytes,error,aux_descr,
#                                                  res38,hdr_crc
HDR_CRC_OFF = 0x3C

# §3.5 limits
HDR_MAX_UNITS = 32               # 2048 bytes
AUX_MAX = 1 << 20                # 1 MiB (checked on the padded size, like libdmsg)

# §3.3 cmd flags
F_CREATE = 0x80000000
F_DELETE = 0x40000000
F_REPLY = 0x20000000
F_ABORT = 0x10000000
F_REVTRANS = 0x08000000
F_REVCIRC = 0x04000000
F_FLAG1 = 0x02000000
F_FLAG0 = 0x01000000
FLAGS_MASK = 0xFF000000
CODE_MASK = 0x00FFFF00           # protocol + command code (no size units)
BASECMD_MASK = 0x00FFFFFF        # protocol + command + size units
SIZE_MASK = 0x000000FF

# §6.1 / §7.1 command values (with size units, without flags)
LNK_PAD = 0x00000001
LNK_PING = 0x00000101
LNK_AUTH = 0x00001002
LNK_CONN = 0x00001106            # E2/E3 layout, 6 units
LNK_SPAN = 0x00001207
LNK_VOLCONF = 0x00002008
LNK_ERROR = 0x000FFF01
DBG_SHELL = 0x00100101
BLK_OPEN = 0x00500102
BLK_CLOSE = 0x00500202
BLK_READ = 0x00500302
BLK_WRITE = 0x00500402
BLK_FLUSH = 0x00500502
BLK_FREEBLKS = 0x00500602
BLK_ERROR = 0x005FFF03

# code (cmd & CODE_MASK) -> (name, expected size units, end of the defined fields).
# §3.3: receivers compare the full base command including the size units, so a known
# command code with another header size is a protocol error (§3.4 gives the units).
# fields_end is used to check that the header padding is zero (§3.1).
KNOWN_CMDS = {
    LNK_PAD & CODE_MASK: ("LNK_PAD", 1, 64),
    LNK_PING & CODE_MASK: ("LNK_PING", 1, 64),
    LNK_AUTH & CODE_MASK: ("LNK_AUTH", 2, 128),
    LNK_CONN & CODE_MASK: ("LNK_CONN", 6, 324),
    LNK_SPAN & CODE_MASK: ("LNK_SPAN", 7, 432),
    LNK_VOLCONF & CODE_MASK: ("LNK_HAMMER2_VOLCONF", 8, 472),
    LNK_ERROR & CODE_MASK: ("LNK_ERROR", 1, 64),
    DBG_SHELL & CODE_MASK: ("DBG_SHELL", 1, 64),
    BLK_OPEN & CODE_MASK: ("BLK_OPEN", 2, 72),
    BLK_CLOSE & CODE_MASK: ("BLK_CLOSE", 2, 72),
    BLK_READ & CODE_MASK: ("BLK_READ", 2, 96),
    BLK_WRITE & CODE_MASK: ("BLK_WRITE", 2, 96),
    BLK_FLUSH & CODE_MASK: ("BLK_FLUSH", 2, 96),
    BLK_FREEBLKS & CODE_MASK: ("BLK_FREEBLKS", 2, 96),
    BLK_ERROR & CODE_MASK: ("BLK_ERROR", 3, 144),
}
BLK_IO_CMDS = (BLK_READ, BLK_WRITE, BLK_FLUSH, BLK_FREEBLKS)

# §5.6 error codes
DMSG_ERR_NOSUPP = 0x20
DMSG_ERR_LOSTLINK = 0x21
DMSG_ERR_IO = 0x22
DMSG_ERR_PARAM = 0x23
DMSG_ERR_CANTCIRC = 0x24
ERR_NAMES = {0: "OK", 0x20: "NOSUPP", 0x21: "LOSTLINK", 0x22: "IO", 0x23: "PARAM",
             0x24: "CANTCIRC"}

# §6.2 peer types
PEER_NONE = 0
PEER_ROUTER = 1
PEER_BLOCK = 2
PEER_HAMMER2 = 3
PEER_CLIENT = 63
PFS_TYPE_SERVER = 3              # §6.3/§6.4: sent in BLOCK spans (needed by E1)
PROTO_VERSION = 1

# §7.2 BLK_OPEN modes
BLK_MODE_READ = 0x1
BLK_MODE_WRITE = 0x2

MAXPHYS = 128 * 1024             # §7.4: DragonFly clients never send more per request
NIL_UUID = bytes(16)


def cmd_name(cmd: int) -> str:
    """Human readable cmd: 'LNK_ERROR|REPLY|CREATE' (for messages/logs)."""
    code = cmd & CODE_MASK
    name = KNOWN_CMDS.get(code, ("0x%06x" % code,))[0]
    if code in KNOWN_CMDS and KNOWN_CMDS[code][1] != cmd & SIZE_MASK:
        name += "(units=%d)" % (cmd & SIZE_MASK)
    for bit, n in ((F_CREATE, "CREATE"), (F_DELETE, "DELETE"), (F_REPLY, "REPLY"),
                   (F_ABORT, "ABORT"), (F_REVTRANS, "REVTRANS"), (F_REVCIRC, "REVCIRC"),
                   (F_FLAG1, "FLAG1"), (F_FLAG0, "FLAG0")):
        if cmd & bit:
            name += "|" + n
    return name


def flag_names(flags: int) -> str:
    """'REPLY|CREATE|REVTRANS' for the flag bits of a cmd (or 'none')."""
    names = [n for bit, n in ((F_CREATE, "CREATE"), (F_DELETE, "DELETE"),
                              (F_REPLY, "REPLY"), (F_ABORT, "ABORT"),
                              (F_REVTRANS, "REVTRANS"), (F_REVCIRC, "REVCIRC"),
                              (F_FLAG1, "FLAG1"), (F_FLAG0, "FLAG0")) if flags & bit]
    return "|".join(names) or "none"


class ProtocolViolation(Exception):
    """The remote sent something a DragonFly peer (libdmsg) would reject or assert on."""


class LinkDown(Exception):
    """The link died (EOF, socket error, protocol violation) before the operation ended."""


# =====================================================================================
# §4 CRC-32C (Castagnoli): reflected poly 0x82F63B78, init/xorout 0xFFFFFFFF.
# Pure Python, table driven (slicing-by-8), ~10 MB/s.  crc32c(data, prev) chains like
# zlib.crc32: crc32c(a + b) == crc32c(b, crc32c(a)).
# =====================================================================================

CRC32C_POLY = 0x82F63B78


def _crc_tables():
    t0 = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ CRC32C_POLY if c & 1 else c >> 1
        t0.append(c)
    tabs = [t0]
    for _ in range(7):  # table k = effect of a byte followed by k zero bytes
        prev = tabs[-1]
        tabs.append([(prev[i] >> 8) ^ t0[prev[i] & 0xFF] for i in range(256)])
    return tabs


_CRC_T = _crc_tables()
_Q = struct.Struct("<Q")


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C of a bytes-like object (table driven, 8 bytes per step)."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _CRC_T
    crc ^= 0xFFFFFFFF
    mv = memoryview(data).cast("B")
    m = len(mv) & ~7
    for (q,) in _Q.iter_unpack(mv[:m]):
        q ^= crc
        crc = (t7[q & 0xFF] ^ t6[(q >> 8) & 0xFF] ^ t5[(q >> 16) & 0xFF]
               ^ t4[(q >> 24) & 0xFF] ^ t3[(q >> 32) & 0xFF] ^ t2[(q >> 40) & 0xFF]
               ^ t1[(q >> 48) & 0xFF] ^ t0[q >> 56])
    for b in mv[m:]:
        crc = t0[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c_bitwise(data, crc: int = 0) -> int:
    """Bit-at-a-time reference implementation (slow; used to cross-check the table)."""
    crc ^= 0xFFFFFFFF
    for b in bytes(data):
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ CRC32C_POLY if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def crc_self_test() -> None:
    """§10 TV1/TV2 (run at import; raises AssertionError if the CRC is broken)."""
    if crc32c(b"123456789") != 0xE3069283:                       # TV1
        raise AssertionError("CRC-32C TV1 failed")
    if crc32c(bytes(64)) != 0x03C8EB67:                          # TV2
        raise AssertionError("CRC-32C TV2 failed")
    if crc32c_bitwise(b"123456789") != 0xE3069283:
        raise AssertionError("bitwise CRC-32C TV1 failed")
    if crc32c(b"56789", crc32c(b"1234")) != 0xE3069283:
        raise AssertionError("CRC-32C chaining failed")


crc_self_test()


def pad64(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


# =====================================================================================
# §3 Frames
# =====================================================================================

@dataclass
class Frame:
    """One decoded message.  ``header`` = the full padded header as received,
    ``aux`` = the aux data WITHOUT padding (aux_bytes long)."""
    magic: int
    reserved02: int
    salt: int
    msgid: int
    circuit: int
    reserved18: int
    cmd: int
    aux_crc: int
    aux_bytes: int
    error: int
    aux_descr: int
    reserved38: int
    hdr_crc: int
    header: bytes = b""
    aux: bytes = b""

    @property
    def flags(self) -> int:
        return self.cmd & FLAGS_MASK

    @property
    def basecmd(self) -> int:
        return self.cmd & BASECMD_MASK

    @property
    def code(self) -> int:
        return self.cmd & CODE_MASK

    @property
    def units(self) -> int:
        return self.cmd & SIZE_MASK

    @property
    def ext(self) -> bytes:
        """Header bytes after the 64-byte base header (extended fields + padding)."""
        return self.header[HDR_BASE:]

    def describe(self) -> str:
        s = "%s msgid=0x%x circ=0x%x seq=%d" % (cmd_name(self.cmd), self.msgid,
                                                self.circuit, self.salt & 0xFF)
        if self.error:
            s += " err=0x%x(%s)" % (self.error, ERR_NAMES.get(self.error, "?"))
        if self.aux_bytes:
            s += " aux=%d" % self.aux_bytes
        return s


def encode_frame(cmd: int, *, msgid: int = 0, circuit: int = 0, salt: int = 0,
                 error: int = 0, ext: bytes = b"", aux: bytes = b"",
                 reserved02: int = 0, reserved18: int = 0, reserved38: int = 0,
                 # overrides, only for building deliberately malformed frames:
                 magic: int = DMSG_HDR_MAGIC, aux_descr: int = 0,
                 aux_bytes: Optional[int] = None, aux_crc: Optional[int] = None,
                 hdr_crc: Optional[int] = None, hdr_len: Optional[int] = None) -> bytes:
    """Build one message (§3): base header (LE) + ext fields, zero padded to
    units*64 (units = cmd & 0xFF), then aux zero padded to a multiple of 64.
    aux_crc over the padded aux (0 when there is no aux) is computed first, then
    hdr_crc over the whole padded header with the CRC field zero (§4)."""
    units = cmd & SIZE_MASK
    if hdr_len is None:
        hdr_len = max(units, 1) * 64
    if HDR_BASE + len(ext) > hdr_len:
        raise ValueError("extended header (%d bytes) does not fit %d header bytes"
                         % (len(ext), hdr_len))
    aux_padded = bytes(aux) + bytes(pad64(len(aux)) - len(aux))
    if aux_crc is None:
        aux_crc = crc32c(aux_padded) if aux else 0
    if aux_bytes is None:
        aux_bytes = len(aux)
    hdr = bytearray(hdr_len)
    HDR_FMT.pack_into(hdr, 0, magic, reserved02, salt & 0xFFFFFFFF, msgid, circuit,
                      reserved18, cmd, aux_crc, aux_bytes, error, aux_descr, reserved38, 0)
    hdr[HDR_BASE:HDR_BASE + len(ext)] = ext
    if hdr_crc is None:
        hdr_crc = crc32c(hdr)
    struct.pack_into("<I", hdr, HDR_CRC_OFF, hdr_crc)
    return bytes(hdr) + aux_padded


class FrameDecoder:
    """Incremental decoder with the §3/§4 receive checks.  feed() returns the
    complete frames; any format error raises ProtocolViolation (fatal for the link:
    the stream cannot be resynchronised, §3.1 "sync" error)."""

    def __init__(self, check_seq: bool = True):
        self.buf = bytearray()
        self.pos = 0
        self.rx_seq = 0              # §3.6: next expected sequence number
        self.check_seq = check_seq

    @property
    def pending(self) -> int:
        """Bytes buffered that do not form a complete frame yet."""
        return len(self.buf) - self.pos

    def feed(self, data) -> list[Frame]:
        self.buf += data
        out = []
        while True:
            f = self._one()
            if f is None:
                break
            out.append(f)
        if self.pos and (self.pos >= 65536 or self.pos == len(self.buf)):
            del self.buf[:self.pos]
            self.pos = 0
        return out

    def _one(self) -> Optional[Frame]:
        buf, p = self.buf, self.pos
        avail = len(buf) - p
        if avail < HDR_BASE:
            return None
        fields = HDR_FMT.unpack_from(buf, p)
        (magic, _r02, salt, msgid, _circ, _r18, cmd, aux_crc, aux_bytes, _err,
         aux_descr, _r38, hdr_crc) = fields
        # §3.2 magic: anything but 0x4832 is fatal.  libdmsg tolerates a byte-swapped
        # (0x3248) sender but the spec requires LE senders (§3.1), so we reject it.
        if magic == DMSG_HDR_MAGIC_REV:
            raise ProtocolViolation("byte-swapped header (magic 0x3248): a peer must "
                                    "send little-endian (§3.1)")
        if magic != DMSG_HDR_MAGIC:
            raise ProtocolViolation("bad magic 0x%04x (expected 0x4832, §3.2)" % magic)
        units = cmd & SIZE_MASK
        if not 1 <= units <= HDR_MAX_UNITS:            # §3.5 header 64..2048 bytes
            raise ProtocolViolation("header size units %d outside 1..%d (cmd 0x%08x, §3.5)"
                                    % (units, HDR_MAX_UNITS, cmd))
        if aux_descr != 0:                             # §3.2/§3.5 in-band aux only
            raise ProtocolViolation("aux_descr 0x%x != 0 (§3.5)" % aux_descr)
        apad = pad64(aux_bytes)
        if apad > AUX_MAX:                             # §3.5 DMSG_AUX_MAX
            raise ProtocolViolation("aux_bytes %d exceeds 1 MiB limit (§3.5)" % aux_bytes)
        if aux_bytes == 0 and aux_crc != 0:            # §4: sent as 0 without aux
            raise ProtocolViolation("aux_crc 0x%08x non-zero with aux_bytes 0 (§4)" % aux_crc)
        hlen = units * 64
        if avail < hlen + apad:
            return None
        header = bytearray(buf[p:p + hlen])
        struct.pack_into("<I", header, HDR_CRC_OFF, 0)
        calc = crc32c(header)
        if calc != hdr_crc:                            # §4 hdr_crc (libdmsg asserts!)
            raise ProtocolViolation("header CRC mismatch: got 0x%08x computed 0x%08x "
                                    "(cmd 0x%08x, §4)" % (hdr_crc, calc, cmd))
        struct.pack_into("<I", header, HDR_CRC_OFF, hdr_crc)
        aux = b""
        if aux_bytes:
            auxmv = memoryview(buf)[p + hlen:p + hlen + apad]
            calc = crc32c(auxmv)
            if calc != aux_crc:                        # §4 aux_crc over padded aux
                auxmv.release()
                raise ProtocolViolation("aux CRC mismatch: got 0x%08x computed 0x%08x "
                                        "(cmd 0x%08x, aux_bytes %d, §4)"
                                        % (aux_crc, calc, cmd, aux_bytes))
            aux = bytes(auxmv[:aux_bytes])
            if any(auxmv[aux_bytes:]):                 # §3.5 pad bytes zero
                auxmv.release()
                raise ProtocolViolation("aux padding bytes not zero (§3.5)")
            auxmv.release()
        if self.check_seq and (salt & 0xFF) != (self.rx_seq & 0xFF):   # §3.6 MSGSEQ
            raise ProtocolViolation("sequence number %d in salt, expected %d (message #%d, "
                                    "§3.6)" % (salt & 0xFF, self.rx_seq & 0xFF, self.rx_seq))
        self.rx_seq += 1
        self.pos = p + hlen + apad
        return Frame(*fields, header=bytes(header), aux=aux)


# =====================================================================================
# Extended header layouts (§6.2, §6.3, §7.2)
# =====================================================================================

def _label(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else bytes(s)
    if len(b) > 127:
        raise ValueError("label longer than 127 bytes")
    return b + bytes(128 - len(b))


def _unlabel(b: bytes) -> str:
    b = bytes(b[:127])                   # §6.3: receivers force byte 127 to NUL
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


# §6.2 LNK_CONN (E2/E3): media_id, peer_id, reserved01, peer_mask, peer_type,
# reserved02, proto_version, status, rnss, reserved03[8], reserved04[56], peer_label
CONN_FMT = struct.Struct("<16s16s16sQBBHII8s56s128s")
assert HDR_BASE + CONN_FMT.size == 0x144


def pack_conn(*, peer_type: int, peer_mask: int, label: str = "",
              peer_id: bytes = NIL_UUID, media_id: bytes = NIL_UUID,
              proto_version: int = PROTO_VERSION) -> bytes:
    return CONN_FMT.pack(media_id, peer_id, bytes(16), peer_mask, peer_type, 0,
                         proto_version, 0, 0, bytes(8), bytes(56), _label(label))


def unpack_conn(ext: bytes) -> dict:
    (media_id, peer_id, _r1, peer_mask, peer_type, _r2, proto_version, status, rnss,
     _r3, _r4, label) = CONN_FMT.unpack_from(ext, 0)
    return dict(media_id=media_id.hex(), peer_id=peer_id.hex(), peer_mask=peer_mask,
                peer_type=peer_type, proto_version=proto_version, status=status,
                rnss=rnss, peer_label=_unlabel(label))


# §6.3 LNK_SPAN: peer_id, pfs_id, pfs_type, peer_type, proto_version, status,
# reserved02, dist, rnss, media{bytes u64, blksize u32, reserved u32, 40 zero},
# peer_label, pfs_label
SPAN_FMT = struct.Struct("<16s16sBBHIQIIQII40s128s128s")
assert HDR_BASE + SPAN_FMT.size == 0x1B0


def pack_span(*, peer_type: int = PEER_BLOCK, pfs_type: int = PFS_TYPE_SERVER,
              media_bytes: int = 0, blksize: int = 512, peer_label: str = "",
              pfs_label: str = "", peer_id: bytes = NIL_UUID, pfs_id: bytes = NIL_UUID,
              dist: int = 0, rnss: int = 0, proto_version: int = PROTO_VERSION) -> bytes:
    return SPAN_FMT.pack(peer_id, pfs_id, pfs_type, peer_type, proto_version, 0, 0,
                         dist, rnss, media_bytes, blksize, 0, bytes(40),
                         _label(peer_label), _label(pfs_label))


def unpack_span(ext: bytes) -> dict:
    (peer_id, pfs_id, pfs_type, peer_type, proto_version, status, _r2, dist, rnss,
     mbytes, blksize, _mres, _mpad, peer_label, pfs_label) = SPAN_FMT.unpack_from(ext, 0)
    return dict(peer_type=peer_type, pfs_type=pfs_type, proto_version=proto_version,
                status=status, dist=dist, rnss=rnss, bytes=mbytes, blksize=blksize,
                peer_label=_unlabel(peer_label), pfs_label=_unlabel(pfs_label),
                peer_id=peer_id.hex(), pfs_id=pfs_id.hex())


# §7.2 BLK_OPEN/BLK_CLOSE: modes, reserved01
OPEN_FMT = struct.Struct("<II")
# §7.2 BLK_READ/WRITE/FLUSH/FREEBLKS: keyid, offset, bytes, flags, reserved01, reserved02
IO_FMT = struct.Struct("<QQIIII")
# §7.2 BLK_ERROR: keyid, resid, reserved02, buf[64]
BLKERR_FMT = struct.Struct("<QII64s")


def pack_io(offset: int, nbytes: int, keyid: int = 0) -> bytes:
    return IO_FMT.pack(keyid, offset, nbytes, 0, 0, 0)


def unpack_io(ext: bytes) -> tuple[int, int, int]:
    keyid, offset, nbytes, _fl, _r1, _r2 = IO_FMT.unpack_from(ext, 0)
    return keyid, offset, nbytes


# =====================================================================================
# Transactions (§5)
# =====================================================================================

class Trans:
    """One transaction.  side 'L' = opened by us, 'R' = opened by the remote (§5.2)."""

    def __init__(self, side: str, msgid: int, parent: Optional["Trans"], cmd: int,
                 kind: str = "generic"):
        self.side = side
        self.msgid = msgid
        self.parent = parent
        self.cmd = cmd                  # basecmd of the opening message
        self.kind = kind                # conn, span, open, io, generic, ...
        self.tx_created = False         # we sent CREATE on it
        self.tx_deleted = False         # we sent DELETE on it
        self.rx_created = False         # remote sent CREATE on it
        self.rx_deleted = False         # remote sent DELETE on it
        self.children: set[Trans] = set()
        self.ticket: Optional[Ticket] = None
        self.close_ticket: Optional[Ticket] = None
        self.info: dict = {}

    def __repr__(self):
        return "<Trans %s 0x%x %s>" % (self.side, self.msgid, self.kind)


@dataclass
class IoResult:
    error: int                  # head.error of the reply (0 = success)
    resid: int = 0              # BLK_ERROR resid (bytes not transferred)
    data: bytes = b""           # read data (zero filled to the requested length)
    cmd: int = 0                # cmd of the reply
    aux_bytes: int = 0          # aux_bytes of the reply
    synthesized: bool = False   # LOSTLINK generated locally (§5.3/§5.7)

    @property
    def ok(self) -> bool:
        return self.error == 0 and self.resid == 0


class Ticket:
    """A pending request (future).  Completed by the reader thread."""

    def __init__(self, kind: str, offset: int = 0, nbytes: int = 0):
        self.kind = kind
        self.offset = offset
        self.nbytes = nbytes
        self.event = threading.Event()
        self.result: Optional[IoResult] = None
        self.exc: Optional[BaseException] = None
        self.t_submit = time.monotonic()

    def done(self) -> bool:
        return self.event.is_set()

    def _complete(self, result: IoResult):
        if not self.event.is_set():
            self.result = result
            self.event.set()

    def _fail(self, exc: BaseException):
        if not self.event.is_set():
            self.exc = exc
            self.event.set()


# =====================================================================================
# Link
# =====================================================================================

def _log(event: str, **kw):
    kw = {"event": event, **kw}
    try:
        sys.stderr.write(json.dumps(kw) + "\n")
        sys.stderr.flush()
    except Exception:
        pass


class Link:
    """A dmsg link over a connected stream socket (plaintext, §2.1 '.none').

    Threads: one reader (decodes + dispatches, runs all handlers) and one writer
    (drains a FIFO, so the reader never blocks on a full socket).  All protocol
    state is protected by ``self.lock``; sequence numbers are assigned under that
    lock in the same order as the frames are queued, so wire order == seq order.

    strict=True: a ProtocolViolation from the remote kills the link (the reason is
    in ``self.violation``).  strict=False: semantic violations are only recorded in
    ``self.violations`` and the offending message is dropped (framing errors are
    always fatal because the stream cannot be resynchronised).
    """

    def __init__(self, sock: socket.socket, *, peer_type: int = PEER_CLIENT,
                 peer_mask: int = 1 << PEER_BLOCK, label: str = "",
                 peer_id: bytes = NIL_UUID, strict: bool = True, name: str = "link",
                 verbose: bool = False):
        self.sock = sock
        self.name = name
        self.strict = strict
        self.verbose = verbose
        self.conn_fields = dict(peer_type=peer_type, peer_mask=peer_mask, label=label,
                                peer_id=peer_id)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # §1.2
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)   # §6.5/§9.1
        except OSError:
            pass
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)     # spans / ping / state changes
        self.decoder = FrameDecoder()
        self.tx_seq = 0                                 # §3.6
        self.txq: "queue.Queue[Optional[bytes]]" = queue.Queue()
        self.L: dict[int, Trans] = {}                   # §5.2 opened by us
        self.R: dict[int, Trans] = {}                   # §5.2 opened by the remote
        self.L_dead: dict[int, None] = {}               # closed msgids (ordered "set")
        self.R_dead: dict[int, None] = {}
        # §5.1: any non-zero 64-bit msgid; ours look like kernel addresses, step 64,
        # never reused on a link.
        base = 0xFFFFF80000000000 | (random.getrandbits(24) << 16)
        self._msgids = itertools.count(base, 0x40)
        self.conn: Optional[Trans] = None               # our LNK_CONN
        self.conn_acked = False
        self.peer_conn: Optional[Trans] = None          # remote's LNK_CONN
        self.peer_conn_info: Optional[dict] = None
        self.peer_conn_count = 0
        self.spans: dict[int, dict] = {}                # remote span msgid -> fields
        self.span_trans: dict[int, Trans] = {}
        self.my_span: Optional[Trans] = None            # server mode: our LNK_SPAN
        self.pings_sent = 0
        self.ping_replies = 0
        self.rx_count = 0
        self.rx_log: list[str] = []                     # last few received messages
        self.violations: list[str] = []
        self.violation: Optional[str] = None            # fatal one
        self.warnings: list[str] = []
        self.dead = threading.Event()
        self.dead_reason: Optional[str] = None
        self.remote_closed = False                      # EOF/reset seen from remote
        self.muted = False              # malformed tests: send nothing after bad input
        # hooks
        self.on_conn_acked: Optional[Callable[[Link], None]] = None
        self.create_handler: Optional[Callable[[Link, Trans, Frame], bool]] = None
        self.on_dead: Optional[Callable[[Link], None]] = None
        self._reader = threading.Thread(target=self._reader_main, daemon=True,
                                        name=name + "-rx")
        self._writer = threading.Thread(target=self._writer_main, daemon=True,
                                        name=name + "-tx")

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 10.0, **kw) -> "Link":
        s = socket.create_connection((host, port), timeout=timeout)
        s.settimeout(None)
        return cls(s, **kw)

    def start(self, send_conn: bool = True) -> "Link":
        """Start the threads and (§1.3 step 3) send our LNK_CONN immediately."""
        self._writer.start()
        self._reader.start()
        if send_conn:
            self.send_conn()
        return self

    def send_conn(self) -> Trans:
        c = self.conn_fields
        ext = pack_conn(peer_type=c["peer_type"], peer_mask=c["peer_mask"],
                        label=c["label"], peer_id=c["peer_id"])
        with self.lock:
            self.conn = self.open_trans(None, LNK_CONN, ext=ext, kind="conn")
        return self.conn

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until our LNK_CONN is acked and the remote's LNK_CONN was received
        (and acked by us): §1.3 steps 3/4."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (self.conn_acked and self.peer_conn is not None):
                self._raise_if_dead()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("LNK_CONN exchange not complete after %.1fs "
                                       "(our CONN acked: %s, remote CONN seen: %s)"
                                       % (timeout, self.conn_acked,
                                          self.peer_conn is not None))
                self.cond.wait(min(left, 0.2))

    def close(self) -> None:
        self._die("closed locally", local=True)
        for t in (self._reader, self._writer):
            if t.is_alive() and t is not threading.current_thread():
                t.join(2)
        try:
            self.sock.close()
        except OSError:
            pass

    def _raise_if_dead(self):
        if self.dead.is_set():
            raise LinkDown(self.dead_reason or "link down")

    def _die(self, reason: str, *, violation: Optional[str] = None, local=False,
             eof=False):
        with self.cond:
            if self.dead.is_set():
                return
            self.dead_reason = reason
            if violation:
                self.violation = violation
            self.remote_closed = eof
            self.dead.set()
            # §5.7: every open transaction dies; pending requests fail.
            exc = LinkDown(reason)
            for t in list(self.L.values()) + list(self.R.values()):
                for tk in (t.ticket, t.close_ticket):
                    if tk:
                        tk._fail(exc)
            self.cond.notify_all()
        self.txq.put(None)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.on_dead:
            try:
                self.on_dead(self)
            except Exception:
                pass

    # ------------------------------------------------------------------ threads
    def _writer_main(self):
        try:
            while True:
                data = self.txq.get()
                if data is None:
                    break
                self.sock.sendall(data)
        except OSError as e:
            self._die("send failed: %s" % e, eof=True)

    def _reader_main(self):
        try:
            while True:
                data = self.sock.recv(1 << 18)
                if not data:
                    extra = ""
                    if self.decoder.pending:
                        extra = " (%d bytes of an incomplete frame buffered)" % \
                            self.decoder.pending
                    self._die("remote closed the connection (EOF)" + extra, eof=True)
                    return
                for f in self.decoder.feed(data):
                    with self.cond:
                        if self.dead.is_set():
                            return
                        self.rx_count += 1
                        self.rx_log.append(f.describe())
                        del self.rx_log[:-20]
                        if self.verbose:
                            _log("rx", link=self.name, msg=f.describe())
                        try:
                            self._dispatch(f)
                        except ProtocolViolation as e:
                            msg = "%s [message: %s]" % (e, f.describe())
                            if self.strict:
                                raise ProtocolViolation(msg) from None
                            self.violations.append(msg)
                            _log("violation", link=self.name, fatal=False, msg=msg)
                        self.cond.notify_all()
        except ProtocolViolation as e:      # framing errors are always fatal
            self.violations.append(str(e))
            _log("violation", link=self.name, fatal=True, msg=str(e))
            self._die("protocol violation: %s" % e, violation=str(e))
        except LinkDown:
            return
        except OSError as e:
            self._die("receive failed: %s" % e, eof=True)
        except Exception as e:          # a bug in this peer: do not hang the callers
            import traceback
            traceback.print_exc()
            self._die("internal error in peer: %r" % e)

    # ------------------------------------------------------------------ sending
    def _enqueue(self, cmd: int, **kw) -> None:
        """Assign the next sequence number (§3.6) and queue the frame.  Caller
        holds self.lock."""
        if self.dead.is_set():
            raise LinkDown(self.dead_reason or "link down")
        if self.muted:
            return
        salt = (random.getrandbits(24) << 8) | (self.tx_seq & 0xFF)   # §3.2 salt
        self.tx_seq += 1
        data = encode_frame(cmd, salt=salt, **kw)
        if self.verbose:
            _log("tx", link=self.name, msg="%s msgid=0x%x circ=0x%x seq=%d" % (
                cmd_name(cmd), kw.get("msgid", 0), kw.get("circuit", 0), salt & 0xFF))
        self.txq.put(data)

    def send_raw(self, build: Callable[[int], bytes], advance: int = 1,
                 mute: bool = False) -> None:
        """Send arbitrary bytes; build(seq) gets the current tx sequence number.
        mute=True: afterwards the link sends nothing at all any more (so automatic
        answers cannot follow the bad input).  For the malformed-input tests only."""
        with self.lock:
            data = build(self.tx_seq)
            self.tx_seq += advance
            self.txq.put(data)
            self.muted = self.muted or mute

    def send_oneway(self, cmd: int, flags: int = 0, error: int = 0, ext=b"", aux=b""):
        """§5.1 one-way message: msgid 0, circuit 0, no CREATE/DELETE/ABORT."""
        assert not flags & (F_CREATE | F_DELETE | F_ABORT | F_REVTRANS | F_REVCIRC)
        with self.lock:
            self._enqueue(cmd | flags, error=error, ext=ext, aux=aux)

    def send_on(self, t: Trans, cmd: int, flags: int = 0, error: int = 0,
                ext: bytes = b"", aux: bytes = b"") -> None:
        """Send a message on transaction t with msgid/circuit/REVTRANS/REVCIRC/REPLY
        filled per §5.2, and track its CREATE/DELETE state.  Asserts that we never
        produce one of the §5.4 error cases ourselves."""
        with self.lock:
            flags &= ~(F_REPLY | F_REVTRANS | F_REVCIRC)
            if t.side == "R":
                flags |= F_REPLY | F_REVTRANS       # responder side; msgid in our R
            if t.parent is not None and t.parent.side == "R":
                flags |= F_REVCIRC                  # parent opened by the remote
            if t.tx_deleted:
                raise RuntimeError("peer bug: sending on %r after our DELETE" % t)
            if bool(flags & F_CREATE) == t.tx_created:
                raise RuntimeError("peer bug: CREATE flag wrong for %r" % t)
            if t.side == "R" and not t.rx_created:
                raise RuntimeError("peer bug: replying on %r before its CREATE" % t)
            self._enqueue(cmd | flags, msgid=t.msgid,
                          circuit=t.parent.msgid if t.parent else 0,
                          error=error, ext=ext, aux=aux)
            t.tx_created = True
            if flags & F_DELETE:
                t.tx_deleted = True
                self._maybe_retire(t)

    def open_trans(self, parent: Optional[Trans], cmd: int, flags: int = 0,
                   ext: bytes = b"", aux: bytes = b"", kind: str = "generic",
                   ticket: Optional[Ticket] = None) -> Trans:
        """Open a new transaction in L (CREATE, plus whatever flags)."""
        with self.lock:
            self._raise_if_dead()
            if parent is not None and \
                    (self.L if parent.side == "L" else self.R).get(parent.msgid) is not parent:
                raise LinkDown("parent transaction %r is gone" % parent)
            t = Trans("L", next(self._msgids), parent, cmd & BASECMD_MASK, kind)
            t.ticket = ticket
            self.L[t.msgid] = t
            if parent is not None:
                parent.children.add(t)
            self.send_on(t, cmd, F_CREATE | flags, ext=ext, aux=aux)
            return t

    def _maybe_retire(self, t: Trans) -> None:
        """§5.1: a transaction is finished when both sides have sent DELETE."""
        if t.tx_deleted and t.rx_deleted:
            self._retire(t)

    def _retire(self, t: Trans) -> None:
        tab, dead = (self.L, self.L_dead) if t.side == "L" else (self.R, self.R_dead)
        if tab.get(t.msgid) is t:
            del tab[t.msgid]
        dead[t.msgid] = None
        if len(dead) > 200000:
            for k in list(itertools.islice(dead, 100000)):
                del dead[k]
        if t.parent is not None:
            t.parent.children.discard(t)
        if t.kind == "span" and t.side == "R":
            self.spans.pop(t.msgid, None)
            self.span_trans.pop(t.msgid, None)

    def _terminate_children(self, t: Trans) -> None:
        """§5.3: termination of a parent implicitly terminates its children (no wire
        traffic).  Our pending requests complete with a local LOSTLINK."""
        for c in list(t.children):
            self._terminate_children(c)
            for tk in (c.ticket, c.close_ticket):
                if tk:
                    tk._complete(IoResult(error=DMSG_ERR_LOSTLINK, synthesized=True))
            c.tx_deleted = c.rx_deleted = True
            self._retire(c)

    # ------------------------------------------------------------------ receiving
    def _violation(self, msg: str):
        raise ProtocolViolation(msg)

    def _warn(self, msg: str):
        self.warnings.append(msg)
        _log("warning", link=self.name, msg=msg)

    def _check_shape(self, f: Frame):
        """§3.3/§3.4: known command codes must carry exactly their size units;
        §3.1: header padding is zero; §3.3: FLAG0/FLAG1 unused."""
        known = KNOWN_CMDS.get(f.code)
        if known:
            name, units, fields_end = known
            if f.units != units:
                self._violation("%s with %d header size units, expected %d (§3.3/§3.4%s)"
                                % (name, f.units, units,
                                   "; 8 units = legacy E1 LNK_CONN" if
                                   name == "LNK_CONN" and f.units == 8 else ""))
            if any(f.header[fields_end:]):
                self._violation("%s header padding after byte %d is not zero (§3.1)"
                                % (name, fields_end))
        if f.flags & (F_FLAG0 | F_FLAG1):
            self._violation("FLAG0/FLAG1 set (unused, must be 0, §3.3)")
        if f.reserved02 or f.reserved38:
            self._violation("reserved header field non-zero (§3.2)")

    def _lookup(self, msgid: int, rev: bool) -> Optional[Trans]:
        """§5.2: msgid (or circuit) is in L if REVTRANS (REVCIRC) is set, else in R."""
        return (self.L if rev else self.R).get(msgid)

    def _resolve_circuit(self, f: Frame):
        """Returns (parent, state): state in top/live/dead/unknown (§5.2/§5.3)."""
        rev = bool(f.flags & F_REVCIRC)
        if f.circuit == 0:
            if rev:
                self._violation("REVCIRC set with circuit 0 (§5.2)")
            return None, "top"
        p = self._lookup(f.circuit, rev)
        if p is not None:
            return p, "live"
        if f.circuit in (self.L_dead if rev else self.R_dead):
            return None, "dead"
        return None, "unknown"

    def _dispatch(self, f: Frame) -> None:
        self._check_shape(f)
        fl = f.flags
        C, D, Rp, A = fl & F_CREATE, fl & F_DELETE, fl & F_REPLY, fl & F_ABORT

        if not (C or D):
            return self._rx_nontransactional(f)

        # ---- transactional messages (§5.1/§5.2) ----
        if f.msgid == 0:
            self._violation("CREATE/DELETE message with msgid 0 (§5.1)")
        # §5.2: the responder (REPLY) names a transaction opened by the receiver (us),
        # so REPLY and REVTRANS must agree on every transactional message.
        if bool(Rp) != bool(fl & F_REVTRANS):
            self._violation("REPLY=%d but REVTRANS=%d: a %s must name a transaction "
                            "opened by %s (§5.2)" % (
                                bool(Rp), bool(fl & F_REVTRANS),
                                "reply" if Rp else "non-reply",
                                "the receiver (REVTRANS)" if Rp else "the sender"))
        parent, pstate = self._resolve_circuit(f)
        if pstate == "dead":
            # §5.3: the parent was terminated; DragonFly silently drops messages whose
            # circuit no longer exists.  Tolerated (benign teardown race).
            self._drop_child_of_dead(f)
            return
        if pstate == "unknown":
            self._violation("circuit 0x%x (REVCIRC=%d) names no transaction ever open "
                            "(§5.2/§5.4)" % (f.circuit, bool(fl & F_REVCIRC)))

        if C and not Rp:
            return self._rx_open(f, parent)

        table = self.L if Rp else self.R
        t = table.get(f.msgid)
        if t is None:
            if A:
                return          # §5.4/§5.5: ABORT on an unknown transaction is dropped
            closed = f.msgid in (self.L_dead if Rp else self.R_dead)
            what = "REPLY|CREATE" if C else ("REPLY|DELETE" if Rp else "DELETE")
            self._violation("%s for %s transaction 0x%x without ABORT (§5.4: libdmsg "
                            "assertion)" % (what, "an already closed" if closed else
                                            "an unknown", f.msgid))
        if t.parent is not parent:
            self._violation("circuit 0x%x (REVCIRC=%d) does not match the parent %r of "
                            "transaction %r (§5.2)" % (f.circuit, bool(fl & F_REVCIRC),
                                                      t.parent, t))
        if C:
            if t.rx_created:
                self._violation("second CREATE on transaction %r (§5.1/§5.4)" % t)
        elif not t.rx_created:
            self._violation("DELETE on %r before any CREATE from the remote (§5.1/§5.4)"
                            % t)
        if t.rx_deleted:
            if A and not C:
                return          # §5.5 "abort after delete" is silently discarded
            self._violation("message on %r after the remote's DELETE (§5.1/§5.4)" % t)
        if C:
            t.rx_created = True
        if D:
            t.rx_deleted = True
        if t.side == "L":
            self._rx_reply(t, f)
        else:
            self._rx_more(t, f)
        if t.rx_deleted:
            self._maybe_retire(t)

    def _drop_child_of_dead(self, f: Frame):
        if self.verbose:
            _log("drop", link=self.name, why="circuit already terminated",
                 msg=f.describe())

    def _rx_nontransactional(self, f: Frame) -> None:
        """One-way (msgid 0) or mid-stream messages: no CREATE and no DELETE."""
        fl = f.flags
        if f.msgid == 0:
            # §5.1 one-way: msgid 0, circuit 0, no direction bits.
            if f.circuit != 0 or fl & (F_REVTRANS | F_REVCIRC):
                self._violation("one-way message with circuit/REVTRANS/REVCIRC (§5.1)")
            if fl & F_ABORT:
                return
            if f.basecmd == LNK_PING:
                if fl & F_REPLY:
                    if self.ping_replies >= self.pings_sent:
                        self._warn("unsolicited LNK_PING|REPLY")
                    self.ping_replies += 1
                else:
                    self.send_oneway(LNK_PING, F_REPLY)          # §6.5
                return
            if f.basecmd in (LNK_ERROR, LNK_PAD):
                return          # §6.6: never answer a one-way LNK_ERROR; PAD ignored
            self._warn("ignored one-way message %s" % f.describe())
            return
        # mid-stream message on a transaction (§5.1 streaming)
        rev = bool(fl & F_REVTRANS)
        if bool(fl & F_REPLY) != rev:
            self._violation("REPLY/REVTRANS disagree on a mid-stream message (§5.2)")
        parent, pstate = self._resolve_circuit(f)
        if pstate == "dead":
            return
        t = self._lookup(f.msgid, rev)
        if t is None or not t.rx_created or t.rx_deleted:
            if fl & F_ABORT:
                return          # §5.4 last row: ABORT without live transaction: dropped
            self._violation("mid-stream message for %s transaction 0x%x (§5.1/§5.4)"
                            % ("an unknown" if t is None else "a not (or no longer) open",
                               f.msgid))
        if t.parent is not parent:
            self._violation("circuit mismatch on a mid-stream message for %r (§5.2)" % t)
        if fl & F_ABORT:
            return              # §5.5 mid-stream abort request: ignored (unsupported)
        self._warn("ignored mid-stream message %s on %r" % (f.describe(), t))

    # -- remote opens a transaction (CREATE without REPLY) --
    def _rx_open(self, f: Frame, parent: Optional[Trans]) -> None:
        if f.msgid in self.R:
            self._violation("duplicate CREATE: msgid 0x%x is already open (%r) (§5.4: "
                            "libdmsg assertion)" % (f.msgid, self.R[f.msgid]))
        t = Trans("R", f.msgid, parent, f.basecmd)
        t.rx_created = True
        t.rx_deleted = bool(f.flags & F_DELETE)
        self.R[f.msgid] = t
        self.R_dead.pop(f.msgid, None)
        if parent is not None:
            parent.children.add(t)
        code = f.basecmd
        if code == LNK_CONN:
            # §6.2: only one LNK_CONN per link, opened at top level
            self.peer_conn_count += 1
            if self.peer_conn_count > 1:
                self._violation("second LNK_CONN on the link (§6.2: libdmsg assertion)")
            if parent is not None:
                self._violation("LNK_CONN not at top level (circuit must be 0, §6.2)")
            t.kind = "conn"
            self.peer_conn = t
            self.peer_conn_info = unpack_conn(f.ext)
            if self.peer_conn_info["proto_version"] != PROTO_VERSION:
                self._warn("LNK_CONN proto_version %d" % self.peer_conn_info["proto_version"])
            if t.rx_deleted:
                self._warn("LNK_CONN opened with CREATE|DELETE")
                self.send_on(t, LNK_ERROR, F_CREATE | F_DELETE)
            else:
                self.send_on(t, LNK_ERROR, F_CREATE)     # §6.2 ack, keep open
            return
        if code == LNK_SPAN:
            if parent is not None:
                self._violation("LNK_SPAN not at top level (circuit must be 0, §6.3)")
            t.kind = "span"
            info = unpack_span(f.ext)
            info["msgid"] = f.msgid
            if t.rx_deleted:
                self._warn("LNK_SPAN opened with CREATE|DELETE")
                self.send_on(t, LNK_ERROR, F_CREATE | F_DELETE)
                return
            self.spans[f.msgid] = info
            self.span_trans[f.msgid] = t
            self.send_on(t, LNK_ERROR, F_CREATE)         # §6.3 ack, keep open
            return
        if self.create_handler is not None and self.create_handler(self, t, f):
            return
        # §5.6/§8: unsupported CREATE -> LNK_ERROR|REPLY|CREATE|DELETE, NOSUPP
        self.send_on(t, LNK_ERROR, F_CREATE | F_DELETE, error=DMSG_ERR_NOSUPP)
        if t.rx_deleted:
            self._maybe_retire(t)

    # -- further messages on a transaction the remote opened (DELETE, no CREATE) --
    def _rx_more(self, t: Trans, f: Frame) -> None:
        if f.flags & F_DELETE:
            # remote closes its side; children die implicitly (§5.3)
            self._terminate_children(t)
            if t.kind == "span":
                self.spans.pop(t.msgid, None)
                self.span_trans.pop(t.msgid, None)
            if t.kind == "conn":
                self._warn("remote closed its LNK_CONN")
            if not t.tx_deleted:
                # §6.3 span DELETE -> LNK_ERROR|REPLY|DELETE; same for anything else
                self.send_on(t, LNK_ERROR, F_DELETE | (0 if t.tx_created else F_CREATE))

    # -- replies on transactions we opened (REPLY set) --
    def _expect_flags(self, f: Frame, expected: int, what: str) -> None:
        got = f.flags
        if got & F_ABORT and f.error != 0:
            got &= ~F_ABORT     # relayed LOSTLINK terminations may carry ABORT (§5.7)
        if got != expected:
            self._violation("%s: flags %s, expected %s (%s)" % (
                what, flag_names(got), flag_names(expected), {
                    "io reply": "§7.3 point 5", "open reply": "§7.3 point 3",
                    "close reply": "§7.3 point 6", "LNK_CONN ack": "§6.2",
                    "LNK_SPAN ack": "§6.3"}.get(what, "§5")))

    def _rx_reply(self, t: Trans, f: Frame) -> None:
        fl = f.flags
        C, D = fl & F_CREATE, fl & F_DELETE
        base = F_REPLY | F_REVTRANS | (F_REVCIRC if t.parent and t.parent.side == "L"
                                       else 0)
        if t.kind == "io":
            # §7.3.5: exactly one reply LNK_ERROR (1 unit) or BLK_ERROR (3 units),
            # REPLY|CREATE|DELETE|REVTRANS (+REVCIRC under our BLK_OPEN; not when the
            # I/O was stacked directly under the remote's span).
            self._expect_flags(f, base | F_CREATE | F_DELETE, "io reply")
            if f.basecmd not in (LNK_ERROR, BLK_ERROR):
                self._violation("I/O reply is %s, expected LNK_ERROR or BLK_ERROR (§7.3)"
                                % cmd_name(f.cmd))
            resid = 0
            if f.basecmd == BLK_ERROR:
                resid = BLKERR_FMT.unpack_from(f.ext, 0)[1]
                if resid == 0 and f.error == 0:
                    self._warn("BLK_ERROR reply with resid 0 (LNK_ERROR expected, §7.3)")
            tk = t.ticket
            data = b""
            if tk.kind == "read" and f.error == 0:
                # §7.4: copy min(aux_bytes, bytes); shorter/absent data is zero-filled
                data = f.aux[:tk.nbytes]
                if len(data) < tk.nbytes:
                    data += bytes(tk.nbytes - len(data))
            elif f.aux_bytes and f.error == 0:
                self._warn("%s reply carries %d aux bytes" % (tk.kind, f.aux_bytes))
            tk._complete(IoResult(error=f.error, resid=resid, data=data, cmd=f.cmd,
                                  aux_bytes=f.aux_bytes))
            return
        if t.kind in ("conn", "span", "open") and C:
            what = {"conn": "LNK_CONN ack", "span": "LNK_SPAN ack", "open": "open reply"}[
                t.kind]
            if f.basecmd != LNK_ERROR:
                self._violation("%s is %s, expected LNK_ERROR (§5.6)" % (what,
                                                                       cmd_name(f.cmd)))
            if f.error == 0:
                # result that keeps the transaction open: REPLY|CREATE only
                self._expect_flags(f, base | F_CREATE, what)
            elif not D and t.kind != "open":
                self._warn("%s with error 0x%x that keeps the transaction open"
                           % (what, f.error))
            if t.kind == "conn":
                if f.error == 0:
                    self.conn_acked = True
                    if self.on_conn_acked:
                        self.on_conn_acked(self)
                else:
                    self._warn("our LNK_CONN was rejected with error 0x%x" % f.error)
            elif t.kind == "span":
                if f.error:
                    self._warn("our LNK_SPAN was rejected with error 0x%x" % f.error)
            elif t.kind == "open" and t.ticket:
                t.ticket._complete(IoResult(error=f.error, cmd=f.cmd))
        if D:
            if t.kind == "open" and t.tx_deleted and not C:
                # §7.3.6 close: LNK_ERROR|REPLY|DELETE
                self._expect_flags(f, base | F_DELETE, "close reply")
                if t.close_ticket:
                    t.close_ticket._complete(IoResult(error=f.error, cmd=f.cmd))
            self._terminate_children(t)
            if not t.tx_deleted:
                # the remote closed a transaction we opened: close our side too (§5.1)
                if t.kind in ("conn", "span", "open") and not C:
                    self._warn("remote terminated our %s (error 0x%x)" % (t.kind, f.error))
                if t.ticket:
                    t.ticket._complete(IoResult(error=f.error or DMSG_ERR_LOSTLINK,
                                                cmd=f.cmd))
                self.send_on(t, LNK_ERROR, F_DELETE)
            if t.close_ticket:
                t.close_ticket._complete(IoResult(error=f.error, cmd=f.cmd))

    # ------------------------------------------------------------------ client API
    def wait(self, ticket: Ticket, timeout: Optional[float] = 30.0) -> IoResult:
        if not ticket.event.wait(timeout):
            if self.dead.is_set():
                raise LinkDown(self.dead_reason or "link down")
            raise TimeoutError("%s at offset %d (%d bytes) not answered within %ss"
                               % (ticket.kind, ticket.offset, ticket.nbytes, timeout))
        if ticket.exc:
            raise ticket.exc
        return ticket.result

    def ping(self, timeout: float = 5.0) -> float:
        """Send one LNK_PING and wait for a one-way LNK_PING|REPLY (§6.5)."""
        t0 = time.monotonic()
        with self.cond:
            self.pings_sent += 1
            want = self.pings_sent
            self.send_oneway(LNK_PING)
            while self.ping_replies < want:
                self._raise_if_dead()
                left = t0 + timeout - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no LNK_PING|REPLY within %.1fs" % timeout)
                self.cond.wait(min(left, 0.2))
        return time.monotonic() - t0

    def wait_span(self, timeout: float = 10.0, pfs_label: Optional[str] = None) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for info in self.spans.values():
                    if pfs_label is None or info["pfs_label"] == pfs_label:
                        if info["peer_type"] == PEER_BLOCK or pfs_label is not None:
                            return dict(info)
                self._raise_if_dead()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no BLOCK span%s received within %.1fs (spans: %s)"
                                       % (" with pfs_label %r" % pfs_label if pfs_label
                                          else "", timeout, list(self.spans.values())))
                self.cond.wait(min(left, 0.2))

    def disk(self, span_msgid: int) -> "Disk":
        """A handle on a remote span; I/O goes directly under the span (§7.3 "probe
        I/O") until open() is called."""
        with self.lock:
            st = self.span_trans.get(span_msgid)
            if st is None:
                raise KeyError("no open span with msgid 0x%x" % span_msgid)
            return Disk(self, st, self.spans[span_msgid])

    def open_disk(self, span_msgid: int, modes: int = BLK_MODE_READ | BLK_MODE_WRITE,
                  timeout: float = 30.0) -> "Disk":
        d = self.disk(span_msgid)
        d.open(modes=modes, timeout=timeout)
        return d


class Disk:
    """Client handle: BLK_OPEN under a span (§7.3) and pipelined I/O transactions.

    Every I/O is its own transaction, one BLK_xxx|CREATE|DELETE message stacked
    under the BLK_OPEN (or directly under the span when not open)."""

    def __init__(self, link: Link, span: Trans, info: dict):
        self.link = link
        self.span = span
        self.info = info
        self.open_t: Optional[Trans] = None

    @property
    def size(self) -> int:
        return self.info["bytes"]

    @property
    def blksize(self) -> int:
        return self.info["blksize"]

    def open(self, modes: int = BLK_MODE_READ | BLK_MODE_WRITE,
             timeout: float = 30.0) -> IoResult:
        tk = Ticket("open")
        # §7.3.2 BLK_OPEN|CREATE, circuit = span (REVCIRC since the remote opened it)
        t = self.link.open_trans(self.span, BLK_OPEN, ext=OPEN_FMT.pack(modes, 0),
                                 kind="open", ticket=tk)
        res = self.link.wait(tk, timeout)
        if res.error:
            raise IOError("BLK_OPEN failed with error 0x%x (%s)"
                          % (res.error, ERR_NAMES.get(res.error, "?")))
        self.open_t = t
        return res

    def close_disk(self, timeout: float = 30.0) -> IoResult:
        """§7.3.6: LNK_ERROR|DELETE on the open; expects LNK_ERROR|REPLY|DELETE."""
        t = self.open_t
        if t is None:
            raise RuntimeError("disk not open")
        tk = Ticket("close")
        with self.link.lock:
            t.close_ticket = tk
            if t.rx_deleted:            # already closed by the remote
                tk._complete(IoResult(error=DMSG_ERR_LOSTLINK, synthesized=True))
            else:
                self.link.send_on(t, LNK_ERROR, F_DELETE)
        self.open_t = None
        return self.link.wait(tk, timeout)

    close = close_disk

    def _submit(self, kind: str, cmd: int, offset: int, nbytes: int,
                aux: bytes = b"") -> Ticket:
        tk = Ticket(kind, offset, nbytes)
        parent = self.open_t if self.open_t is not None else self.span
        self.link.open_trans(parent, cmd, F_DELETE, ext=pack_io(offset, nbytes),
                             aux=aux, kind="io", ticket=tk)
        return tk

    def submit_read(self, offset: int, nbytes: int) -> Ticket:
        return self._submit("read", BLK_READ, offset, nbytes)

    def submit_write(self, offset: int, data: bytes) -> Ticket:
        return self._submit("write", BLK_WRITE, offset, len(data), bytes(data))

    def submit_flush(self) -> Ticket:
        return self._submit("flush", BLK_FLUSH, 0, 0)

    def submit_trim(self, offset: int, nbytes: int) -> Ticket:
        return self._submit("trim", BLK_FREEBLKS, offset, nbytes)

    def wait(self, ticket: Ticket, timeout: Optional[float] = 30.0) -> IoResult:
        return self.link.wait(ticket, timeout)

    def read(self, offset: int, nbytes: int, timeout: float = 30.0) -> IoResult:
        return self.wait(self.submit_read(offset, nbytes), timeout)

    def write(self, offset: int, data: bytes, timeout: float = 30.0) -> IoResult:
        return self.wait(self.submit_write(offset, data), timeout)

    def flush(self, timeout: float = 30.0) -> IoResult:
        return self.wait(self.submit_flush(), timeout)

    def trim(self, offset: int, nbytes: int, timeout: float = 30.0) -> IoResult:
        return self.wait(self.submit_trim(offset, nbytes), timeout)


# =====================================================================================
# Block server (§6.4, §7, §9.1)
# =====================================================================================

def _uuid_from(text: str) -> bytes:
    """A stable non-nil 16-byte id derived from a string (§6.4 recommends stable
    per-host peer_id / per-disk pfs_id; the bytes are opaque to the code paths)."""
    return hashlib.md5(text.encode()).digest()


class BlockServer:
    """Serves an image file as a BLOCK span on any number of links."""

    def __init__(self, image_path: str, serial: str, label: str, blksize: int = 512,
                 verbose: bool = False):
        if blksize < 512 or blksize & (blksize - 1):
            raise ValueError("blksize must be a power of two >= 512")
        if not serial or len(serial.encode()) > 63 or len(label.encode()) > 63:
            raise ValueError("serial must be non-empty; labels <= 63 bytes (§6.3)")
        self.path = image_path
        self.fd = os.open(image_path, os.O_RDWR)
        self.serial = serial
        self.label = label
        self.blksize = blksize
        self.size = (os.fstat(self.fd).st_size // blksize) * blksize
        self.verbose = verbose
        self.lock = threading.Lock()
        self.links: list[Link] = []
        self.violations: list[str] = []
        self.stats = dict(read=0, write=0, flush=0, trim=0, open=0, param=0, io_error=0)

    def close(self):
        for l in list(self.links):
            l.close()
        os.close(self.fd)

    def attach(self, sock: socket.socket, name: str = "server") -> Link:
        """Run the server protocol on a connected socket; returns the started link."""
        link = Link(sock, peer_type=PEER_BLOCK, peer_mask=0, label=self.label,
                    peer_id=_uuid_from("peer:" + self.label.split("/")[0]), name=name,
                    verbose=self.verbose)
        link.on_conn_acked = self._send_span     # §6.2: SPAN after our CONN is acked
        link.create_handler = self._handle_create
        link.on_dead = self._link_dead
        with self.lock:
            self.links.append(link)
        link.start()
        return link

    def _link_dead(self, link: Link):
        with self.lock:
            if link in self.links:
                self.links.remove(link)
            if link.violation:
                self.violations.append(link.violation)

    def _send_span(self, link: Link):
        ext = pack_span(peer_type=PEER_BLOCK, pfs_type=PFS_TYPE_SERVER,
                        media_bytes=self.size, blksize=self.blksize,
                        peer_label=self.label, pfs_label=self.serial,
                        peer_id=_uuid_from("peer:" + self.label.split("/")[0]),
                        pfs_id=_uuid_from("pfs:" + self.serial))
        link.my_span = link.open_trans(None, LNK_SPAN, ext=ext, kind="span")

    def _handle_create(self, link: Link, t: Trans, f: Frame) -> bool:
        span = link.my_span
        p = t.parent
        if f.basecmd == BLK_OPEN:
            # §7.3.2/§9.1.8: BLK_OPEN under our span, any modes
            if span is None or p is not span:
                link._warn("BLK_OPEN not under our span -> NOSUPP")
                return False
            t.kind = "open"
            self.stats["open"] += 1
            if t.rx_deleted:
                link.send_on(t, LNK_ERROR, F_CREATE | F_DELETE)
            else:
                link.send_on(t, LNK_ERROR, F_CREATE)   # LNK_ERROR|REPLY|CREATE|REVTRANS
            return True
        if f.basecmd in BLK_IO_CMDS:
            # §7.3.4 under the open, or §7.3 "probe I/O" directly under our span
            if span is None or not (p is span or (p is not None and p.kind == "open"
                                                  and p.parent is span)):
                link._warn("BLK I/O not under our span/open -> NOSUPP")
                return False
            t.kind = "io"
            if not t.rx_deleted:
                link._warn("BLK I/O request without DELETE (§7.3.4 expects one message)")
            err, aux = self._do_io(f)
            # §7.3.5 exactly one reply: LNK_ERROR|REPLY|CREATE|DELETE (+REVTRANS,
            # +REVCIRC when under the open); reads carry the data as aux.
            link.send_on(t, LNK_ERROR, F_CREATE | F_DELETE, error=err, aux=aux)
            return True
        return False        # BLK_CLOSE and anything else: NOSUPP (§7.6)

    def _do_io(self, f: Frame) -> tuple[int, bytes]:
        _keyid, off, n = unpack_io(f.ext)       # §7.5: keyid ignored
        bs = self.blksize
        cmd = f.basecmd
        if cmd == BLK_FLUSH:                    # §7.4: offset/bytes ignored, full flush
            try:
                os.fsync(self.fd)
            except OSError:
                self.stats["io_error"] += 1
                return DMSG_ERR_IO, b""
            self.stats["flush"] += 1
            return 0, b""
        # PARAM for zero length, misalignment, out of range, > 1 MiB (§7.4/§7.6/§9.1.9)
        if (n == 0 or off % bs or n % bs or off + n > self.size or n > AUX_MAX):
            self.stats["param"] += 1
            return DMSG_ERR_PARAM, b""
        try:
            if cmd == BLK_READ:
                data = os.pread(self.fd, n, off)
                if len(data) < n:
                    data += bytes(n - len(data))
                self.stats["read"] += 1
                return 0, data
            if cmd == BLK_WRITE:
                # §7.4: aux shorter than bytes -> remainder written as zeros
                data = f.aux[:n]
                if len(data) < n:
                    data += bytes(n - len(data))
                self._pwrite_all(data, off)
                self.stats["write"] += 1
                return 0, b""
            if cmd == BLK_FREEBLKS:
                # TRIM implemented as writing zeros
                self._pwrite_all(bytes(n), off)
                self.stats["trim"] += 1
                return 0, b""
        except OSError:
            self.stats["io_error"] += 1
            return DMSG_ERR_IO, b""             # §7.6: device errors -> IO only
        return DMSG_ERR_NOSUPP, b""

    def _pwrite_all(self, data: bytes, off: int):
        mv = memoryview(data)
        while mv:
            k = os.pwrite(self.fd, mv, off)
            mv = mv[k:]
            off += k


# =====================================================================================
# CLI helpers
# =====================================================================================

def parse_size(s: str) -> int:
    s = s.strip()
    mult = {"k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
            "gib": 1 << 30, "kb": 1000, "mb": 10 ** 6, "gb": 10 ** 9, "b": 1, "": 1}
    num = s.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = s[len(num):].lower()
    if unit not in mult:
        raise argparse.ArgumentTypeError("bad size %r" % s)
    return int(float(num) * mult[unit])


def parse_hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host:
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % s)
    return host, int(port)


def _emit(obj: dict):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Fail(Exception):
    pass


def _client_link(args, **kw) -> Link:
    link = Link.connect(args.host, args.port, timeout=args.connect_timeout,
                        peer_type=args.peer_type, peer_mask=args.peer_mask,
                        label=args.label, name="client", verbose=args.verbose, **kw)
    link.start()
    link.wait_ready(args.ready_timeout)
    return link


class Shadow:
    """Model of the remote disk: what was written (unknown regions are not checked).
    bytearray when the disk is <= 1 GiB, else a sparse dict block -> bytes."""

    def __init__(self, size: int, unit: int):
        self.size, self.unit = size, unit
        self.nblk = size // unit
        self.dense = size <= (1 << 30)
        if self.dense:
            self.data = bytearray(size)
            self.known = bytearray(self.nblk)
        else:
            self.blocks: dict[int, bytes] = {}

    def put(self, off: int, data: bytes):
        u = self.unit
        if self.dense:
            self.data[off:off + len(data)] = data
            self.known[off // u:(off + len(data)) // u] = b"\1" * (len(data) // u)
        else:
            for i in range(len(data) // u):
                self.blocks[off // u + i] = bytes(data[i * u:(i + 1) * u])

    def runs(self, max_len: int):
        """(offset, length) chunks covering all known blocks, each <= max_len."""
        u = self.unit
        if self.dense:
            idx, n, kn = 0, self.nblk, self.known
            while idx < n:
                idx = kn.find(1, idx)
                if idx < 0:
                    break
                end = kn.find(0, idx)
                end = n if end < 0 else end
                for s in range(idx, end, max_len // u):
                    yield s * u, (min(end, s + max_len // u) - s) * u
                idx = end
        else:
            keys = sorted(self.blocks)
            i = 0
            while i < len(keys):
                j = i
                while j + 1 < len(keys) and keys[j + 1] == keys[j] + 1 and \
                        (j + 1 - i) * u < max_len:
                    j += 1
                yield keys[i] * u, (j - i + 1) * u
                i = j + 1

    def get(self, off: int, n: int) -> bytes:
        if self.dense:
            return bytes(self.data[off:off + n])
        u = self.unit
        return b"".join(self.blocks.get(off // u + i, bytes(u)) for i in range(n // u))

    def is_known(self, off: int) -> bool:
        u = self.unit
        return bool(self.known[off // u]) if self.dense else (off // u) in self.blocks


def _check_io(res: IoResult, what: str):
    if res.error or res.resid:
        raise Fail("%s failed: error 0x%x (%s) resid %d%s" % (
            what, res.error, ERR_NAMES.get(res.error, "?"), res.resid,
            " (synthesized LOSTLINK)" if res.synthesized else ""))


def cmd_verify(args) -> int:
    t_start = time.monotonic()
    link = None
    summary: dict = {"ok": False, "mode": "verify"}
    try:
        link = _client_link(args)
        span = link.wait_span(args.span_timeout, args.serial)
        summary["span"] = {k: span[k] for k in ("msgid", "pfs_label", "peer_label",
                                                 "bytes", "blksize")}
        size, bsz = span["bytes"], span["blksize"] or 512
        unit = bsz if bsz >= 512 and bsz % 512 == 0 else 512
        size -= size % unit
        if size < 4 * unit:
            raise Fail("remote disk too small (%d bytes)" % size)
        disk = link.disk(span["msgid"])
        rng = random.Random(args.seed)
        shadow = Shadow(size, unit)
        io_to = args.io_timeout
        if args.probe:
            # §7.3 probe I/O: a read directly under the span before the open
            _check_io(disk.read(0, unit, io_to), "probe read under the span")
            summary["probe_read"] = True
        disk.open(modes=args.modes, timeout=io_to)

        # ---- random writes with qd in flight, never overlapping in-flight ones
        # (§7.4: no ordering between concurrent I/O transactions)
        max_blk = min(MAXPHYS, size) // unit
        inflight: list[tuple[Ticket, int, int]] = []
        written = nreq = 0
        target = args.bytes

        def reap(block: bool):
            while inflight and (block or inflight[0][0].done()):
                tk, o, n = inflight.pop(0)
                _check_io(disk.wait(tk, io_to), "write of %d bytes at %d" % (n, o))
                block = False

        while written < target:
            n_blk = rng.randint(1, max_blk)
            n_blk = max(1, min(n_blk, (target - written + unit - 1) // unit))
            n = n_blk * unit
            for _ in range(64):
                off = rng.randrange(0, size // unit - n_blk + 1) * unit
                if all(off + n <= o or o + k <= off for _, o, k in inflight):
                    break
            else:
                reap(True)
                continue
            data = rng.randbytes(n)
            shadow.put(off, data)
            inflight.append((disk.submit_write(off, data), off, n))
            written += n
            nreq += 1
            while len(inflight) >= args.qd:
                reap(True)
            reap(False)
        while inflight:
            reap(True)
        summary.update(bytes_written=written, write_requests=nreq)

        # ---- read back everything written, pipelined, byte-for-byte compare
        rd = []
        read_bytes = 0

        def check_read(tk: Ticket):
            res = disk.wait(tk, io_to)
            _check_io(res, "read of %d bytes at %d" % (tk.nbytes, tk.offset))
            exp = shadow.get(tk.offset, tk.nbytes)
            if res.data != exp:
                i = next(i for i in range(len(exp)) if res.data[i] != exp[i])
                raise Fail("data mismatch at byte offset %d (read of %d bytes at %d): "
                           "got 0x%02x expected 0x%02x" % (tk.offset + i, tk.nbytes,
                                                          tk.offset, res.data[i], exp[i]))

        for off, n in shadow.runs(MAXPHYS):
            rd.append(disk.submit_read(off, n))
            read_bytes += n
            while len(rd) >= args.qd:
                check_read(rd.pop(0))
        while rd:
            check_read(rd.pop(0))
        summary["bytes_verified"] = read_bytes

        # ---- flush
        _check_io(disk.flush(io_to), "flush")

        # ---- trim a range (preferably one that holds written data) -> zeros
        tn = min(64 * 1024, size // 2) // unit * unit
        first = next(iter(shadow.runs(MAXPHYS)), (0, 0))[0]
        toff = min(first, size - tn)
        _check_io(disk.trim(toff, tn, io_to), "trim of %d bytes at %d" % (tn, toff))
        shadow.put(toff, bytes(tn))
        res = disk.read(toff, tn, io_to)
        _check_io(res, "read after trim")
        if res.data != bytes(tn):
            raise Fail("trimmed range %d+%d does not read back as zeros" % (toff, tn))
        summary["trim"] = [toff, tn]

        # ---- read past the end must fail with PARAM or IO and the link must survive
        res = disk.read(size, unit, io_to)
        if res.error not in (DMSG_ERR_PARAM, DMSG_ERR_IO):
            raise Fail("read past the end (offset %d) returned error 0x%x resid %d, "
                       "expected PARAM 0x23 or IO 0x22" % (size, res.error, res.resid))
        summary["past_end_error"] = res.error
        res = disk.read(toff, unit, io_to)
        _check_io(res, "read after the failed read past the end")
        if res.data != shadow.get(toff, unit):
            raise Fail("data mismatch on the read after the read past the end")

        # ---- close the open (§7.3.6)
        res = disk.close_disk(io_to)
        if res.error:
            raise Fail("close reply carried error 0x%x" % res.error)
        if link.violations:
            raise Fail("protocol violation: %s" % link.violations[0])
        el = time.monotonic() - t_start
        summary.update(ok=True, elapsed_s=round(el, 3), qd=args.qd, seed=args.seed,
                       warnings=len(link.warnings))
        _emit(summary)
        return 0
    except (Fail, LinkDown, TimeoutError, OSError, ProtocolViolation) as e:
        msg = str(e)
        if link is not None and link.violation and link.violation not in msg:
            msg += " [protocol violation: %s]" % link.violation
        summary.update(ok=False, error=msg)
        _emit(summary)
        sys.stderr.write("verify FAILED: %s\n" % msg)
        return 1
    finally:
        if link is not None:
            link.close()


def cmd_ping(args) -> int:
    link = None
    try:
        link = _client_link(args)
        rtts = []
        for _ in range(args.count):
            rtts.append(link.ping(5.0))     # must be answered by PING|REPLY within 5 s
        if link.violations:
            raise Fail(link.violations[0])
        _emit({"ok": True, "mode": "ping", "count": args.count,
               "max_rtt_ms": round(max(rtts, default=0) * 1000, 3)})
        return 0
    except (Fail, LinkDown, TimeoutError, OSError) as e:
        _emit({"ok": False, "mode": "ping", "error": str(e)})
        sys.stderr.write("ping FAILED: %s\n" % e)
        return 1
    finally:
        if link:
            link.close()


def cmd_spans(args) -> int:
    link = None
    try:
        link = _client_link(args)
        time.sleep(args.wait)
        link._raise_if_dead()
        with link.lock:
            spans = sorted(link.spans.values(), key=lambda s: s["msgid"])
        for s in spans:
            _emit(s)
        return 0
    except (LinkDown, TimeoutError, OSError) as e:
        sys.stderr.write("spans FAILED: %s\n" % e)
        return 1
    finally:
        if link:
            link.close()


def cmd_server(args) -> int:
    srv = BlockServer(args.image, args.serial, args.label, args.blksize,
                      verbose=args.verbose)
    stop = threading.Event()

    def on_signal(_sig, _frm):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    nconn = itertools.count(1)

    if args.listen:
        host, port = args.listen
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((host, port))
        ls.listen(16)
        ls.settimeout(0.2)
        _emit({"event": "listening", "host": host, "port": ls.getsockname()[1],
               "bytes": srv.size, "serial": srv.serial})
        while not stop.is_set():
            try:
                s, addr = ls.accept()
            except (socket.timeout, InterruptedError):
                continue
            except OSError:
                if stop.is_set():
                    break
                raise
            s.settimeout(None)
            name = "server#%d" % next(nconn)
            _log("accepted", link=name, peer="%s:%d" % addr)
            link = srv.attach(s, name)
            link_watch(link)
        ls.close()
    else:
        host, port = args.connect
        while not stop.is_set():
            try:
                s = socket.create_connection((host, port), timeout=2.0)
            except OSError:
                stop.wait(0.5)          # reconnect every 0.5 s
                continue
            s.settimeout(None)
            name = "server#%d" % next(nconn)
            _log("connected", link=name, peer="%s:%d" % (host, port))
            link = srv.attach(s, name)
            link_watch(link)
            while not stop.is_set() and not link.dead.wait(0.2):
                pass
            if not stop.is_set():
                stop.wait(0.5)
    srv.close()
    _log("server-exit", stats=srv.stats, violations=srv.violations)
    return 1 if (args.fail_on_violation and srv.violations) else 0


def link_watch(link: Link):
    prev = link.on_dead

    def dead(l: Link):
        if prev:
            prev(l)
        _log("link-down", link=l.name, reason=l.dead_reason, violation=l.violation)
    link.on_dead = dead


MALFORMED_KINDS = ("bad-magic", "bad-hdr-crc", "bad-aux-crc", "size-units-0",
                   "size-units-33", "aux-too-big", "aux-descr", "bad-seq", "dup-create",
                   "delete-unknown", "reply-unknown", "second-conn", "garbage",
                   "truncated", "half-open")


def cmd_malformed(args) -> int:
    kind = args.kind
    report: dict = {"mode": "malformed", "kind": kind}
    if kind == "half-open":
        return _malformed_half_open(args, report)
    link = Link.connect(args.host, args.port, timeout=args.connect_timeout,
                        peer_type=args.peer_type, peer_mask=args.peer_mask,
                        label=args.label, name="malformed", strict=False,
                        verbose=args.verbose)
    try:
        link.start()
        link.wait_ready(args.ready_timeout)
    except (LinkDown, TimeoutError) as e:
        report.update(remote_closed=None, error="LNK_CONN exchange failed: %s" % e)
        _emit(report)
        link.close()
        return 1
    rng = random.Random(args.seed)
    time.sleep(args.settle)         # let the SPAN exchange that follows LNK_CONN finish
    rx_before = link.rx_count
    ping = lambda seq, **kw: encode_frame(LNK_PING, salt=seq & 0xFF, **kw)  # noqa: E731
    bogus = 0x5EED000000000000 | rng.getrandbits(32) << 6

    def bad(build, advance=1):
        # the bad input is the last thing we send on this link
        link.send_raw(build, advance, mute=True)

    if kind == "bad-magic":
        bad(lambda s: ping(s, magic=0x1234))
    elif kind == "bad-hdr-crc":
        bad(lambda s: ping(s, hdr_crc=crc32c(bytes(64)) ^ 0xDEADBEEF))
    elif kind == "bad-aux-crc":
        bad(lambda s: ping(s, aux=b"x" * 100, aux_crc=0x12345678))
    elif kind == "size-units-0":
        bad(lambda s: encode_frame(LNK_PING & ~SIZE_MASK, salt=s & 0xFF))
    elif kind == "size-units-33":
        bad(lambda s: encode_frame((LNK_PING & ~SIZE_MASK) | 33, salt=s & 0xFF))
    elif kind == "aux-too-big":
        # header announcing 1 MiB + 64 aux bytes, followed by that much aux data
        aux = bytes(AUX_MAX + 64)
        bad(lambda s: ping(s, aux=aux))
    elif kind == "aux-descr":
        bad(lambda s: ping(s, aux_descr=1))
    elif kind == "bad-seq":
        bad(lambda s: ping(s + 1), advance=2)
    elif kind == "dup-create":
        # a properly opened transaction, then a second CREATE with the same msgid:
        # BLK_OPEN under a remote span if there is one, else a top-level LNK_SPAN.
        try:
            span = link.wait_span(args.span_wait)
        except (TimeoutError, LinkDown):
            span = None
        with link.lock:
            if span is not None:
                cmd, ext = BLK_OPEN, OPEN_FMT.pack(BLK_MODE_READ, 0)
                t = link.open_trans(link.span_trans[span["msgid"]], cmd, ext=ext)
            else:
                cmd = LNK_SPAN
                ext = pack_span(peer_type=PEER_CLIENT, pfs_type=0,
                                peer_label="malformed", pfs_label="malformed-dup-create")
                t = link.open_trans(None, cmd, ext=ext)
            fl = F_CREATE | (F_REVCIRC if t.parent is not None else 0)
            circ = t.parent.msgid if t.parent is not None else 0
            report["via"] = cmd_name(cmd)
            bad(lambda s: encode_frame(cmd | fl, msgid=t.msgid, circuit=circ,
                                       salt=s & 0xFF, ext=ext))
    elif kind == "delete-unknown":
        bad(lambda s: encode_frame(LNK_ERROR | F_DELETE, msgid=bogus, salt=s & 0xFF))
    elif kind == "reply-unknown":
        bad(lambda s: encode_frame(LNK_ERROR | F_REPLY | F_CREATE | F_DELETE | F_REVTRANS,
                                   msgid=bogus, salt=s & 0xFF))
    elif kind == "second-conn":
        ext = pack_conn(peer_type=args.peer_type, peer_mask=args.peer_mask,
                        label=args.label)
        bad(lambda s: encode_frame(LNK_CONN | F_CREATE, msgid=bogus, salt=s & 0xFF,
                                   ext=ext))
    elif kind == "garbage":
        junk = bytearray(rng.randbytes(4096))
        if bytes(junk[:2]) in (b"\x32\x48", b"\x48\x32"):   # never a valid magic
            junk[0] ^= 0xFF
        bad(lambda s: bytes(junk))
    elif kind == "truncated":
        # first half of a valid 128-byte BLK_READ header, then half-close (EOF
        # inside a frame): the remote must treat the short read as fatal
        bad(lambda s: encode_frame(BLK_READ | F_CREATE | F_DELETE, msgid=bogus,
                                   salt=s & 0xFF, ext=pack_io(0, 512))[:64])
        deadline = time.monotonic() + 2
        while not link.txq.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        try:
            link.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    t0 = time.monotonic()
    closed = link.dead.wait(args.timeout)
    report.update(remote_closed=bool(closed and link.remote_closed),
                  after_s=round(time.monotonic() - t0, 3) if closed else None,
                  reason=link.dead_reason,
                  received_after=link.rx_log[-(link.rx_count - rx_before):]
                  if link.rx_count > rx_before else [],
                  remote_violations=link.violations)
    _emit(report)
    link.close()
    return 0 if report["remote_closed"] else 1


def _malformed_half_open(args, report) -> int:
    """Connect, send LNK_CONN, then neither send nor read for --hold seconds."""
    s = socket.create_connection((args.host, args.port), timeout=args.connect_timeout)
    s.settimeout(None)
    s.sendall(encode_frame(LNK_CONN | F_CREATE, msgid=0xFFFFF80000001000, salt=0,
                           ext=pack_conn(peer_type=args.peer_type,
                                         peer_mask=args.peer_mask, label=args.label)))
    time.sleep(args.hold)
    # now drain without blocking: EOF (or reset) => the remote closed the link
    closed = False
    received = 0
    s.setblocking(False)
    try:
        while True:
            d = s.recv(1 << 16)
            if not d:
                closed = True
                break
            received += len(d)
    except BlockingIOError:
        pass
    except OSError:
        closed = True
    s.close()
    report.update(remote_closed=closed, hold_s=args.hold, bytes_received=received)
    _emit(report)
    return 0 if closed else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmsg_peer.py",
                                description="Independent dmsg protocol peer (test oracle)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every message")
    sub = p.add_subparsers(dest="mode", required=True)

    def conn_opts(sp, default_type=PEER_CLIENT, default_mask=1 << PEER_BLOCK,
                  default_label="linux/dmsg-peer"):
        sp.add_argument("--peer-type", type=int, default=default_type)
        sp.add_argument("--peer-mask", type=lambda s: int(s, 0), default=default_mask)
        sp.add_argument("--label", default=default_label)
        sp.add_argument("--connect-timeout", type=float, default=10.0)
        sp.add_argument("--ready-timeout", type=float, default=10.0,
                        help="time allowed for the LNK_CONN exchange")

    c = sub.add_parser("client", help="block client / ping / span listing")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--serial", help="use the span whose pfs_label is this serial")
    conn_opts(c)
    csub = c.add_subparsers(dest="action", required=True)
    v = csub.add_parser("verify", help="write/read-back/flush/trim/error verification")
    v.add_argument("--bytes", type=parse_size, default=64 << 20)
    v.add_argument("--qd", type=int, default=16)
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--modes", type=lambda s: int(s, 0), default=BLK_MODE_READ,
                   help="BLK_OPEN modes (default 1 = READ like xdisk, §7.3.2)")
    v.add_argument("--span-timeout", type=float, default=10.0)
    v.add_argument("--io-timeout", type=float, default=30.0)
    v.add_argument("--no-probe", dest="probe", action="store_false",
                   help="skip the probe read directly under the span (§7.3)")
    pg = csub.add_parser("ping", help="LNK_PING round trips")
    pg.add_argument("--count", type=int, default=10)
    sp = csub.add_parser("spans", help="print received spans as JSON lines")
    sp.add_argument("--wait", type=float, default=2.0)

    s = sub.add_parser("server", help="serve an image file as a BLOCK span")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--listen", type=parse_hostport, metavar="HOST:PORT")
    g.add_argument("--connect", type=parse_hostport, metavar="HOST:PORT")
    s.add_argument("--image", required=True)
    s.add_argument("--serial", required=True)
    s.add_argument("--label", required=True)
    s.add_argument("--blksize", type=int, default=512)
    s.add_argument("--fail-on-violation", action="store_true",
                   help="exit 1 at shutdown if any link saw a protocol violation")

    m = sub.add_parser("malformed", help="send bad input, report if the remote drops")
    m.add_argument("host")
    m.add_argument("port", type=int)
    m.add_argument("kind", choices=MALFORMED_KINDS)
    m.add_argument("--timeout", type=float, default=5.0)
    m.add_argument("--hold", type=float, default=15.0)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--settle", type=float, default=0.3,
                   help="pause after the LNK_CONN exchange before the bad input")
    m.add_argument("--span-wait", type=float, default=1.0,
                   help="dup-create: how long to wait for a span to stack under")
    conn_opts(m)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode == "client":
        return {"verify": cmd_verify, "ping": cmd_ping, "spans": cmd_spans}[
            args.action](args)
    if args.mode == "server":
        return cmd_server(args)
    return cmd_malformed(args)


if __name__ == "__main__":
    sys.exit(main())
