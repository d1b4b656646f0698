// The dmsg codec: base header, extended headers and frame encoding, checked
// byte-exactly against dmsg-protocol.md (§3, §6, §7, §8 and the §10 vectors).
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "proto/crc32c.h"
#include "proto/dmsg.h"
#include "proto/frame_decoder.h"
#include "test/unit/spec_vectors.h"

using namespace xdisk::dmsg;

namespace {

using Bytes = std::vector<uint8_t>;

using xdisk::spec_vectors::FromHexDump;
using xdisk::spec_vectors::kTv3;
using xdisk::spec_vectors::kTv4;
using xdisk::spec_vectors::kTv5Header;

uint32_t Le32(const Bytes& b, size_t off) {
  return uint32_t{b[off]} | uint32_t{b[off + 1]} << 8 | uint32_t{b[off + 2]} << 16 |
         uint32_t{b[off + 3]} << 24;
}

uint64_t Le64(const Bytes& b, size_t off) {
  return uint64_t{Le32(b, off)} | uint64_t{Le32(b, off + 4)} << 32;
}

// Decodes exactly one frame from `wire` with a fresh decoder (so the salt low
// byte must be 0).
Frame DecodeOne(const Bytes& wire) {
  FrameDecoder d;
  d.Feed(wire);
  Frame f;
  DecodeError err = DecodeError::kNone;
  std::string detail;
  REQUIRE(d.Next(&f, &err, &detail) == FrameDecoder::Outcome::kFrame);
  REQUIRE(d.buffered() == 0);
  return f;
}

Uuid Counting(uint8_t first) {
  Uuid u;
  for (size_t i = 0; i < u.size(); ++i) u[i] = static_cast<uint8_t>(first + i);
  return u;
}

Header Tv4Header() {
  Header h;
  h.salt = 5;
  h.msgid = 0xFFFFF80012345678ull;
  h.circuit = 0xFFFFF800DEADBEEFull;
  h.cmd = kBlkRead | kFlagCreate | kFlagDelete | kFlagRevCirc;
  return h;
}

Header Tv5Header() {
  Header h;
  h.salt = 7;
  h.msgid = 0xFFFFF80012345678ull;
  h.circuit = 0x1000;
  h.cmd = kLnkError | kFlagReply | kFlagCreate | kFlagDelete | kFlagRevTrans | kFlagRevCirc;
  return h;
}

}  // namespace

// ---- Test vectors (§10) ----

TEST_CASE("EncodeFrame of a one-way LNK_PING is byte-identical to TV3", "[codec]") {
  Header h;
  h.cmd = kLnkPing;
  Bytes wire;
  EncodeFrame(h, {}, {}, &wire);
  CHECK(wire == FromHexDump(kTv3));
  CHECK(Le32(wire, 0x3C) == 0xF426A441u);
}

TEST_CASE("EncodeFrame of a BLK_READ request is byte-identical to TV4", "[codec]") {
  BlkIo io;
  io.offset = 0x10000;
  io.bytes = 65536;
  REQUIRE(Tv4Header().cmd == 0xC4500302u);
  Bytes wire;
  EncodeFrame(Tv4Header(), io.Encode(), {}, &wire);
  CHECK(wire == FromHexDump(kTv4));
  CHECK(Le32(wire, 0x3C) == 0xC51077A8u);
}

TEST_CASE("EncodeFrame of a read reply with 100 aux bytes matches TV5 and pads aux with zeros",
          "[codec]") {
  REQUIRE(Tv5Header().cmd == 0xEC0FFF01u);
  const Bytes aux(100, 0xA5);
  Bytes wire;
  EncodeFrame(Tv5Header(), {}, aux, &wire);
  REQUIRE(wire.size() == 64 + 128);
  CHECK(Bytes(wire.begin(), wire.begin() + 64) == FromHexDump(kTv5Header));
  CHECK(Le32(wire, 0x24) == 0xB74DCC06u);  // aux_crc
  CHECK(Le32(wire, 0x28) == 100u);         // aux_bytes
  CHECK(Le32(wire, 0x3C) == 0x7559EA8Bu);  // hdr_crc
  CHECK(Bytes(wire.begin() + 64, wire.begin() + 164) == aux);
  CHECK(Bytes(wire.begin() + 164, wire.end()) == Bytes(28, 0));
}

TEST_CASE("EncodeHeader writes the same header as EncodeFrame, without the aux", "[codec]") {
  const Bytes aux(100, 0xA5);
  Bytes header;
  EncodeHeader(Tv5Header(), {}, aux, &header);
  CHECK(header == FromHexDump(kTv5Header));

  Bytes aux64(64, 0x11), full, hdr_only;
  EncodeFrame(Tv4Header(), BlkIo{}.Encode(), aux64, &full);
  EncodeHeader(Tv4Header(), BlkIo{}.Encode(), aux64, &hdr_only);
  CHECK(hdr_only == Bytes(full.begin(), full.begin() + 128));
}

TEST_CASE("EncodeFrame clears the output and ignores incoming aux and crc fields", "[codec]") {
  Header h = Tv4Header();
  h.aux_bytes = 999;
  h.aux_crc = 0x12345678;
  h.hdr_crc = 0xDEADBEEF;
  Bytes wire(7, 0xEE);
  BlkIo io;
  io.offset = 0x10000;
  io.bytes = 65536;
  EncodeFrame(h, io.Encode(), {}, &wire);
  CHECK(wire == FromHexDump(kTv4));
}

TEST_CASE("An aux of exactly 64 bytes gets no padding; an empty aux has aux_crc 0", "[codec]") {
  Header h;
  h.cmd = kBlkWrite | kFlagCreate | kFlagDelete;
  Bytes aux(64, 0x5A), wire;
  EncodeFrame(h, BlkIo{}.Encode(), aux, &wire);
  CHECK(wire.size() == 128 + 64);
  CHECK(Le32(wire, 0x24) == xdisk::Crc32c(aux.data(), aux.size()));
  EncodeFrame(h, BlkIo{}.Encode(), {}, &wire);
  CHECK(wire.size() == 128);
  CHECK(Le32(wire, 0x24) == 0u);
  CHECK(Le32(wire, 0x28) == 0u);
}

TEST_CASE("A short extended header is zero padded to the size units in cmd", "[codec]") {
  Header h;
  h.cmd = kBlkError | kFlagReply;
  const Bytes ext(10, 0xFF);
  Bytes wire;
  EncodeFrame(h, ext, {}, &wire);
  REQUIRE(wire.size() == 192);
  CHECK(Bytes(wire.begin() + 64, wire.begin() + 74) == ext);
  CHECK(Bytes(wire.begin() + 74, wire.end()) == Bytes(118, 0));
}

// ---- Base header ----

TEST_CASE("DecodeBaseHeader reads every TV4 field little-endian", "[codec]") {
  const Bytes tv4 = FromHexDump(kTv4);
  Header h = DecodeBaseHeader(tv4);
  CHECK(h.magic == kMagic);
  CHECK(h.salt == 5u);
  CHECK(h.msgid == 0xFFFFF80012345678ull);
  CHECK(h.circuit == 0xFFFFF800DEADBEEFull);
  CHECK(h.cmd == 0xC4500302u);
  CHECK(HeaderBytes(h.cmd) == 128u);
  CHECK(h.hdr_crc == 0xC51077A8u);
  CHECK(h.aux_bytes == 0u);
}

TEST_CASE("Every base header field round-trips at its spec offset", "[codec]") {
  Header h;
  h.magic = 0xA1A2;
  h.reserved02 = 0xB1B2;
  h.salt = 0xC1C2C3C4;
  h.msgid = 0x0102030405060708ull;
  h.circuit = 0x1112131415161718ull;
  h.link_verifier = 0x2122232425262728ull;
  h.cmd = 0x31323334;
  h.aux_crc = 0x41424344;
  h.aux_bytes = 0x51525354;
  h.error = 0x61626364;
  h.aux_descr = 0x7172737475767778ull;
  h.reserved38 = 0x81828384;
  h.hdr_crc = 0x91929394;
  Bytes b(64, 0xEE);
  EncodeBaseHeader(h, b);
  CHECK(b[0x00] == 0xA2);
  CHECK(b[0x02] == 0xB2);
  CHECK(Le32(b, 0x04) == h.salt);
  CHECK(Le64(b, 0x08) == h.msgid);
  CHECK(Le64(b, 0x10) == h.circuit);
  CHECK(Le64(b, 0x18) == h.link_verifier);
  CHECK(Le32(b, 0x20) == h.cmd);
  CHECK(Le32(b, 0x24) == h.aux_crc);
  CHECK(Le32(b, 0x28) == h.aux_bytes);
  CHECK(Le32(b, 0x2C) == h.error);
  CHECK(Le64(b, 0x30) == h.aux_descr);
  CHECK(Le32(b, 0x38) == h.reserved38);
  CHECK(Le32(b, 0x3C) == h.hdr_crc);
  Header d = DecodeBaseHeader(b);
  CHECK(d.magic == h.magic);
  CHECK(d.reserved02 == h.reserved02);
  CHECK(d.salt == h.salt);
  CHECK(d.msgid == h.msgid);
  CHECK(d.circuit == h.circuit);
  CHECK(d.link_verifier == h.link_verifier);
  CHECK(d.cmd == h.cmd);
  CHECK(d.aux_crc == h.aux_crc);
  CHECK(d.aux_bytes == h.aux_bytes);
  CHECK(d.error == h.error);
  CHECK(d.aux_descr == h.aux_descr);
  CHECK(d.reserved38 == h.reserved38);
  CHECK(d.hdr_crc == h.hdr_crc);
}

TEST_CASE("Header size helpers follow the size units of each command", "[codec]") {
  CHECK(HeaderBytes(kLnkPing) == 64u);
  CHECK(HeaderBytes(kLnkConn) == 384u);
  CHECK(HeaderBytes(kLnkSpan) == 448u);
  CHECK(HeaderBytes(kBlkOpen) == 128u);
  CHECK(HeaderBytes(kBlkRead | kFlagCreate) == 128u);
  CHECK(HeaderBytes(kBlkError) == 192u);
  CHECK(PaddedAux(0) == 0u);
  CHECK(PaddedAux(1) == 64u);
  CHECK(PaddedAux(64) == 64u);
  CHECK(PaddedAux(65) == 128u);
  CHECK(BaseCmd(0xEC5FFF03) == kBlkError);
}

// ---- Names ----

TEST_CASE("CommandName prints the base command then the flags", "[codec]") {
  CHECK(CommandName(0xC4500302) == "BLK_READ|CREATE|DELETE|REVCIRC");
  CHECK(CommandName(kLnkPing) == "LNK_PING");
  CHECK(CommandName(0xEC0FFF01) == "LNK_ERROR|CREATE|DELETE|REPLY|REVTRANS|REVCIRC");
  CHECK(CommandName(kLnkConn | kFlagCreate) == "LNK_CONN|CREATE");
  CHECK(CommandName(kBlkOpen | kFlagAbort) == "BLK_OPEN|ABORT");
}

TEST_CASE("CommandName prints unknown commands (including wrong size units) in hex", "[codec]") {
  CHECK(CommandName(0x00001108) == "0x001108");  // E1 LNK_CONN: 8 units
  CHECK(CommandName(0x80500702) == "0x500702|CREATE");
  CHECK(CommandName(0x01000101) == "LNK_PING|0x01000000");
}

TEST_CASE("ErrorName names the dmsg error codes and prints others in hex", "[codec]") {
  CHECK(ErrorName(0) == "OK");
  CHECK(ErrorName(kErrNoSupp) == "NOSUPP");
  CHECK(ErrorName(kErrLostLink) == "LOSTLINK");
  CHECK(ErrorName(kErrIo) == "IO");
  CHECK(ErrorName(kErrParam) == "PARAM");
  CHECK(ErrorName(kErrCantCirc) == "CANTCIRC");
  CHECK(ErrorName(0x05) == "0x05");
}

// ---- Uuids (§8) ----

TEST_CASE("UuidToString reads the first three fields little-endian", "[codec]") {
  Uuid u = Counting(0);
  CHECK(UuidToString(u) == "03020100-0504-0706-0809-0a0b0c0d0e0f");
  CHECK(UuidToString(Uuid{}) == "00000000-0000-0000-0000-000000000000");
}

TEST_CASE("UuidFromString inverts UuidToString and accepts upper case", "[codec]") {
  Uuid u = Counting(0xA0);
  auto r = UuidFromString(UuidToString(u));
  REQUIRE(r.ok());
  CHECK(*r == u);
  auto upper = UuidFromString("A3A2A1A0-A5A4-A7A6-A8A9-AAABACADAEAF");
  REQUIRE(upper.ok());
  CHECK(*upper == u);
}

TEST_CASE("UuidFromString rejects malformed text", "[codec]") {
  for (const char* bad :
       {"", "03020100-0504-0706-0809-0a0b0c0d0e0", "03020100-0504-0706-0809-0a0b0c0d0e0f0",
        "03020100x0504-0706-0809-0a0b0c0d0e0f", "0302010g-0504-0706-0809-0a0b0c0d0e0f",
        "030201000504-0706-0809-0a0b0c0d0e0f-"}) {
    INFO(bad);
    auto r = UuidFromString(bad);
    CHECK_FALSE(r.ok());
    CHECK(r.status().kind() == xdisk::Status::Kind::kInvalidArgument);
  }
}

TEST_CASE("IsNil is true only for the all-zero uuid", "[codec]") {
  CHECK(IsNil(Uuid{}));
  Uuid u{};
  u[15] = 1;
  CHECK_FALSE(IsNil(u));
}

// ---- Extended headers ----

TEST_CASE("LNK_CONN encodes to 320 bytes with fields at the §6.2 offsets", "[codec]") {
  LnkConn c;
  c.media_id = Counting(0x10);
  c.peer_id = Counting(0x40);
  c.peer_mask = 0x0102030405060708ull;
  c.peer_type = kPeerClient;
  c.proto_version = kSpanProtoVersion;
  c.status = 0xA1A2A3A4;
  c.rnss = 0xB1B2B3B4;
  c.peer_label = "host/xdisk";
  const Bytes ext = c.Encode();
  REQUIRE(ext.size() == HeaderBytes(LnkConn::kCmd) - 64);
  // Wire offsets from §6.2, minus the 64-byte base header.
  CHECK(ext[0x40 - 64] == 0x10);
  CHECK(ext[0x50 - 64] == 0x40);
  CHECK(Bytes(ext.begin() + 0x60 - 64, ext.begin() + 0x70 - 64) == Bytes(16, 0));  // reserved01
  CHECK(Le64(ext, 0x70 - 64) == c.peer_mask);
  CHECK(ext[0x78 - 64] == 63);
  CHECK(ext[0x79 - 64] == 0);
  CHECK(ext[0x7A - 64] == 1);
  CHECK(Le32(ext, 0x7C - 64) == c.status);
  CHECK(Le32(ext, 0x80 - 64) == c.rnss);
  CHECK(std::string(reinterpret_cast<const char*>(&ext[0xC4 - 64])) == "host/xdisk");
  CHECK(Bytes(ext.begin() + 0xC4 - 64 + 10, ext.end()) == Bytes(ext.size() - (0xC4 - 64 + 10), 0));
}

TEST_CASE("LNK_CONN round-trips through a full frame", "[codec]") {
  LnkConn c;
  c.media_id = Counting(1);
  c.peer_id = Counting(100);
  c.peer_mask = ~0ull;
  c.peer_type = kPeerBlock;
  c.proto_version = 1;
  c.status = 7;
  c.rnss = 9;
  c.peer_label = "linux-box/xdisk-fuse";
  Header h;
  h.cmd = LnkConn::kCmd | kFlagCreate;
  h.msgid = 0xA;
  Bytes wire;
  EncodeFrame(h, c.Encode(), {}, &wire);
  CHECK(wire.size() == 384);
  Frame f = DecodeOne(wire);
  REQUIRE(BaseCmd(f.hdr.cmd) == LnkConn::kCmd);
  LnkConn d = LnkConn::Decode(f.ext_span());
  CHECK(d.media_id == c.media_id);
  CHECK(d.peer_id == c.peer_id);
  CHECK(d.peer_mask == c.peer_mask);
  CHECK(d.peer_type == c.peer_type);
  CHECK(d.proto_version == c.proto_version);
  CHECK(d.status == c.status);
  CHECK(d.rnss == c.rnss);
  CHECK(d.peer_label == c.peer_label);
}

TEST_CASE("LNK_SPAN encodes to 384 bytes with fields at the §6.3 offsets", "[codec]") {
  LnkSpan s;
  s.peer_id = Counting(0x20);
  s.pfs_id = Counting(0x60);
  s.pfs_type = kPfsTypeServer;
  s.peer_type = kPeerBlock;
  s.proto_version = kSpanProtoVersion;
  s.status = 0x11223344;
  s.dist = 3;
  s.rnss = 0x55667788;
  s.media_bytes = 0x0000001234567800ull;
  s.blksize = 4096;
  s.peer_label = "host/sda";
  s.pfs_label = "XF-SERIAL-1";
  const Bytes ext = s.Encode();
  REQUIRE(ext.size() == HeaderBytes(LnkSpan::kCmd) - 64);
  CHECK(ext[0x40 - 64] == 0x20);
  CHECK(ext[0x50 - 64] == 0x60);
  CHECK(ext[0x60 - 64] == 3);
  CHECK(ext[0x61 - 64] == 2);
  CHECK(ext[0x62 - 64] == 1);
  CHECK(Le32(ext, 0x64 - 64) == s.status);
  CHECK(Le32(ext, 0x70 - 64) == s.dist);
  CHECK(Le32(ext, 0x74 - 64) == s.rnss);
  CHECK(Le64(ext, 0x78 - 64) == s.media_bytes);
  CHECK(Le32(ext, 0x80 - 64) == s.blksize);
  CHECK(std::string(reinterpret_cast<const char*>(&ext[0xB0 - 64])) == "host/sda");
  CHECK(std::string(reinterpret_cast<const char*>(&ext[0x130 - 64])) == "XF-SERIAL-1");
}

TEST_CASE("A relayed LNK_SPAN keeps every received byte but dist and rnss", "[codec]") {
  // Every byte non-zero, reserved fields and a foreign media union too.
  Bytes received(384);
  for (size_t i = 0; i < received.size(); ++i) received[i] = static_cast<uint8_t>(i * 7 + 1);
  const LnkSpan decoded = LnkSpan::Decode(received);
  CHECK(decoded.received == received);
  const Bytes relayed = LnkSpan::Relayed(decoded.received, decoded.dist + 1, 0xA1B2C3D4);
  REQUIRE(relayed.size() == received.size());
  CHECK(Le32(relayed, 0x70 - 64) == decoded.dist + 1);
  CHECK(Le32(relayed, 0x74 - 64) == 0xA1B2C3D4u);
  for (size_t i = 0; i < received.size(); ++i) {
    if (i >= 0x30 && i < 0x38) continue;  // dist, rnss
    INFO("byte " << i);
    CHECK(relayed[i] == received[i]);
  }
  // A short extended header is padded as the decoder reads it.
  const Bytes shorter = LnkSpan::Relayed(Bytes(received.begin(), received.begin() + 0x40), 2, 3);
  CHECK(shorter.size() == 384u);
  CHECK(shorter[0x41] == 0);
}

TEST_CASE("LNK_SPAN round-trips through a full frame", "[codec]") {
  LnkSpan s;
  s.peer_id = Counting(5);
  s.pfs_id = Counting(50);
  s.pfs_type = kPfsTypeServer;
  s.peer_type = kPeerBlock;
  s.proto_version = 1;
  s.status = 1;
  s.dist = 16;
  s.rnss = 0xFFFFFFFF;
  s.media_bytes = 1ull << 40;
  s.blksize = 512;
  s.peer_label = "h/d";
  s.pfs_label = "serial";
  Header h;
  h.cmd = LnkSpan::kCmd | kFlagCreate;
  h.msgid = 0xB;
  Bytes wire;
  EncodeFrame(h, s.Encode(), {}, &wire);
  CHECK(wire.size() == 448);
  Frame f = DecodeOne(wire);
  LnkSpan d = LnkSpan::Decode(f.ext_span());
  CHECK(d.peer_id == s.peer_id);
  CHECK(d.pfs_id == s.pfs_id);
  CHECK(d.pfs_type == s.pfs_type);
  CHECK(d.peer_type == s.peer_type);
  CHECK(d.proto_version == s.proto_version);
  CHECK(d.status == s.status);
  CHECK(d.dist == s.dist);
  CHECK(d.rnss == s.rnss);
  CHECK(d.media_bytes == s.media_bytes);
  CHECK(d.blksize == s.blksize);
  CHECK(d.peer_label == s.peer_label);
  CHECK(d.pfs_label == s.pfs_label);
}

TEST_CASE("BLK_OPEN round-trips and puts modes at 0x40", "[codec]") {
  BlkOpen o;
  o.modes = kBlkModeRead | kBlkModeWrite;
  const Bytes ext = o.Encode();
  REQUIRE(ext.size() == HeaderBytes(BlkOpen::kCmd) - 64);
  CHECK(Le32(ext, 0) == 3u);
  CHECK(Bytes(ext.begin() + 4, ext.end()) == Bytes(60, 0));
  Header h;
  h.cmd = BlkOpen::kCmd | kFlagCreate | kFlagRevCirc;
  Bytes wire;
  EncodeFrame(h, ext, {}, &wire);
  CHECK(BlkOpen::Decode(DecodeOne(wire).ext_span()).modes == o.modes);
}

TEST_CASE("BLK_READ/WRITE/FLUSH/FREEBLKS share the BlkIo layout and round-trip", "[codec]") {
  BlkIo io;
  io.keyid = 0x0102030405060708ull;
  io.offset = 0xFFFFFFFFFFFFF000ull;
  io.bytes = 131072;
  io.flags = 0xA5A5A5A5;
  const Bytes ext = io.Encode();
  REQUIRE(ext.size() == 64);
  CHECK(Le64(ext, 0x40 - 64) == io.keyid);
  CHECK(Le64(ext, 0x48 - 64) == io.offset);
  CHECK(Le32(ext, 0x50 - 64) == io.bytes);
  CHECK(Le32(ext, 0x54 - 64) == io.flags);
  CHECK(Bytes(ext.begin() + 0x58 - 64, ext.end()) == Bytes(40, 0));
  for (uint32_t cmd : {kBlkRead, kBlkWrite, kBlkFlush, kBlkFreeblks}) {
    INFO(CommandName(cmd));
    REQUIRE(HeaderBytes(cmd) - 64 == ext.size());
    Header h;
    h.cmd = cmd | kFlagCreate | kFlagDelete;
    const Bytes aux = cmd == kBlkWrite ? Bytes(4096, 0x3C) : Bytes{};
    Bytes wire;
    EncodeFrame(h, ext, aux, &wire);
    Frame f = DecodeOne(wire);
    CHECK(Bytes(f.aux.begin(), f.aux.end()) == aux);
    BlkIo d = BlkIo::Decode(f.ext_span());
    CHECK(d.keyid == io.keyid);
    CHECK(d.offset == io.offset);
    CHECK(d.bytes == io.bytes);
    CHECK(d.flags == io.flags);
  }
}

TEST_CASE("BLK_ERROR round-trips with resid at 0x48", "[codec]") {
  BlkError e;
  e.keyid = 0x99;
  e.resid = 4096;
  const Bytes ext = e.Encode();
  REQUIRE(ext.size() == HeaderBytes(BlkError::kCmd) - 64);
  CHECK(Le64(ext, 0x40 - 64) == 0x99u);
  CHECK(Le32(ext, 0x48 - 64) == 4096u);
  Header h;
  h.cmd = BlkError::kCmd | kFlagReply | kFlagCreate | kFlagDelete | kFlagRevTrans | kFlagRevCirc;
  h.error = kErrIo;
  Bytes wire;
  EncodeFrame(h, ext, Bytes(512, 1), &wire);
  Frame f = DecodeOne(wire);
  CHECK(f.hdr.error == kErrIo);
  BlkError d = BlkError::Decode(f.ext_span());
  CHECK(d.keyid == e.keyid);
  CHECK(d.resid == e.resid);
}

// ---- Labels (§8) ----

TEST_CASE("A label longer than 127 bytes is truncated to 127 bytes plus NUL", "[codec]") {
  LnkSpan s;
  s.peer_label = std::string(200, 'p');
  s.pfs_label = std::string(127, 's');
  const Bytes ext = s.Encode();
  CHECK(ext[0xB0 - 64 + 126] == 'p');
  CHECK(ext[0xB0 - 64 + 127] == 0);
  CHECK(ext[0x130 - 64 + 127] == 0);
  LnkSpan d = LnkSpan::Decode(ext);
  CHECK(d.peer_label == std::string(127, 'p'));
  CHECK(d.pfs_label == std::string(127, 's'));
}

TEST_CASE("Decoding a label stops at the first NUL and never reads byte 127", "[codec]") {
  LnkConn c;
  Bytes ext = c.Encode();
  // Fill the whole 128-byte label without any NUL, as a hostile peer could.
  std::memset(&ext[0xC4 - 64], 'x', 128);
  CHECK(LnkConn::Decode(ext).peer_label == std::string(127, 'x'));
  ext[0xC4 - 64 + 5] = 0;
  CHECK(LnkConn::Decode(ext).peer_label == "xxxxx");
  ext[0xC4 - 64] = 0;
  CHECK(LnkConn::Decode(ext).peer_label.empty());
}

TEST_CASE("Reserved bytes are ignored on decode and zero on encode", "[codec]") {
  LnkConn c;
  c.peer_label = "a";
  Bytes ext = c.Encode();
  for (size_t off : {0x20u, 0x39u, 0x44u, 0x50u, 0x83u}) ext[off] = 0xFF;  // reserved fields
  LnkConn d = LnkConn::Decode(ext);
  CHECK(d.Encode() == c.Encode());
}
