// Journal log framing (proto/journal_log.h): round trips around block
// boundaries, every truncation point read as a clean torn tail, and damage
// in each header field and in the payload reported and skipped.
#include "proto/journal_log.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "proto/crc32c.h"

using namespace xdisk::journal_log;
using Outcome = Reader::Outcome;

namespace {

using Bytes = std::vector<uint8_t>;
constexpr uint64_t B = kBlockSize;

Bytes Payload(size_t n, uint32_t seed) {
  Bytes b(n);
  std::mt19937 rng(seed);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  return b;
}

// A segment built by the encoder, starting at absolute offset `base`.
struct Segment {
  uint64_t base = 0;
  Bytes bytes;
  std::vector<Bytes> payloads;
  std::vector<Framed> framed;

  void Add(const Bytes& p) {
    const size_t before = bytes.size();
    const Framed f = AppendRecord(base + bytes.size(), p, &bytes);
    REQUIRE(bytes.size() - before == AppendedBytes(base + before, p.size()));
    payloads.push_back(p);
    framed.push_back(f);
  }
  uint64_t End(size_t i) const { return framed[i].offset + framed[i].framed_length; }
};

struct ReadResult {
  std::vector<Record> records;  // payload spans are not kept
  std::vector<Bytes> payloads;
  std::vector<Damage> damage;
  uint64_t torn = 0;
};

ReadResult ReadAll(std::span<const uint8_t> input, uint64_t base,
                   uint64_t max_record = kDefaultMaxRecordBytes) {
  ReadResult out;
  Reader reader(input, base, max_record);
  for (int guard = 0; guard < 100000; ++guard) {
    Record rec;
    Damage dmg;
    const Outcome o = reader.Next(&rec, &dmg);
    if (o == Outcome::kEnd) {
      out.torn = reader.torn_bytes();
      // kEnd is sticky.
      REQUIRE(reader.Next(&rec, &dmg) == Outcome::kEnd);
      return out;
    }
    if (o == Outcome::kDamage) {
      out.damage.push_back(dmg);
    } else {
      out.payloads.emplace_back(rec.payload.begin(), rec.payload.end());
      rec.payload = {};
      out.records.push_back(rec);
    }
  }
  FAIL("reader did not terminate");
  return out;
}

void CheckRecords(const ReadResult& r, const Segment& seg, const std::vector<size_t>& which) {
  REQUIRE(r.records.size() == which.size());
  for (size_t i = 0; i < which.size(); ++i) {
    const size_t k = which[i];
    CHECK(r.records[i].offset == seg.framed[k].offset);
    CHECK(r.records[i].framed_length == seg.framed[k].framed_length);
    CHECK(r.payloads[i] == seg.payloads[k]);
  }
}

// A hand-made fragment with a valid checksum, for out-of-order sequences.
void AddFragment(Bytes* out, FragmentType type, const std::string& payload) {
  const uint8_t t = static_cast<uint8_t>(type);
  const uint32_t crc =
      MaskCrc(xdisk::Crc32cExtend(xdisk::Crc32c(&t, 1), payload.data(), payload.size()));
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<uint8_t>(crc >> (8 * i)));
  out->push_back(static_cast<uint8_t>(payload.size() & 0xff));
  out->push_back(static_cast<uint8_t>(payload.size() >> 8));
  out->push_back(t);
  out->insert(out->end(), payload.begin(), payload.end());
}

std::string Str(const Bytes& b) { return std::string(b.begin(), b.end()); }

}  // namespace

TEST_CASE("the crc mask is invertible and changes the value", "[journal_log]") {
  for (uint32_t crc : {0u, 1u, 0xdeadbeefu, 0xffffffffu, xdisk::Crc32c("foo", 3)}) {
    CHECK(UnmaskCrc(MaskCrc(crc)) == crc);
    CHECK(MaskCrc(crc) != crc);
    CHECK(MaskCrc(MaskCrc(crc)) != crc);
  }
}

TEST_CASE("a fragment header is crc, length and type, little endian", "[journal_log]") {
  Bytes out;
  const Bytes p = {'h', 'e', 'l', 'l', 'o'};
  const Framed f = AppendRecord(0, p, &out);
  REQUIRE(out.size() == 12);
  CHECK(f.offset == 0);
  CHECK(f.framed_length == 12);
  const uint8_t typed[] = {1, 'h', 'e', 'l', 'l', 'o'};
  const uint32_t crc = MaskCrc(xdisk::Crc32c(typed, sizeof typed));
  CHECK(out[0] == (crc & 0xff));
  CHECK(out[3] == (crc >> 24));
  CHECK(out[4] == 5);
  CHECK(out[5] == 0);
  CHECK(out[6] == static_cast<uint8_t>(FragmentType::kFull));
  CHECK(Bytes(out.begin() + 7, out.end()) == p);
}

TEST_CASE("fewer than seven bytes left in a block are zero padding", "[journal_log]") {
  for (uint64_t left = 1; left < kHeaderSize; ++left) {
    Bytes out(5, 0xAA);  // appended to whatever the buffer holds
    const Framed f = AppendRecord(B - left, Bytes{'x'}, &out);
    CHECK(f.offset == B);
    CHECK(f.framed_length == 8);
    REQUIRE(out.size() == 5 + left + 8);
    for (uint64_t i = 0; i < left; ++i) CHECK(out[5 + i] == 0);
  }
  // Exactly seven left: a zero-length first fragment, then the rest.
  Bytes out;
  const Framed f = AppendRecord(B - kHeaderSize, Bytes{'x', 'y'}, &out);
  CHECK(f.offset == B - kHeaderSize);
  CHECK(out[6] == static_cast<uint8_t>(FragmentType::kFirst));
  CHECK(out[7 + 6] == static_cast<uint8_t>(FragmentType::kLast));
  CHECK(f.framed_length == 7 + 7 + 2);
}

TEST_CASE("records of every interesting size round trip at every block position", "[journal_log]") {
  const std::vector<size_t> sizes = {0, 1,     100,        B - 8, B - 7,     B - 6,          B - 14,
                                     B, B + 1, 2 * B - 14, 2 * B, 3 * B + 5, size_t(1) << 20};
  const std::vector<uint64_t> starts = {0, 7, B - 8, B - 7, B - 6, B - 1, 5 * B + 123};
  for (uint64_t start : starts) {
    for (size_t size : sizes) {
      Segment seg;
      seg.base = start;
      seg.Add(Payload(size, static_cast<uint32_t>(size)));
      seg.Add(Payload(3, 1));  // one after it, to see the framing end exactly
      const ReadResult r = ReadAll(seg.bytes, seg.base);
      INFO("start " << start << " size " << size);
      CHECK(r.damage.empty());
      CHECK(r.torn == 0);
      CheckRecords(r, seg, {0, 1});
    }
  }
}

TEST_CASE("a gather list frames exactly like the joined payload", "[journal_log]") {
  const Bytes whole = Payload(70000, 9);
  for (uint64_t start : {uint64_t{0}, B - 3, B - 100}) {
    Bytes joined, gathered;
    const Framed a = AppendRecord(start, whole, &joined);
    const std::span<const uint8_t> w(whole);
    const std::span<const uint8_t> pieces[] = {w.subspan(0, 0), w.subspan(0, 11), w.subspan(11, 0),
                                               w.subspan(11, 40000), w.subspan(40011)};
    const Framed b = AppendRecord(start, pieces, &gathered);
    CHECK(joined == gathered);
    CHECK(a.offset == b.offset);
    CHECK(a.framed_length == b.framed_length);
  }
}

TEST_CASE("one record reads back from the middle of a segment", "[journal_log]") {
  Segment seg;
  for (size_t n : {100, 40000, 5, 70000, 17}) seg.Add(Payload(n, static_cast<uint32_t>(n)));
  for (size_t i = 0; i < seg.framed.size(); ++i) {
    const Framed& f = seg.framed[i];
    const std::span<const uint8_t> one(seg.bytes.data() + f.offset, f.framed_length);
    const ReadResult r = ReadAll(one, f.offset);
    CHECK(r.damage.empty());
    CHECK(r.torn == 0);
    REQUIRE(r.records.size() == 1);
    CHECK(r.records[0].offset == f.offset);
    CHECK(r.payloads[0] == seg.payloads[i]);
  }
}

// Every prefix of a segment reads as the records it holds completely, then
// a clean end that counts the bytes of the record cut short.
static void CheckEveryTruncation(const Segment& seg) {
  for (size_t cut = 0; cut <= seg.bytes.size(); ++cut) {
    const uint64_t end = seg.base + cut;
    std::vector<size_t> complete;
    uint64_t torn = 0;
    for (size_t i = 0; i < seg.framed.size(); ++i) {
      if (seg.End(i) <= end) {
        complete.push_back(i);
      } else {
        if (end > seg.framed[i].offset) torn = end - seg.framed[i].offset;
        break;
      }
    }
    const ReadResult r = ReadAll(std::span<const uint8_t>(seg.bytes.data(), cut), seg.base);
    INFO("base " << seg.base << " cut " << cut);
    REQUIRE(r.damage.empty());
    REQUIRE(r.torn == torn);
    CheckRecords(r, seg, complete);
  }
}

TEST_CASE("every truncation point of a small segment is a clean torn tail", "[journal_log]") {
  Segment seg;
  for (size_t n : {0, 1, 30, 200, 7, 64}) seg.Add(Payload(n, static_cast<uint32_t>(n + 1)));
  CheckEveryTruncation(seg);
}

TEST_CASE("every truncation point across a block boundary is a clean torn tail", "[journal_log]") {
  // The same small records placed at many distances from a block boundary:
  // records split in first/last fragments, trailers of every size inside
  // and between records, zero-length first fragments.
  for (uint64_t distance = 90; distance <= 170; ++distance) {
    Segment seg;
    seg.base = 3 * B - distance;
    for (size_t n : {20, 60, 1, 10, 5}) seg.Add(Payload(n, static_cast<uint32_t>(n)));
    CheckEveryTruncation(seg);
  }
}

TEST_CASE("truncation inside a multi-block record is a torn tail", "[journal_log]") {
  Segment seg;
  seg.Add(Payload(10, 1));
  seg.Add(Payload(3 * B, 2));
  seg.Add(Payload(10, 3));
  const uint64_t big = seg.framed[1].offset;
  for (uint64_t cut : {big + 3, big + 7, big + 100, B - 1, B, B + 6, B + 7, B + 50, 2 * B,
                       3 * B + 1, seg.End(1) - 1}) {
    const ReadResult r = ReadAll(std::span<const uint8_t>(seg.bytes.data(), cut), 0);
    INFO("cut " << cut);
    CHECK(r.damage.empty());
    CHECK(r.torn == cut - big);
    CheckRecords(r, seg, {0});
  }
}

TEST_CASE("a zero-filled tail is a torn tail, zeros in the middle are damage", "[journal_log]") {
  Segment seg;
  seg.Add(Payload(100, 1));
  Bytes tail = seg.bytes;
  tail.resize(tail.size() + 1000, 0);
  ReadResult r = ReadAll(tail, 0);
  CHECK(r.damage.empty());
  CHECK(r.torn == 1000);
  CheckRecords(r, seg, {0});

  // Zeros up to the next block, then a good record: damage.
  Bytes mid = seg.bytes;
  mid.resize(B, 0);
  AppendRecord(mid.size(), Payload(5, 2), &mid);
  r = ReadAll(mid, 0);
  REQUIRE(r.damage.size() == 1);
  CHECK(r.damage[0].offset == seg.End(0));
  CHECK(r.damage[0].bytes == B - seg.End(0));
  CHECK(r.damage[0].reason == "bad fragment type 0");
  CHECK(r.records.size() == 2);
}

namespace {

// Three blocks of records: small ones in block 0, a record from block 0 into
// block 1, small ones in block 1, one from block 1 into block 2, small ones
// in block 2.
Segment DamageSegment() {
  Segment seg;
  for (int i = 0; i < 3; ++i) seg.Add(Payload(100, i));
  seg.Add(Payload(40000, 10));
  for (int i = 0; i < 3; ++i) seg.Add(Payload(50, 20 + i));
  seg.Add(Payload(30000, 30));
  for (int i = 0; i < 3; ++i) seg.Add(Payload(70, 40 + i));
  REQUIRE(seg.bytes.size() > 2 * B);
  return seg;
}

// What a reader must report when byte `at` of record `k` (in the fragment
// that starts at `frag`) is damaged: the region from record k's start to
// the next block boundary, extended over the orphaned fragments of a record
// that crosses that boundary; every record outside it intact.
void CheckDamage(const Segment& seg, const Bytes& bad, size_t k, uint64_t frag,
                 const std::string& reason_part) {
  uint64_t stop = std::min<uint64_t>((frag / B + 1) * B, seg.bytes.size());
  for (size_t i = 0; i < seg.framed.size(); ++i)
    if (seg.framed[i].offset < stop && seg.End(i) > stop) stop = seg.End(i);
  std::vector<size_t> survivors;
  for (size_t i = 0; i < seg.framed.size(); ++i)
    if (seg.End(i) <= seg.framed[k].offset || seg.framed[i].offset >= stop) survivors.push_back(i);
  const ReadResult r = ReadAll(bad, 0);
  REQUIRE(r.damage.size() == 1);
  CHECK(r.damage[0].offset == seg.framed[k].offset);
  CHECK(r.damage[0].offset + r.damage[0].bytes >= stop);
  CHECK(r.damage[0].reason.find(reason_part) != std::string::npos);
  CHECK(r.torn == 0);
  CheckRecords(r, seg, survivors);
  REQUIRE(survivors.size() >= 3);
  CHECK(survivors.back() == seg.framed.size() - 1);  // later blocks still read
}

}  // namespace

TEST_CASE("a flipped byte in each header field and in the payload is reported and skipped",
          "[journal_log]") {
  const Segment seg = DamageSegment();
  // Record 1 (block 0, full), record 3's first fragment (block 0) and its
  // last fragment (block 1).
  const uint64_t r1 = seg.framed[1].offset;
  const uint64_t r3_first = seg.framed[3].offset;
  const uint64_t r3_last = B;  // its last fragment starts the next block
  struct Case {
    const char* name;
    size_t record;
    uint64_t frag;
    uint64_t at;
    uint8_t mask;
    const char* reason;
  };
  const Case cases[] = {
      {"crc", 1, r1, r1 + 0, 0x01, "checksum mismatch"},
      {"crc high byte", 1, r1, r1 + 3, 0x80, "checksum mismatch"},
      {"length low byte", 1, r1, r1 + 4, 0x01, "checksum mismatch"},
      {"length high byte", 1, r1, r1 + 5, 0x80, "bad fragment length"},
      {"type to an unknown one", 1, r1, r1 + 6, 0xF0, "bad fragment type"},
      {"type to another valid one", 1, r1, r1 + 6, 0x03, "checksum mismatch"},
      {"payload", 1, r1, r1 + 7 + 50, 0x10, "checksum mismatch"},
      {"first fragment payload", 3, r3_first, r3_first + 7 + 9, 0x04, "checksum mismatch"},
      {"last fragment header", 3, r3_last, r3_last + 2, 0x04, "checksum mismatch"},
      {"last fragment payload", 3, r3_last, r3_last + 7 + 999, 0x04, "checksum mismatch"},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    Bytes bad = seg.bytes;
    bad[c.at] ^= c.mask;
    CheckDamage(seg, bad, c.record, c.frag, c.reason);
  }
}

TEST_CASE("fragments out of order are dropped without losing the framing", "[journal_log]") {
  SECTION("a first fragment with no last before a full record") {
    Bytes b;
    AddFragment(&b, FragmentType::kFirst, "abc");
    AddFragment(&b, FragmentType::kFull, "xyz");
    const ReadResult r = ReadAll(b, 0);
    REQUIRE(r.damage.size() == 1);
    CHECK(r.damage[0].offset == 0);
    CHECK(r.damage[0].bytes == 10);
    CHECK(r.damage[0].reason == "record without a last fragment");
    REQUIRE(r.records.size() == 1);
    CHECK(Str(r.payloads[0]) == "xyz");
  }
  SECTION("a first fragment with no last before another first") {
    Bytes b;
    AddFragment(&b, FragmentType::kFirst, "abc");
    AddFragment(&b, FragmentType::kFirst, "de");
    AddFragment(&b, FragmentType::kLast, "f");
    const ReadResult r = ReadAll(b, 0);
    REQUIRE(r.damage.size() == 1);
    REQUIRE(r.records.size() == 1);
    CHECK(Str(r.payloads[0]) == "def");
    CHECK(r.records[0].offset == 10);
    CHECK(r.records[0].framed_length == 17);
  }
  SECTION("middle and last fragments without a first") {
    Bytes b;
    AddFragment(&b, FragmentType::kMiddle, "m");
    AddFragment(&b, FragmentType::kLast, "l");
    AddFragment(&b, FragmentType::kFull, "ok");
    AddFragment(&b, FragmentType::kLast, "x");
    AddFragment(&b, FragmentType::kFull, "ok2");
    const ReadResult r = ReadAll(b, 0);
    REQUIRE(r.damage.size() == 2);
    CHECK(r.damage[0].offset == 0);
    CHECK(r.damage[0].bytes == 16);  // both orphans, one region
    CHECK(r.damage[0].reason == "middle fragment without a first");
    CHECK(r.damage[1].reason == "last fragment without a first");
    REQUIRE(r.records.size() == 2);
    CHECK(Str(r.payloads[0]) == "ok");
    CHECK(Str(r.payloads[1]) == "ok2");
  }
  SECTION("first, middles and last assemble one record") {
    Bytes b;
    AddFragment(&b, FragmentType::kFirst, "ab");
    AddFragment(&b, FragmentType::kMiddle, "");
    AddFragment(&b, FragmentType::kMiddle, "cd");
    AddFragment(&b, FragmentType::kLast, "e");
    const ReadResult r = ReadAll(b, 0);
    CHECK(r.damage.empty());
    REQUIRE(r.records.size() == 1);
    CHECK(Str(r.payloads[0]) == "abcde");
    CHECK(r.records[0].framed_length == b.size());
  }
  SECTION("a first fragment with no last at the end is a torn tail") {
    Bytes b;
    AddFragment(&b, FragmentType::kFull, "a");
    AddFragment(&b, FragmentType::kFirst, "bc");
    const ReadResult r = ReadAll(b, 0);
    CHECK(r.damage.empty());
    CHECK(r.torn == 9);
    CHECK(r.records.size() == 1);
  }
}

TEST_CASE("a record over the reader's limit is damage", "[journal_log]") {
  Segment seg;
  seg.Add(Payload(10, 1));
  seg.Add(Payload(100000, 2));
  seg.Add(Payload(10, 3));
  const ReadResult r = ReadAll(seg.bytes, 0, 50000);
  REQUIRE(r.damage.size() == 1);
  CHECK(r.damage[0].offset == seg.framed[1].offset);
  CHECK(r.damage[0].offset + r.damage[0].bytes == seg.End(1));
  CHECK(r.damage[0].reason.find("record over") != std::string::npos);
  CheckRecords(r, seg, {0, 2});
}

TEST_CASE("random damage never yields a wrong record", "[journal_log]") {
  const Segment seg = DamageSegment();
  std::mt19937 rng(20240601);
  for (int round = 0; round < 300; ++round) {
    Bytes bad = seg.bytes;
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < flips; ++i)
      bad[rng() % bad.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
    if (rng() % 3 == 0) bad.resize(rng() % bad.size());
    const ReadResult r = ReadAll(bad, 0);
    // Whatever is returned is one of the records written, at its place.
    for (size_t i = 0; i < r.records.size(); ++i) {
      bool found = false;
      for (size_t k = 0; k < seg.framed.size(); ++k)
        if (seg.framed[k].offset == r.records[i].offset && seg.payloads[k] == r.payloads[i])
          found = true;
      CHECK(found);
    }
    uint64_t last_end = 0;
    for (const Damage& d : r.damage) {
      CHECK(d.offset >= last_end);
      CHECK(d.bytes > 0);
      last_end = d.offset + d.bytes;
      CHECK(last_end <= bad.size());
    }
  }
  // Pure garbage, at a few base offsets.
  for (uint64_t base : {uint64_t{0}, B - 3, 7 * B + 11}) {
    Bytes junk = Payload(3 * B + 77, static_cast<uint32_t>(base));
    const ReadResult r = ReadAll(junk, base);
    CHECK(r.records.empty());
  }
}

TEST_CASE("a gathered record is byte for byte the appended one", "[journal_log]") {
  std::mt19937 rng(7);
  for (uint64_t start : {uint64_t{0}, uint64_t{5}, B - 7, B - 6, B - 1, B, 3 * B + 100}) {
    for (size_t size : {size_t{0}, size_t{1}, size_t{B - 7}, size_t{B - 6}, size_t{B},
                        size_t{100000}, size_t{1} << 20}) {
      Bytes prefix(9), data(size);
      for (auto& b : prefix) b = static_cast<uint8_t>(rng());
      for (auto& b : data) b = static_cast<uint8_t>(rng());
      const std::span<const uint8_t> pieces[2] = {prefix, data};
      Bytes appended;
      const Framed a = AppendRecord(start, pieces, &appended);
      Bytes headers;
      std::vector<std::span<const uint8_t>> gather;
      const Framed g = GatherRecord(start, pieces, &headers, &gather);
      Bytes joined;
      for (const auto& p : gather) joined.insert(joined.end(), p.begin(), p.end());
      INFO("start " << start << " size " << size);
      CHECK(g.offset == a.offset);
      CHECK(g.framed_length == a.framed_length);
      CHECK(joined == appended);
      CHECK(joined.size() == AppendedBytes(start, prefix.size() + size));
    }
  }
}
