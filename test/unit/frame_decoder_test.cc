// FrameDecoder: every chunking of a multi-frame stream, each typed error in
// the documented order, and poisoning.
#include "proto/frame_decoder.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "proto/crc32c.h"
#include "proto/dmsg.h"

using namespace xdisk::dmsg;
using Outcome = FrameDecoder::Outcome;

namespace {

using Bytes = std::vector<uint8_t>;

struct Msg {
  Header hdr;
  Bytes ext;
  Bytes aux;
};

void Put32(Bytes& b, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[off + i] = static_cast<uint8_t>(v >> (8 * i));
}

// Recomputes aux_crc (when there is aux) and hdr_crc of the frame at `at`,
// so that a deliberate corruption is seen by the check under test rather
// than by the CRC checks.
void FixChecksums(Bytes& wire, size_t at = 0) {
  Header h = DecodeBaseHeader(std::span<const uint8_t>(wire).subspan(at));
  size_t hdr_bytes = HeaderBytes(h.cmd);
  if (h.aux_bytes > 0 && at + hdr_bytes + PaddedAux(h.aux_bytes) <= wire.size()) {
    Put32(wire, at + 0x24, xdisk::Crc32c(&wire[at + hdr_bytes], PaddedAux(h.aux_bytes)));
  }
  Put32(wire, at + 0x3C, 0);
  Put32(wire, at + 0x3C, xdisk::Crc32c(&wire[at], std::min(hdr_bytes, wire.size() - at)));
}

// The corruption helper: flips `mask` into byte `off`, optionally fixing
// the checksums afterwards.
void Flip(Bytes& wire, size_t off, uint8_t mask = 0xFF, bool fix = false) {
  wire[off] ^= mask;
  if (fix) FixChecksums(wire);
}

void Set32(Bytes& wire, size_t off, uint32_t v, bool fix = true) {
  Put32(wire, off, v);
  if (fix) FixChecksums(wire);
}

// A stream of messages with different header sizes, with and without aux,
// including aux lengths that are and are not multiples of 64.
std::vector<Msg> SampleMessages() {
  std::vector<Msg> m;
  auto add = [&](uint32_t cmd, Bytes ext, Bytes aux, uint64_t msgid) {
    Msg x;
    x.hdr.cmd = cmd;
    x.hdr.msgid = msgid;
    x.hdr.circuit = msgid ? msgid + 0x100 : 0;
    x.hdr.salt = static_cast<uint32_t>(m.size() & 0xFF) | 0xABCD00u;  // random upper bits
    x.ext = std::move(ext);
    x.aux = std::move(aux);
    m.push_back(std::move(x));
  };
  LnkConn conn;
  conn.peer_type = kPeerBlock;
  conn.proto_version = 1;
  conn.peer_label = "host/xdisk-fuse";
  LnkSpan span;
  span.peer_type = kPeerBlock;
  span.pfs_type = kPfsTypeServer;
  span.media_bytes = 1 << 30;
  span.blksize = 512;
  span.pfs_label = "serial-0001";
  BlkIo io;
  io.offset = 8192;
  io.bytes = 4096;
  BlkError berr;
  berr.resid = 17;
  Bytes data(4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + 3);

  add(kLnkConn | kFlagCreate, conn.Encode(), {}, 1);
  add(kLnkPing, {}, {}, 0);
  add(kLnkSpan | kFlagCreate, span.Encode(), {}, 2);
  add(kBlkRead | kFlagCreate | kFlagDelete, io.Encode(), {}, 3);
  add(kLnkError | kFlagReply | kFlagCreate | kFlagDelete, {},
      Bytes(data.begin(), data.begin() + 100), 3);
  add(kBlkWrite | kFlagCreate | kFlagDelete, io.Encode(), data, 4);
  add(kBlkError | kFlagReply | kFlagCreate | kFlagDelete, berr.Encode(), Bytes{0x42}, 4);
  add(kLnkError | kFlagReply, {}, Bytes(64, 0x99), 5);
  add(kBlkOpen | kFlagCreate, BlkOpen{kBlkModeRead}.Encode(), {}, 6);
  return m;
}

Bytes EncodeAll(const std::vector<Msg>& msgs) {
  Bytes stream, one;
  for (const Msg& m : msgs) {
    EncodeFrame(m.hdr, m.ext, m.aux, &one);
    stream.insert(stream.end(), one.begin(), one.end());
  }
  return stream;
}

// Feeds `stream` in chunks of the given sizes (cycled), draining frames after
// every chunk, and checks the result against `msgs`.
void DecodeInChunks(const Bytes& stream, const std::vector<Msg>& msgs,
                    const std::vector<size_t>& sizes) {
  FrameDecoder d;
  std::vector<Frame> got;
  size_t pos = 0, i = 0;
  Frame f;
  DecodeError err = DecodeError::kNone;
  while (pos < stream.size()) {
    size_t n = std::min(sizes[i++ % sizes.size()], stream.size() - pos);
    d.Feed(std::span<const uint8_t>(stream).subspan(pos, n));
    pos += n;
    Outcome o;
    while ((o = d.Next(&f, &err)) == Outcome::kFrame) got.push_back(f);
    REQUIRE(o == Outcome::kNeedMore);
  }
  REQUIRE(d.buffered() == 0);
  REQUIRE(got.size() == msgs.size());
  REQUIRE(d.frames_decoded() == msgs.size());
  for (size_t k = 0; k < msgs.size(); ++k) {
    INFO("frame " << k);
    REQUIRE(got[k].hdr.cmd == msgs[k].hdr.cmd);
    REQUIRE(got[k].hdr.msgid == msgs[k].hdr.msgid);
    REQUIRE(got[k].hdr.circuit == msgs[k].hdr.circuit);
    REQUIRE(got[k].hdr.salt == msgs[k].hdr.salt);
    REQUIRE(got[k].hdr.aux_bytes == msgs[k].aux.size());
    REQUIRE(got[k].ext.size() == HeaderBytes(msgs[k].hdr.cmd) - 64);
    REQUIRE(Bytes(got[k].ext.begin(), got[k].ext.begin() + msgs[k].ext.size()) == msgs[k].ext);
    REQUIRE(Bytes(got[k].aux.begin(), got[k].aux.end()) ==
            Bytes(msgs[k].aux.begin(), msgs[k].aux.end()));
  }
}

// A BLK_WRITE with aux, seq 0: two-unit header, so "64 bytes fed" is less
// than the header and much less than the frame.
Bytes WriteFrame(size_t aux_len = 300) {
  Header h;
  h.cmd = kBlkWrite | kFlagCreate | kFlagDelete;
  h.msgid = 77;
  BlkIo io;
  io.bytes = static_cast<uint32_t>(aux_len);
  Bytes aux(aux_len, 0x6B), wire;
  EncodeFrame(h, io.Encode(), aux, &wire);
  return wire;
}

struct Got {
  Outcome outcome;
  DecodeError err;
  std::string detail;
};

Got DecodeFirst(const Bytes& wire, size_t feed = SIZE_MAX) {
  FrameDecoder d;
  d.Feed(std::span<const uint8_t>(wire).first(std::min(feed, wire.size())));
  Frame f;
  Got r{Outcome::kNeedMore, DecodeError::kNone, ""};
  r.outcome = d.Next(&f, &r.err, &r.detail);
  return r;
}

void ExpectError(const Bytes& wire, DecodeError want, size_t feed = SIZE_MAX) {
  Got r = DecodeFirst(wire, feed);
  INFO("detail: " << r.detail);
  CHECK(r.outcome == Outcome::kError);
  CHECK(r.err == want);
  CHECK_FALSE(r.detail.empty());
}

}  // namespace

// ---- Chunking ----

TEST_CASE("A multi-frame stream decodes identically under every fixed chunk size", "[decoder]") {
  const auto msgs = SampleMessages();
  const Bytes stream = EncodeAll(msgs);
  for (size_t n = 1; n <= stream.size(); ++n) {
    INFO("chunk size " << n);
    DecodeInChunks(stream, msgs, {n});
  }
}

TEST_CASE("A multi-frame stream decodes identically under random chunkings", "[decoder]") {
  const auto msgs = SampleMessages();
  const Bytes stream = EncodeAll(msgs);
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<size_t> sizes(64);
    size_t max = trial % 3 == 0 ? 8 : trial % 3 == 1 ? 200 : 3000;
    for (auto& s : sizes) s = 1 + rng() % max;
    INFO("trial " << trial);
    DecodeInChunks(stream, msgs, sizes);
  }
}

TEST_CASE("Next keeps answering need-more until the frame is complete", "[decoder]") {
  const Bytes wire = WriteFrame(1000);
  FrameDecoder d;
  Frame f;
  DecodeError err = DecodeError::kNone;
  for (size_t i = 0; i + 1 < wire.size(); ++i) {
    d.Feed(std::span<const uint8_t>(&wire[i], 1));
    REQUIRE(d.Next(&f, &err) == Outcome::kNeedMore);
    REQUIRE(d.Next(&f, &err) == Outcome::kNeedMore);
    REQUIRE(d.buffered() == i + 1);
  }
  d.Feed(std::span<const uint8_t>(&wire.back(), 1));
  REQUIRE(d.Next(&f, &err) == Outcome::kFrame);
  CHECK(err == DecodeError::kNone);
  CHECK(Bytes(f.aux.begin(), f.aux.end()) == Bytes(1000, 0x6B));
  CHECK(d.buffered() == 0);
  CHECK(d.Next(&f, &err) == Outcome::kNeedMore);
}

TEST_CASE("A maximal 1 MiB aux fed in small chunks decodes", "[decoder]") {
  Header h;
  h.cmd = kLnkError | kFlagReply | kFlagCreate | kFlagDelete;
  Bytes aux(kAuxMax);
  for (size_t i = 0; i < aux.size(); ++i) aux[i] = static_cast<uint8_t>(i >> 3);
  Bytes wire;
  EncodeFrame(h, {}, aux, &wire);
  FrameDecoder d;
  Frame f;
  DecodeError err;
  for (size_t pos = 0; pos < wire.size(); pos += 61) {
    d.Feed(std::span<const uint8_t>(wire).subspan(pos, std::min<size_t>(61, wire.size() - pos)));
    if (pos + 61 < wire.size()) REQUIRE(d.Next(&f, &err) == Outcome::kNeedMore);
  }
  REQUIRE(d.Next(&f, &err) == Outcome::kFrame);
  CHECK(Bytes(f.aux.begin(), f.aux.end()) == aux);
}

TEST_CASE("Sequence numbers wrap from 255 to 0", "[decoder]") {
  FrameDecoder d;
  Bytes wire;
  Frame f;
  DecodeError err;
  for (uint32_t i = 0; i < 600; ++i) {
    Header h;
    h.cmd = kLnkPing;
    h.salt = (i & 0xFF) | (i << 8);  // upper 24 bits are random in DragonFly
    EncodeFrame(h, {}, {}, &wire);
    d.Feed(wire);
    REQUIRE(d.Next(&f, &err) == Outcome::kFrame);
  }
  CHECK(d.frames_decoded() == 600);
}

TEST_CASE("Non-zero aux padding is accepted when aux_crc covers it", "[decoder]") {
  Bytes wire = WriteFrame(10);
  wire[128 + 20] = 0xEE;  // a pad byte
  FixChecksums(wire);
  Got r = DecodeFirst(wire);
  CHECK(r.outcome == Outcome::kFrame);
}

TEST_CASE("The aux CRC is offered for reuse only when the pad arrived as zeros", "[decoder]") {
  Bytes wire = WriteFrame(10);
  for (bool zero_pad : {true, false}) {
    INFO("zero pad " << zero_pad);
    if (!zero_pad) {
      wire[128 + 20] = 0xEE;  // a pad byte
      FixChecksums(wire);
    }
    FrameDecoder d;
    d.Feed(wire);
    Frame f;
    DecodeError err;
    REQUIRE(d.Next(&f, &err) == Outcome::kFrame);
    CHECK(f.aux_crc_reusable == zero_pad);
    if (zero_pad) {
      // Reused, it gives the header the encoder computes.
      Bytes computed, reused;
      EncodeHeader(f.hdr, f.ext, f.aux, &computed);
      EncodeHeaderWithAuxCrc(f.hdr, f.ext, f.aux.size(), f.hdr.aux_crc, &reused);
      CHECK(computed == reused);
    }
  }
}

TEST_CASE("Frames before a corrupt one are delivered, then the error", "[decoder]") {
  Bytes good, bad = WriteFrame();
  Header h;
  h.cmd = kLnkPing;
  EncodeFrame(h, {}, {}, &good);
  Set32(bad, 0x04, 1);  // seq 1: correct as the second frame
  Flip(bad, 0x80);      // aux byte, checksum not fixed
  FrameDecoder d;
  d.Feed(good);
  d.Feed(bad);
  Frame f;
  DecodeError err;
  CHECK(d.Next(&f, &err) == Outcome::kFrame);
  CHECK(d.Next(&f, &err) == Outcome::kError);
  CHECK(err == DecodeError::kAuxCrc);
  CHECK(d.frames_decoded() == 1);
}

// ---- Errors, in check order ----

TEST_CASE("Check 1: a magic other than 0x4832 is bad magic", "[decoder]") {
  Bytes wire = WriteFrame();
  Flip(wire, 0, 0x01, true);
  ExpectError(wire, DecodeError::kBadMagic);
}

TEST_CASE("Check 1: a byte-swapped sender (magic 0x3248) is rejected as bad magic", "[decoder]") {
  Bytes wire = WriteFrame();
  wire[0] = 0x48;
  wire[1] = 0x32;
  FixChecksums(wire);
  ExpectError(wire, DecodeError::kBadMagic);
  Got r = DecodeFirst(wire);
  CHECK_THAT(r.detail, Catch::Contains("byte-swapped"));
}

TEST_CASE("Check 2: header size units 0 and 33 are bad header sizes", "[decoder]") {
  for (uint8_t units : {0, 33, 255}) {
    INFO("units " << int{units});
    Bytes wire = WriteFrame();
    wire[0x20] = units;
    FixChecksums(wire);
    ExpectError(wire, DecodeError::kBadHeaderSize);
  }
}

TEST_CASE("Check 2: 32 header units (2048 bytes) is allowed", "[decoder]") {
  Header h;
  h.cmd = 0x00ABC000 | 32;
  Bytes ext(2048 - 64, 0x12), wire;
  EncodeFrame(h, ext, {}, &wire);
  Got r = DecodeFirst(wire);
  CHECK(r.outcome == Outcome::kFrame);
}

TEST_CASE("Check 3: aux over 1 MiB padded is too large; exactly 1 MiB is not", "[decoder]") {
  for (uint32_t n : {uint32_t(kAuxMax + 1), uint32_t(kAuxMax + 64), 0xFFFFFFFFu, 0xFFFFFFC1u}) {
    INFO("aux_bytes " << n);
    Bytes wire = WriteFrame();
    Set32(wire, 0x28, n);
    ExpectError(wire, DecodeError::kAuxTooLarge, 64);
  }
  Bytes wire = WriteFrame();
  Set32(wire, 0x28, kAuxMax);
  CHECK(DecodeFirst(wire, 64).outcome == Outcome::kNeedMore);
}

TEST_CASE("Check 4: a non-zero aux_descr is rejected", "[decoder]") {
  Bytes wire = WriteFrame();
  wire[0x37] = 0x80;
  FixChecksums(wire);
  ExpectError(wire, DecodeError::kAuxDescr);
}

TEST_CASE("Checks 1-4 fire with only the 64-byte base header fed", "[decoder]") {
  struct Case {
    size_t off;
    uint8_t value;
    DecodeError want;
  };
  for (Case c :
       {Case{0x00, 0x00, DecodeError::kBadMagic}, Case{0x20, 0, DecodeError::kBadHeaderSize},
        Case{0x20, 33, DecodeError::kBadHeaderSize}, Case{0x2B, 0x01, DecodeError::kAuxTooLarge},
        Case{0x30, 0x01, DecodeError::kAuxDescr}}) {
    INFO("offset " << c.off);
    Bytes wire = WriteFrame();
    wire[c.off] = c.value;  // checksums deliberately stale: checks 1-4 precede the CRC
    ExpectError(wire, c.want, 64);
    // One byte less is not enough to judge.
    CHECK(DecodeFirst(wire, 63).outcome == Outcome::kNeedMore);
  }
}

TEST_CASE("Earlier checks win: bad magic is reported even when size and aux are also bad",
          "[decoder]") {
  Bytes wire = WriteFrame();
  wire[0] = 0;
  wire[0x20] = 0;
  wire[0x2B] = 0xFF;
  wire[0x30] = 1;
  ExpectError(wire, DecodeError::kBadMagic, 64);
  wire[0] = 0x32;
  ExpectError(wire, DecodeError::kBadHeaderSize, 64);
  wire[0x20] = 2;
  ExpectError(wire, DecodeError::kAuxTooLarge, 64);
}

TEST_CASE("Check 5: any flipped header byte is a header crc error", "[decoder]") {
  const Bytes orig = WriteFrame();
  // Bytes whose corruption leaves checks 1-4 passing: everything except
  // magic, the size-unit byte, aux_bytes and aux_descr.
  for (size_t off : {0x02u, 0x05u, 0x08u, 0x10u, 0x18u, 0x21u, 0x23u, 0x24u, 0x2Cu, 0x38u, 0x3Cu,
                     0x3Fu, 0x40u, 0x50u, 0x7Fu}) {
    INFO("offset " << off);
    Bytes wire = orig;
    Flip(wire, off, 0x10);
    ExpectError(wire, DecodeError::kHeaderCrc);
  }
}

TEST_CASE("Check 5 needs the whole padded header before deciding", "[decoder]") {
  Bytes wire = WriteFrame();
  Flip(wire, 0x7F);
  CHECK(DecodeFirst(wire, 127).outcome == Outcome::kNeedMore);
  ExpectError(wire, DecodeError::kHeaderCrc, 128);
}

TEST_CASE("Check 6: a wrong sequence number with a valid crc is a sequence error", "[decoder]") {
  Bytes wire = WriteFrame();
  Set32(wire, 0x04, 1);
  ExpectError(wire, DecodeError::kSequence, 128);  // reported before the aux arrives
  Got r = DecodeFirst(wire);
  CHECK_THAT(r.detail, Catch::Contains("expected 0"));
}

TEST_CASE("Check 6: a corrupted salt without a fixed crc is a header crc error", "[decoder]") {
  Bytes wire = WriteFrame();
  Flip(wire, 0x04, 0x01);
  ExpectError(wire, DecodeError::kHeaderCrc);
}

TEST_CASE("Check 6: a skipped frame is a sequence error on the next one", "[decoder]") {
  Header h;
  h.cmd = kLnkPing;
  Bytes a, c;
  EncodeFrame(h, {}, {}, &a);
  h.salt = 2;
  EncodeFrame(h, {}, {}, &c);
  FrameDecoder d;
  d.Feed(a);
  d.Feed(c);
  Frame f;
  DecodeError err;
  REQUIRE(d.Next(&f, &err) == Outcome::kFrame);
  REQUIRE(d.Next(&f, &err) == Outcome::kError);
  CHECK(err == DecodeError::kSequence);
}

TEST_CASE("Check 7: a flipped aux or aux pad byte is an aux crc error", "[decoder]") {
  for (size_t off : {128u, 128u + 299u, 128u + 300u, 128u + 319u}) {
    INFO("offset " << off);
    Bytes wire = WriteFrame(300);
    Flip(wire, off, 0x01);
    ExpectError(wire, DecodeError::kAuxCrc);
    CHECK(DecodeFirst(wire, wire.size() - 1).outcome == Outcome::kNeedMore);
  }
}

TEST_CASE("Check 7: a wrong aux_crc field with a fixed header crc is an aux crc error",
          "[decoder]") {
  Bytes wire = WriteFrame();
  Put32(wire, 0x24, 0x12345678);
  Put32(wire, 0x3C, 0);
  Put32(wire, 0x3C, xdisk::Crc32c(wire.data(), 128));
  ExpectError(wire, DecodeError::kAuxCrc);
}

TEST_CASE("Without aux, aux_crc is not checked", "[decoder]") {
  Header h;
  h.cmd = kLnkPing;
  h.aux_crc = 0x12345678;
  Bytes wire;
  EncodeFrame(h, {}, {}, &wire);
  Put32(wire, 0x24, 0x12345678);
  FixChecksums(wire);
  CHECK(DecodeFirst(wire).outcome == Outcome::kFrame);
}

// ---- Poisoning ----

TEST_CASE("After an error the decoder is poisoned and repeats the same error", "[decoder]") {
  Bytes bad = WriteFrame();
  Flip(bad, 0x40);
  FrameDecoder d;
  d.Feed(bad);
  Frame f;
  DecodeError err = DecodeError::kNone;
  std::string detail1, detail2;
  REQUIRE(d.Next(&f, &err, &detail1) == Outcome::kError);
  REQUIRE(err == DecodeError::kHeaderCrc);

  // Valid input afterwards changes nothing.
  Header h;
  h.cmd = kLnkPing;
  Bytes good;
  EncodeFrame(h, {}, {}, &good);
  d.Feed(good);
  for (int i = 0; i < 3; ++i) {
    err = DecodeError::kNone;
    CHECK(d.Next(&f, &err, &detail2) == Outcome::kError);
    CHECK(err == DecodeError::kHeaderCrc);
    CHECK(detail2 == detail1);
  }
  CHECK(d.Next(&f, &err) == Outcome::kError);  // detail is optional
  CHECK(d.frames_decoded() == 0);
}

TEST_CASE("DecodeErrorName names every error", "[decoder]") {
  CHECK(std::string(DecodeErrorName(DecodeError::kNone)) == "none");
  CHECK(std::string(DecodeErrorName(DecodeError::kBadMagic)) == "bad magic");
  CHECK(std::string(DecodeErrorName(DecodeError::kBadHeaderSize)) == "bad header size");
  CHECK(std::string(DecodeErrorName(DecodeError::kAuxTooLarge)) == "aux too large");
  CHECK(std::string(DecodeErrorName(DecodeError::kAuxDescr)) == "aux descriptor");
  CHECK(std::string(DecodeErrorName(DecodeError::kHeaderCrc)) == "header crc");
  CHECK(std::string(DecodeErrorName(DecodeError::kAuxCrc)) == "aux crc");
  CHECK(std::string(DecodeErrorName(DecodeError::kSequence)) == "sequence");
}

TEST_CASE("zero-copy feeding through WritableTail/Commit decodes like Feed", "[decoder]") {
  using namespace xdisk::dmsg;
  // Two frames, the second with aux, written into the decoder's own buffer
  // in odd-sized pieces, as a socket reader does.
  std::vector<uint8_t> stream, one;
  Header h;
  h.cmd = kLnkPing;
  EncodeFrame(h, {}, {}, &one);
  stream.insert(stream.end(), one.begin(), one.end());
  std::vector<uint8_t> aux(1000, 0x42);
  h.cmd = kLnkError | kFlagCreate;
  h.msgid = 9;
  h.salt = 1;
  EncodeFrame(h, {}, aux, &one);
  stream.insert(stream.end(), one.begin(), one.end());

  FrameDecoder d;
  size_t off = 0;
  std::vector<Frame> frames;
  while (off < stream.size()) {
    std::span<uint8_t> tail = d.WritableTail(7);
    REQUIRE(tail.size() >= 7);
    size_t n = std::min<size_t>({tail.size(), stream.size() - off, 37});
    memcpy(tail.data(), stream.data() + off, n);
    d.Commit(n);
    off += n;
    Frame f;
    DecodeError err;
    while (d.Next(&f, &err) == FrameDecoder::Outcome::kFrame) frames.push_back(f);
  }
  REQUIRE(frames.size() == 2);
  CHECK(Bytes(frames[1].aux.begin(), frames[1].aux.end()) == aux);
  CHECK(d.buffered() == 0);
}

namespace {

// Small and large frames mixed: the large ones (at and around
// kDirectAuxMin, and the 1 MiB maximum) take the direct-aux path whenever
// their aux is incomplete when the header is checked.
std::vector<Msg> MixedSizeMessages() {
  std::vector<Msg> m;
  size_t sizes[] = {0,
                    100,
                    FrameDecoder::kDirectAuxMin - 64,
                    FrameDecoder::kDirectAuxMin,
                    7,
                    FrameDecoder::kDirectAuxMin + 1,
                    kAuxMax,
                    kAuxMax - 63,
                    4096,
                    300000};
  for (size_t n : sizes) {
    Msg x;
    x.hdr.cmd = kLnkError | kFlagReply | kFlagCreate | kFlagDelete;
    x.hdr.msgid = m.size() + 1;
    x.hdr.salt = static_cast<uint32_t>(m.size() & 0xFF);
    x.aux.resize(n);
    for (size_t i = 0; i < n; ++i) x.aux[i] = static_cast<uint8_t>(i * 13 + m.size());
    m.push_back(std::move(x));
  }
  return m;
}

void CheckSameFrames(const std::vector<Frame>& got, const std::vector<Msg>& msgs) {
  REQUIRE(got.size() == msgs.size());
  for (size_t k = 0; k < msgs.size(); ++k) {
    INFO("frame " << k);
    REQUIRE(got[k].hdr.msgid == msgs[k].hdr.msgid);
    REQUIRE(got[k].aux.size() == msgs[k].aux.size());
    REQUIRE((msgs[k].aux.empty() ||
             memcmp(got[k].aux.data(), msgs[k].aux.data(), msgs[k].aux.size()) == 0));
  }
}

}  // namespace

TEST_CASE("Large auxes received directly decode like buffered ones, any chunking", "[decoder]") {
  const auto msgs = MixedSizeMessages();
  const Bytes stream = EncodeAll(msgs);
  std::mt19937 rng(77);
  for (int trial = 0; trial < 24; ++trial) {
    INFO("trial " << trial);
    const bool socket_style = trial % 2 == 0;  // WritableTail/Commit, else Feed
    const size_t max = trial % 3 == 0 ? 5000 : trial % 3 == 1 ? 70000 : 400000;
    FrameDecoder d;
    std::vector<Frame> got;
    size_t off = 0;
    bool saw_direct = false;
    while (off < stream.size()) {
      size_t want = 1 + rng() % max;
      size_t n;
      if (socket_style) {
        std::span<uint8_t> tail = d.WritableTail(256 * 1024);
        REQUIRE(!tail.empty());
        // A direct span is the rest of one aux: shorter than asked for.
        if (tail.size() < 256 * 1024) saw_direct = true;
        n = std::min({tail.size(), stream.size() - off, want});
        memcpy(tail.data(), stream.data() + off, n);
        d.Commit(n);
      } else {
        n = std::min(stream.size() - off, want);
        d.Feed(std::span<const uint8_t>(stream).subspan(off, n));
      }
      off += n;
      Frame f;
      DecodeError err = DecodeError::kNone;
      FrameDecoder::Outcome o;
      while ((o = d.Next(&f, &err)) == FrameDecoder::Outcome::kFrame) got.push_back(std::move(f));
      REQUIRE(o == FrameDecoder::Outcome::kNeedMore);
      // Every byte fed and not yet handed out is counted, wherever it sits.
      size_t handed = 0;
      for (const Frame& g : got) handed += HeaderBytes(g.hdr.cmd) + PaddedAux(g.aux.size());
      REQUIRE(d.buffered() == off - handed);
    }
    if (socket_style && max >= 70000) CHECK(saw_direct);
    for (const Frame& g : got) CHECK(g.aux_crc_reusable == !g.aux.empty());  // zero pads
    CHECK(d.buffered() == 0);
    CheckSameFrames(got, msgs);
  }
}

TEST_CASE("A flipped byte in a directly received aux is an aux crc error", "[decoder]") {
  const auto msgs = MixedSizeMessages();
  Bytes stream = EncodeAll(msgs);
  // A byte deep inside the 1 MiB aux (frame 6), past the first read.
  size_t at = 0;
  for (size_t k = 0; k < 6; ++k) at += HeaderBytes(msgs[k].hdr.cmd) + PaddedAux(msgs[k].aux.size());
  at += HeaderBytes(msgs[6].hdr.cmd) + 900000;
  stream[at] ^= 0x10;
  FrameDecoder d;
  size_t off = 0, frames = 0;
  DecodeError err = DecodeError::kNone;
  FrameDecoder::Outcome o = FrameDecoder::Outcome::kNeedMore;
  while (off < stream.size() && o != FrameDecoder::Outcome::kError) {
    std::span<uint8_t> tail = d.WritableTail(64 * 1024);
    size_t n = std::min<size_t>({tail.size(), stream.size() - off, 100000});
    memcpy(tail.data(), stream.data() + off, n);
    d.Commit(n);
    off += n;
    Frame f;
    while ((o = d.Next(&f, &err)) == FrameDecoder::Outcome::kFrame) ++frames;
  }
  CHECK(frames == 6);
  CHECK(o == FrameDecoder::Outcome::kError);
  CHECK(err == DecodeError::kAuxCrc);
}
