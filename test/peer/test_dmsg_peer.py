#!/usr/bin/env python3
"""Self-test of the independent dmsg peer (dmsg_peer.py).

    python3 test/peer/test_dmsg_peer.py [-v]

* §10 test vectors TV1-TV5, byte exact (hex dumps of TV3/TV4/TV5 included);
* the frame decoder under every split point, byte-at-a-time and random chunkings,
  and its rejection of each malformed input;
* the Link's strict §5.4 checks against a scripted raw peer over a socketpair;
* end to end: `server` against `client ... verify --bytes 4MiB`, `client ping`,
  `client spans`, the `malformed` kinds, SIGTERM handling and `server --connect`
  reconnecting.
"""
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dmsg_peer as dp  # noqa: E402

PEER = os.path.join(HERE, "dmsg_peer.py")


def hexdump_bytes(dump: str) -> bytes:
    """Parse the '0000: 32 48 ...' dumps of §10."""
    out = bytearray()
    for line in dump.strip().splitlines():
        _, _, rest = line.partition(":")
        out += bytes(int(x, 16) for x in rest.split())
    return bytes(out)


TV3_DUMP = """
0000: 32 48 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0010: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0020: 01 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0030: 00 00 00 00 00 00 00 00 00 00 00 00 41 a4 26 f4
"""
TV4_DUMP = """
0000: 32 48 00 00 05 00 00 00 78 56 34 12 00 f8 ff ff
0010: ef be ad de 00 f8 ff ff 00 00 00 00 00 00 00 00
0020: 02 03 50 c4 00 00 00 00 00 00 00 00 00 00 00 00
0030: 00 00 00 00 00 00 00 00 00 00 00 00 a8 77 10 c5
0040: 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00
0050: 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00
0060: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0070: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
"""
TV5_DUMP = """
0000: 32 48 00 00 07 00 00 00 78 56 34 12 00 f8 ff ff
0010: 00 10 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0020: 01 ff 0f ec 06 cc 4d b7 64 00 00 00 00 00 00 00
0030: 00 00 00 00 00 00 00 00 00 00 00 00 8b ea 59 75
"""


def tv3():
    return dp.encode_frame(dp.LNK_PING)


def tv4():
    return dp.encode_frame(0xC4500302, salt=5, msgid=0xFFFFF80012345678,
                           circuit=0xFFFFF800DEADBEEF, ext=dp.pack_io(0x10000, 65536))


def tv5():
    return dp.encode_frame(0xEC0FFF01, salt=7, msgid=0xFFFFF80012345678, circuit=0x1000,
                           aux=b"\xa5" * 100)


class TestVectors(unittest.TestCase):
    def test_tv1_tv2_crc(self):
        self.assertEqual(dp.crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(dp.crc32c(bytes(64)), 0x03C8EB67)
        self.assertEqual(dp.crc32c_bitwise(b"123456789"), 0xE3069283)
        self.assertEqual(dp.crc32c_bitwise(bytes(64)), 0x03C8EB67)
        dp.crc_self_test()

    def test_crc_table_vs_bitwise(self):
        rng = random.Random(7)
        for n in list(range(0, 40)) + [63, 64, 65, 127, 128, 1000]:
            d = rng.randbytes(n)
            self.assertEqual(dp.crc32c(d), dp.crc32c_bitwise(d), n)
            k = n // 3
            self.assertEqual(dp.crc32c(d[k:], dp.crc32c(d[:k])), dp.crc32c(d))

    def test_tv3_ping(self):
        b = tv3()
        self.assertEqual(len(b), 64)
        self.assertEqual(struct.unpack_from("<I", b, 0x3C)[0], 0xF426A441)
        self.assertEqual(b, hexdump_bytes(TV3_DUMP))

    def test_tv4_blk_read(self):
        b = tv4()
        self.assertEqual(len(b), 128)
        self.assertEqual(struct.unpack_from("<I", b, 0x3C)[0], 0xC51077A8)
        self.assertEqual(b, hexdump_bytes(TV4_DUMP))
        self.assertEqual(0xC4500302, dp.BLK_READ | dp.F_CREATE | dp.F_DELETE | dp.F_REVCIRC)

    def test_tv5_read_reply(self):
        b = tv5()
        self.assertEqual(len(b), 64 + 128)
        hdr = dp.HDR_FMT.unpack_from(b, 0)
        self.assertEqual(hdr[8], 100)                 # aux_bytes
        self.assertEqual(hdr[7], 0xB74DCC06)          # aux_crc
        self.assertEqual(hdr[12], 0x7559EA8B)         # hdr_crc
        self.assertEqual(b[:64], hexdump_bytes(TV5_DUMP))
        self.assertEqual(b[64:], b"\xa5" * 100 + bytes(28))
        self.assertEqual(0xEC0FFF01, dp.LNK_ERROR | dp.F_REPLY | dp.F_CREATE | dp.F_DELETE
                         | dp.F_REVTRANS | dp.F_REVCIRC)

    def test_appendix_a_values(self):
        self.assertEqual(dp.LNK_ERROR | dp.F_REPLY | dp.F_CREATE | dp.F_REVTRANS, 0xA80FFF01)
        self.assertEqual(dp.LNK_ERROR | dp.F_DELETE | dp.F_REVCIRC, 0x440FFF01)
        self.assertEqual(dp.BLK_OPEN | dp.F_CREATE | dp.F_REVCIRC, 0x84500102)
        self.assertEqual(dp.BLK_ERROR | dp.F_REPLY | dp.F_CREATE | dp.F_DELETE
                         | dp.F_REVTRANS | dp.F_REVCIRC, 0xEC5FFF03)
        self.assertEqual(dp.LNK_PING | dp.F_REPLY, 0x20000101)

    def test_layouts(self):
        # §6.2 LNK_CONN offsets within the 384-byte header
        f = dp.encode_frame(dp.LNK_CONN | dp.F_CREATE, msgid=1,
                            ext=dp.pack_conn(peer_type=63, peer_mask=4, label="h/xdisk",
                                             peer_id=b"P" * 16))
        self.assertEqual(len(f), 384)
        self.assertEqual(f[0x50:0x60], b"P" * 16)
        self.assertEqual(struct.unpack_from("<Q", f, 0x70)[0], 4)
        self.assertEqual(f[0x78], 63)
        self.assertEqual(struct.unpack_from("<H", f, 0x7A)[0], 1)
        self.assertEqual(f[0xC4:0xC4 + 8], b"h/xdisk\0")
        self.assertFalse(any(f[0x144:]))
        # §6.3 LNK_SPAN offsets within the 448-byte header
        f = dp.encode_frame(dp.LNK_SPAN | dp.F_CREATE, msgid=1,
                            ext=dp.pack_span(media_bytes=1 << 33, blksize=4096,
                                             peer_label="h/d", pfs_label="SER",
                                             pfs_id=b"F" * 16))
        self.assertEqual(len(f), 448)
        self.assertEqual(f[0x50:0x60], b"F" * 16)
        self.assertEqual((f[0x60], f[0x61]), (3, 2))
        self.assertEqual(struct.unpack_from("<H", f, 0x62)[0], 1)
        self.assertEqual(struct.unpack_from("<QI", f, 0x78), (1 << 33, 4096))
        self.assertEqual(f[0xB0:0xB4], b"h/d\0")
        self.assertEqual(f[0x130:0x134], b"SER\0")
        info = dp.unpack_span(f[64:])
        self.assertEqual((info["bytes"], info["blksize"], info["pfs_label"],
                          info["peer_label"], info["peer_type"], info["pfs_type"]),
                         (1 << 33, 4096, "SER", "h/d", 2, 3))
        # §7.2 BLK_ERROR resid at 0x48
        f = dp.encode_frame(dp.BLK_ERROR, ext=dp.BLKERR_FMT.pack(0, 512, 0, bytes(64)))
        self.assertEqual(len(f), 192)
        self.assertEqual(struct.unpack_from("<I", f, 0x48)[0], 512)


def _stream():
    """A stream of assorted valid frames with sequence numbers 0..n-1."""
    rng = random.Random(3)
    frames = [
        lambda s: dp.encode_frame(dp.LNK_PING, salt=s),
        lambda s: dp.encode_frame(dp.LNK_CONN | dp.F_CREATE, salt=s, msgid=9,
                                  ext=dp.pack_conn(peer_type=1, peer_mask=2 ** 64 - 1)),
        lambda s: dp.encode_frame(dp.LNK_SPAN | dp.F_CREATE, salt=s | 0xABCD00, msgid=11,
                                  ext=dp.pack_span(media_bytes=1 << 20)),
        lambda s: dp.encode_frame(0xC4500302, salt=s, msgid=0xFFFFF80012345678,
                                  circuit=0xFFFFF800DEADBEEF, ext=dp.pack_io(0x10000, 65536)),
        lambda s: dp.encode_frame(0xEC0FFF01, salt=s, msgid=3, circuit=0x1000,
                                  aux=b"\xa5" * 100),
        lambda s: dp.encode_frame(dp.BLK_WRITE | dp.F_CREATE | dp.F_DELETE, salt=s,
                                  msgid=5, ext=dp.pack_io(0, 1000), aux=rng.randbytes(1000)),
        lambda s: dp.encode_frame(dp.LNK_ERROR, salt=s, aux=b"z" * 64),
    ]
    return [f(i) for i, f in enumerate(frames)]


class TestDecoder(unittest.TestCase):
    def setUp(self):
        self.frames = _stream()
        self.data = b"".join(self.frames)

    def _check(self, decoded):
        self.assertEqual(len(decoded), len(self.frames))
        for raw, f in zip(self.frames, decoded):
            hlen = f.units * 64
            self.assertEqual(f.header, raw[:hlen])
            self.assertEqual(f.aux + bytes(dp.pad64(f.aux_bytes) - f.aux_bytes),
                             raw[hlen:])
        self.assertEqual(decoded[4].aux, b"\xa5" * 100)
        self.assertEqual(dp.unpack_io(decoded[3].ext), (0, 0x10000, 65536))

    def _feed(self, chunks):
        d = dp.FrameDecoder()
        out = []
        for c in chunks:
            out += d.feed(c)
        self.assertEqual(d.pending, 0)
        return out

    def test_whole(self):
        self._check(self._feed([self.data]))

    def test_every_split_point(self):
        for i in range(len(self.data) + 1):
            self._check(self._feed([self.data[:i], self.data[i:]]))

    def test_byte_at_a_time(self):
        self._check(self._feed([self.data[i:i + 1] for i in range(len(self.data))]))

    def test_random_chunkings(self):
        rng = random.Random(11)
        for _ in range(300):
            cuts = sorted(rng.sample(range(1, len(self.data)), rng.randint(1, 12)))
            bounds = [0] + cuts + [len(self.data)]
            self._check(self._feed([self.data[a:b] for a, b in zip(bounds, bounds[1:])]))

    def test_two_split_points_near_boundaries(self):
        # every pair of split points within +-3 bytes of each frame boundary
        offs, o = [], 0
        for f in self.frames:
            o += len(f)
            offs.append(o)
        pts = sorted({max(0, min(len(self.data), b + k)) for b in [0, 64] + offs
                      for k in range(-3, 4)})
        for i in pts:
            for j in pts:
                if i < j:
                    self._check(self._feed([self.data[:i], self.data[i:j], self.data[j:]]))

    def test_rejections(self):
        ping = lambda **kw: dp.encode_frame(dp.LNK_PING, **kw)  # noqa: E731
        good_aux = dp.encode_frame(dp.LNK_PING, aux=b"q" * 10)
        bad_pad = bytearray(good_aux)
        bad_pad[64 + 20] = 1
        bad_pad = bytes(bad_pad)  # CRC will not match either; fix the CRC:
        bad_pad = dp.encode_frame(dp.LNK_PING, aux=b"q" * 10,
                                  aux_crc=dp.crc32c(bad_pad[64:]))
        bad_pad = bad_pad[:64 + 20] + b"\x01" + bad_pad[64 + 21:]
        cases = {
            "magic": ping(magic=0x1234),
            "swapped": ping(magic=0x3248),
            "units0": dp.encode_frame(0x100),
            "units33": dp.encode_frame(0x121),
            "auxbig": dp.encode_frame(dp.LNK_PING, aux_bytes=dp.AUX_MAX + 1) + bytes(64),
            "auxdescr": ping(aux_descr=7),
            "hdrcrc": ping(hdr_crc=1),
            "auxcrc": ping(aux=b"abc", aux_crc=5),
            "auxcrc0": ping(aux_crc=5),
            "seq": ping(salt=1),
            "auxpad": bad_pad,
        }
        for name, raw in cases.items():
            with self.subTest(name):
                d = dp.FrameDecoder()
                with self.assertRaises(dp.ProtocolViolation):
                    d.feed(raw)
        # sequence numbers wrap at 256 (§3.6)
        d = dp.FrameDecoder()
        for i in range(300):
            self.assertEqual(len(d.feed(ping(salt=(i & 0xFF) | 0x12345600))), 1)
        # 1 MiB of aux is accepted (limit is inclusive)
        d = dp.FrameDecoder()
        self.assertEqual(len(d.feed(dp.encode_frame(dp.LNK_ERROR, aux=bytes(dp.AUX_MAX)))), 1)


class RawPeer:
    """The other end of a socketpair, driven frame by frame by a test."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(5)
        self.seq = 0
        self.dec = dp.FrameDecoder()
        self.q = []

    def send(self, cmd, **kw):
        self.sock.sendall(dp.encode_frame(cmd, salt=self.seq, **kw))
        self.seq += 1

    def recv(self):
        while not self.q:
            d = self.sock.recv(65536)
            if not d:
                raise EOFError("closed")
            self.q += self.dec.feed(d)
        return self.q.pop(0)

    def eof(self, timeout=3):
        self.sock.settimeout(timeout)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
        except socket.timeout:
            return False
        except OSError:
            return True


class TestLinkRules(unittest.TestCase):
    """The strict receive checks of §5.4 and the reply flags of §6/§7."""

    def setUp(self):
        a, b = socket.socketpair()
        self.link = dp.Link(a, name="t")
        self.link.start()
        self.raw = RawPeer(b)
        conn = self.raw.recv()                                  # our LNK_CONN
        self.assertEqual(conn.cmd, 0x80001106)
        self.assertEqual(conn.circuit, 0)
        info = dp.unpack_conn(conn.ext)
        self.assertEqual((info["peer_type"], info["peer_mask"]), (63, 1 << 2))
        self.conn_id = conn.msgid
        self.raw.send(dp.LNK_CONN | dp.F_CREATE, msgid=0x77,
                      ext=dp.pack_conn(peer_type=1, peer_mask=2 ** 64 - 1))
        ack = self.raw.recv()
        self.assertEqual((ack.cmd, ack.msgid, ack.circuit, ack.error),
                         (0xA80FFF01, 0x77, 0, 0))
        self.raw.send(0xA80FFF01, msgid=self.conn_id)
        self.link.wait_ready(5)

    def tearDown(self):
        self.link.close()
        self.raw.sock.close()

    def assertViolation(self, fragment):
        self.assertTrue(self.link.dead.wait(3), "link did not die")
        self.assertIsNotNone(self.link.violation)
        self.assertIn(fragment, self.link.violation)
        self.assertTrue(self.raw.eof())

    def send_span(self, msgid=0x500, label="SER"):
        self.raw.send(dp.LNK_SPAN | dp.F_CREATE, msgid=msgid,
                      ext=dp.pack_span(media_bytes=1 << 20, blksize=512,
                                       peer_label="h/d", pfs_label=label))
        ack = self.raw.recv()
        self.assertEqual((ack.cmd, ack.msgid), (0xA80FFF01, msgid))

    def test_ping_answered_one_way(self):
        self.raw.send(dp.LNK_PING)
        r = self.raw.recv()
        self.assertEqual((r.cmd, r.msgid, r.circuit), (0x20000101, 0, 0))
        self.assertFalse(self.link.dead.is_set())

    def test_span_recorded_and_delete_answered(self):
        self.send_span()
        self.assertEqual(self.link.spans[0x500]["pfs_label"], "SER")
        self.raw.send(dp.LNK_ERROR | dp.F_DELETE, msgid=0x500)
        r = self.raw.recv()
        self.assertEqual((r.cmd, r.msgid), (0x680FFF01, 0x500))   # REPLY|DELETE|REVTRANS
        time.sleep(0.1)
        self.assertNotIn(0x500, self.link.spans)
        self.assertFalse(self.link.dead.is_set())

    def test_dup_create(self):
        self.send_span()
        self.raw.send(dp.LNK_SPAN | dp.F_CREATE, msgid=0x500, ext=dp.pack_span())
        self.assertViolation("duplicate CREATE")

    def test_delete_unknown(self):
        self.raw.send(dp.LNK_ERROR | dp.F_DELETE, msgid=0x999)
        self.assertViolation("DELETE for an unknown transaction")

    def test_delete_unknown_with_abort_is_dropped(self):
        self.raw.send(dp.LNK_ERROR | dp.F_DELETE | dp.F_ABORT, msgid=0x999)
        self.raw.send(dp.LNK_PING)
        self.assertEqual(self.raw.recv().cmd, 0x20000101)
        self.assertFalse(self.link.dead.is_set())

    def test_reply_unknown(self):
        self.raw.send(0xE80FFF01, msgid=0x1234)
        self.assertViolation("for an unknown transaction")

    def test_second_conn(self):
        self.raw.send(dp.LNK_CONN | dp.F_CREATE, msgid=0x78,
                      ext=dp.pack_conn(peer_type=1, peer_mask=0))
        self.assertViolation("second LNK_CONN")

    def test_wrong_units(self):
        self.raw.send((dp.LNK_CONN & ~0xFF) | 8 | dp.F_CREATE, msgid=0x79)
        self.assertViolation("LNK_CONN with 8 header size units")

    def test_bad_seq(self):
        self.raw.seq += 1
        self.raw.send(dp.LNK_PING)
        self.assertViolation("sequence number")

    def _io_setup(self):
        self.send_span()
        disk = self.link.disk(0x500)
        res = {}
        th = threading.Thread(target=lambda: res.update(r=disk.open(timeout=5)))
        th.start()
        op = self.raw.recv()
        self.assertEqual(op.cmd, 0x84500102)                   # BLK_OPEN|CREATE|REVCIRC
        self.assertEqual(op.circuit, 0x500)
        self.raw.send(0xA80FFF01, msgid=op.msgid, circuit=0x500)
        th.join(5)
        self.assertEqual(res["r"].error, 0)
        return disk, op

    def test_io_reply_flags_and_pipelining(self):
        disk, op = self._io_setup()
        tks = [disk.submit_read(i * 512, 512) for i in range(20)]
        reqs = [self.raw.recv() for _ in tks]
        for r in reqs:
            self.assertEqual(r.cmd, 0xC0500302)
            self.assertEqual(r.circuit, op.msgid)
        for i, r in reversed(list(enumerate(reqs))):          # answer out of order
            _k, off, n = dp.unpack_io(r.ext)
            self.raw.send(0xEC0FFF01, msgid=r.msgid, circuit=op.msgid,
                          aux=bytes([i]) * (n // 2))         # short data -> zero fill
        for i, tk in enumerate(tks):
            res = disk.wait(tk, 5)
            self.assertEqual(res.error, 0)
            self.assertEqual(res.data, bytes([i]) * 256 + bytes(256))
        # close: LNK_ERROR|DELETE|REVCIRC, answered LNK_ERROR|REPLY|DELETE|REVTRANS
        th = threading.Thread(target=disk.close_disk, kwargs={"timeout": 5})
        th.start()
        c = self.raw.recv()
        self.assertEqual((c.cmd, c.msgid, c.circuit), (0x440FFF01, op.msgid, 0x500))
        self.raw.send(0x680FFF01, msgid=op.msgid, circuit=0x500)
        th.join(5)
        self.assertFalse(th.is_alive())
        self.assertFalse(self.link.dead.is_set())

    def test_probe_io_directly_under_span(self):
        self.send_span()
        disk = self.link.disk(0x500)
        tk = disk.submit_write(0, b"x" * 512)
        r = self.raw.recv()
        self.assertEqual((r.cmd, r.circuit, r.aux), (0xC4500402, 0x500, b"x" * 512))
        self.raw.send(0xE80FFF01, msgid=r.msgid, circuit=0x500)   # no REVCIRC
        self.assertEqual(disk.wait(tk, 5).error, 0)

    def test_io_reply_missing_revcirc(self):
        disk, op = self._io_setup()
        tk = disk.submit_read(0, 512)
        r = self.raw.recv()
        # REVCIRC missing: circuit is looked up in the wrong table
        self.raw.send(0xE80FFF01, msgid=r.msgid, circuit=op.msgid)
        self.assertViolation("circuit")
        with self.assertRaises(dp.LinkDown):
            disk.wait(tk, 2)

    def test_io_reply_without_delete(self):
        disk, op = self._io_setup()
        tk = disk.submit_read(0, 512)
        r = self.raw.recv()
        self.raw.send(0xAC0FFF01, msgid=r.msgid, circuit=op.msgid)
        self.assertViolation("io reply")

    def test_span_delete_terminates_open(self):
        disk, op = self._io_setup()
        tk = disk.submit_read(0, 512)
        self.raw.recv()
        self.raw.send(dp.LNK_ERROR | dp.F_DELETE, msgid=0x500)
        r = self.raw.recv()
        self.assertEqual((r.cmd, r.msgid), (0x680FFF01, 0x500))
        res = disk.wait(tk, 5)
        self.assertEqual((res.error, res.synthesized), (dp.DMSG_ERR_LOSTLINK, True))
        # late messages on the dead children are dropped silently (§5.3)
        self.raw.send(dp.LNK_ERROR | dp.F_REPLY | dp.F_DELETE | dp.F_REVTRANS
                      | dp.F_REVCIRC, msgid=op.msgid, circuit=op.msgid)
        self.raw.send(dp.LNK_PING)
        self.assertEqual(self.raw.recv().cmd, 0x20000101)
        self.assertFalse(self.link.dead.is_set())


def _free_image(size):
    fd, path = tempfile.mkstemp(prefix="dmsg-peer-test-", suffix=".img")
    os.ftruncate(fd, size)
    os.close(fd)
    return path


class TestEndToEnd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.image = _free_image(32 << 20)
        # stderr to a file: the server logs one JSON line per event and must never
        # block on a full pipe
        cls.errf = tempfile.TemporaryFile(mode="w+")
        cls.srv = subprocess.Popen(
            [sys.executable, PEER, "server", "--listen", "127.0.0.1:0", "--image",
             cls.image, "--serial", "PEERTEST-0001", "--label", "testhost/disk0",
             "--fail-on-violation"],
            stdout=subprocess.PIPE, stderr=cls.errf, text=True)
        line = cls.srv.stdout.readline()
        cls.port = json.loads(line)["port"]

    @classmethod
    def tearDownClass(cls):
        if cls.srv.poll() is None:
            cls.srv.kill()
            cls.srv.wait()
        cls.srv.stdout.close()
        cls.errf.close()
        os.unlink(cls.image)

    def run_peer(self, *args, timeout=120):
        return subprocess.run([sys.executable, PEER, *args], capture_output=True,
                              text=True, timeout=timeout)

    def test_1_verify(self):
        r = self.run_peer("client", "127.0.0.1", str(self.port), "--serial",
                          "PEERTEST-0001", "verify", "--bytes", "4MiB", "--qd", "16",
                          "--seed", "42")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertTrue(out["ok"])
        self.assertEqual(out["bytes_written"], 4 << 20)
        self.assertIn(out["past_end_error"], (0x22, 0x23))

    def test_2_ping(self):
        r = self.run_peer("client", "127.0.0.1", str(self.port), "ping", "--count", "25")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(json.loads(r.stdout)["ok"])

    def test_3_spans(self):
        r = self.run_peer("client", "127.0.0.1", str(self.port), "spans", "--wait", "0.3")
        self.assertEqual(r.returncode, 0, r.stderr)
        spans = [json.loads(l) for l in r.stdout.splitlines()]
        self.assertEqual(len(spans), 1)
        s = spans[0]
        self.assertEqual((s["peer_type"], s["pfs_type"], s["proto_version"], s["bytes"],
                          s["blksize"], s["pfs_label"], s["peer_label"]),
                         (2, 3, 1, 32 << 20, 512, "PEERTEST-0001", "testhost/disk0"))

    def test_4_malformed(self):
        # every malformed input must make our own (strict) server drop the link
        for kind in dp.MALFORMED_KINDS:
            if kind == "half-open":
                continue
            with self.subTest(kind):
                r = self.run_peer("malformed", "127.0.0.1", str(self.port), kind,
                                  "--timeout", "3", "--settle", "0.1")
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertTrue(json.loads(r.stdout)["remote_closed"])
        # half-open: nothing times out idle links (§6.5) -> not dropped -> exit 1
        r = self.run_peer("malformed", "127.0.0.1", str(self.port), "half-open",
                          "--hold", "0.5")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertFalse(json.loads(r.stdout)["remote_closed"])

    def test_5_verify_again_and_sigterm(self):
        # the server survived all of the above and still serves correctly
        r = self.run_peer("client", "127.0.0.1", str(self.port), "verify", "--bytes",
                          "1MiB", "--qd", "32", "--seed", "7", "--no-probe")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.srv.send_signal(signal.SIGTERM)
        rc = self.srv.wait(10)
        self.errf.seek(0)
        err = self.errf.read()
        # --fail-on-violation: the malformed tests caused violations -> exit 1;
        # a crash or death by signal would give another code.
        self.assertEqual(rc, 1, err)
        self.assertIn('"server-exit"', err)


class TestServerConnect(unittest.TestCase):
    """`server --connect`: connects out, serves, reconnects after a drop."""

    def test_connect_and_reconnect(self):
        image = _free_image(1 << 20)
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(4)
        ls.settimeout(10)
        port = ls.getsockname()[1]
        errf = tempfile.TemporaryFile(mode="w+")
        srv = subprocess.Popen([sys.executable, PEER, "server", "--connect",
                                "127.0.0.1:%d" % port, "--image", image, "--serial",
                                "CONN-1", "--label", "h/c", "--fail-on-violation"],
                               stdout=subprocess.DEVNULL, stderr=errf, text=True)
        try:
            for round_ in range(2):
                s, _ = ls.accept()
                link = dp.Link(s, name="acc%d" % round_).start()
                link.wait_ready(5)
                span = link.wait_span(5, "CONN-1")
                self.assertEqual(span["bytes"], 1 << 20)
                disk = link.open_disk(span["msgid"], timeout=5)
                data = bytes(range(256)) * 4
                self.assertEqual(disk.write(4096, data, 5).error, 0)
                self.assertEqual(disk.read(4096, 1024, 5).data, data)
                bad = disk.read(1 << 20, 512, 5)                   # past the end
                self.assertEqual(bad.error, dp.DMSG_ERR_PARAM)
                bad = disk.read(100, 512, 5)                       # misaligned
                self.assertEqual(bad.error, dp.DMSG_ERR_PARAM)
                self.assertEqual(disk.trim(4096, 512, 5).error, 0)
                self.assertEqual(disk.read(4096, 1024, 5).data, bytes(512) + data[512:])
                self.assertEqual(disk.flush(5).error, 0)
                self.assertEqual(disk.close_disk(5).error, 0)
                self.assertEqual(link.violations, [])
                link.close()        # drop: the server must reconnect
            srv.send_signal(signal.SIGTERM)
            rc = srv.wait(10)
            errf.seek(0)
            self.assertEqual(rc, 0, errf.read())
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
            ls.close()
            errf.close()
            os.unlink(image)


if __name__ == "__main__":
    unittest.main()
