// Journal (daemon/import/journal.h): segments on disk in a temporary directory,
// replay, the read-your-writes index against a byte-array model, retirement
// and segment deletion, damage handling, group commit and the dump.
#include "daemon/import/journal.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "proto/journal.pb.h"
#include "proto/journal_log.h"
#include "test/unit/temp_dir.h"

using namespace xdisk;
using xdisk::testing::TempDir;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<uint8_t>;


JournalDiskHeader Header(uint64_t size = 1 << 20) {
  JournalDiskHeader h;
  h.serial = "SER-0001";
  h.size = size;
  h.blksize = 512;
  h.label = "data";
  return h;
}

JournalConfig Config(const TempDir& t, uint64_t segment_bytes = 64ull << 20) {
  JournalConfig c;
  c.dir = t.path() + "/journal";
  c.segment_bytes = segment_bytes;
  return c;
}

std::unique_ptr<Journal> OpenOk(const JournalConfig& c, const JournalDiskHeader& h,
                                ReplayReport* report = nullptr) {
  ReplayReport local;
  auto j = Journal::Open(c, h, report ? report : &local);
  INFO(j.status().ToString());
  REQUIRE(j.ok());
  return std::move(j.value());
}

Bytes Pattern(size_t n, uint32_t seed) {
  Bytes b(n);
  std::mt19937 rng(seed);
  for (auto& x : b) x = static_cast<uint8_t>(rng() | 1);  // never zero: trims read as zero
  return b;
}

uint64_t AppendW(Journal& j, uint64_t off, const Bytes& data) {
  auto r = j.AppendWrite(off, data);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  return *r;
}

// Runs fn with a file size limit of `bytes` (SIGXFSZ ignored): write(2)
// then fails with EFBIG as a full disk fails with ENOSPC.
template <class Fn>
void WithFileSizeLimit(rlim_t bytes, Fn fn) {
  struct rlimit old;
  REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = bytes;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
  fn();
  REQUIRE(setrlimit(RLIMIT_FSIZE, &old) == 0);
  signal(SIGXFSZ, old_handler);
}

std::string DiskDir(const JournalConfig& c, const JournalDiskHeader& h) {
  return c.dir + "/" + h.serial;
}

std::vector<std::string> SegmentFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

uint64_t FilesBytes(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += fs::file_size(e.path());
  return n;
}

Bytes ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const Bytes& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// The read-your-writes model: pending operations applied in seq order to a
// byte array with a "covered" flag per byte.
struct Model {
  struct Op {
    uint64_t seq;
    bool trim;
    uint64_t off;
    Bytes data;  // write data; trims: empty, `len` bytes
    uint64_t len;
  };
  std::vector<Op> pending;

  void Retire(uint64_t upto) {
    std::erase_if(pending, [upto](const Op& o) { return o.seq <= upto; });
  }
  // value and covered flag of each byte of [off, off+len)
  void Render(uint64_t off, uint64_t len, Bytes* value, std::vector<bool>* covered) const {
    value->assign(len, 0xEE);
    covered->assign(len, false);
    for (const Op& o : pending) {
      const uint64_t s = std::max(o.off, off), e = std::min(o.off + o.len, off + len);
      for (uint64_t x = s; x < e; ++x) {
        (*value)[x - off] = o.trim ? 0 : o.data[x - o.off];
        (*covered)[x - off] = true;
      }
    }
  }
};

void CheckAgainstModel(Journal& j, const Model& m, uint64_t off, uint64_t len) {
  Bytes want;
  std::vector<bool> covered;
  m.Render(off, len, &want, &covered);
  const uint64_t n = static_cast<uint64_t>(std::count(covered.begin(), covered.end(), true));
  INFO("range " << off << "+" << len);
  REQUIRE(j.Covered(off, len) == n);
  Bytes got(len, 0xEE);
  Status st = j.Overlay(off, got);
  INFO(st.ToString());
  REQUIRE(st.ok());
  REQUIRE(got == want);
}

// The dump of a journal whose write failed and was cut back: a clean end,
// no torn tail, no damage. Returned for further checks.
std::string CleanDump(const std::string& dir) {
  std::string dump;
  REQUIRE(Journal::Dump(dir, &dump).ok());
  INFO(dump);
  CHECK(dump.find("torn tail") == std::string::npos);
  CHECK(dump.find("0 damaged regions") != std::string::npos);
  return dump;
}

// Every record of a segment file, as decoded protobuf messages.
std::vector<journal::JournalRecord> Records(const std::string& path) {
  const Bytes b = ReadFile(path);
  journal_log::Reader reader(b, 0);
  std::vector<journal::JournalRecord> out;
  journal_log::Record rec;
  journal_log::Damage dmg;
  while (reader.Next(&rec, &dmg) == journal_log::Reader::Outcome::kRecord) {
    journal::JournalRecord m;
    REQUIRE(m.ParseFromArray(rec.payload.data(), static_cast<int>(rec.payload.size())));
    out.push_back(m);
  }
  return out;
}

}  // namespace

TEST_CASE("a fresh journal starts a segment with a header and a retire record", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t);
  auto j = OpenOk(c, Header());
  CHECK(j->last_seq() == 0);
  CHECK(j->retired_seq() == 0);
  CHECK(j->pending().empty());
  const std::string dir = DiskDir(c, Header());
  REQUIRE(SegmentFiles(dir) == std::vector<std::string>{"000001.log"});
  CHECK(j->bytes_on_disk() == FilesBytes(dir));
  const auto recs = Records(dir + "/000001.log");
  REQUIRE(recs.size() == 2);
  CHECK(recs[0].header().serial() == "SER-0001");
  CHECK(recs[0].header().size() == uint64_t{1} << 20);
  CHECK(recs[0].header().blksize() == 512);
  CHECK(recs[0].header().label() == "data");
  CHECK(recs[0].header().version() == 1);
  CHECK(recs[1].has_retire());
  CHECK(recs[1].retire().upto() == 0);
  auto disks = Journal::ListDisks(c.dir);
  REQUIRE(disks.ok());
  CHECK(*disks == std::vector<std::string>{"SER-0001"});
  auto none = Journal::ListDisks(t.path() + "/missing");
  REQUIRE(none.ok());
  CHECK(none->empty());
}

TEST_CASE("segments get blocks ahead of their records, never a larger size", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t);
  const std::string seg = DiskDir(c, Header()) + "/000001.log";
  {
    auto j = OpenOk(c, Header());
    AppendW(*j, 0, Pattern(4096, 1));
    struct ::stat st;
    REQUIRE(::stat(seg.c_str(), &st) == 0);
    CHECK(static_cast<uint64_t>(st.st_size) == j->bytes_on_disk());
    // Where the file system preallocates (ext4, tmpfs, xfs), 8 MiB are
    // allocated ahead; elsewhere the journal just writes.
    const int probe = open((t.path() + "/probe").c_str(), O_RDWR | O_CREAT, 0600);
    REQUIRE(probe >= 0);
    const bool supported = fallocate(probe, FALLOC_FL_KEEP_SIZE, 0, 4096) == 0;
    close(probe);
    if (supported) CHECK(static_cast<uint64_t>(st.st_blocks) * 512 >= (8u << 20));
  }
  // The size (what replay reads) is only what was written.
  ReplayReport rep;
  auto j = OpenOk(c, Header(), &rep);
  CHECK_FALSE(rep.torn_tail);
  CHECK(rep.pending == 1);
}

TEST_CASE("writes, trims and flushes replay after a restart", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t);
  const Bytes a = Pattern(4096, 1), b = Pattern(16, 2), big = Pattern(100000, 3);
  {
    auto j = OpenOk(c, Header());
    CHECK(AppendW(*j, 0, a) == 1);
    auto trim = j->AppendTrim(8192, 4096);
    REQUIRE(trim.ok());
    CHECK(*trim == 2);
    auto flush = j->AppendFlush();
    REQUIRE(flush.ok());
    CHECK(*flush == 3);
    CHECK(AppendW(*j, 1000, b) == 4);
    CHECK(AppendW(*j, 200000, big) == 5);
    CHECK(j->pending_bytes() == a.size() + b.size() + big.size());
  }
  ReplayReport rep;
  auto j = OpenOk(c, Header(), &rep);
  CHECK(rep.segments == 1);
  CHECK(rep.records == 2 + 5);
  CHECK(rep.pending == 5);
  CHECK(rep.pending_bytes == a.size() + b.size() + big.size());
  CHECK_FALSE(rep.torn_tail);
  CHECK(rep.damage.empty());
  CHECK(rep.ToString().find("5 pending") != std::string::npos);
  CHECK(j->last_seq() == 5);
  // Replayed records count as durable only after the next group commit.
  CHECK(j->durable_seq() == 0);
  {
    Journal::SyncBatch batch = j->PrepareSync();
    REQUIRE(Journal::RunSync(&batch).ok());
    j->SyncDone(batch);
  }
  CHECK(j->durable_seq() == 5);
  const auto& p = j->pending();
  REQUIRE(p.size() == 5);
  CHECK(p[0].kind == JournalRecordKind::kWrite);
  CHECK(p[1].kind == JournalRecordKind::kTrim);
  CHECK(p[1].offset == 8192);
  CHECK(p[1].length == 4096);
  CHECK(p[2].kind == JournalRecordKind::kFlush);
  CHECK(p[4].length == big.size());
  auto d0 = j->ReadWriteData(p[0]);
  REQUIRE(d0.ok());
  CHECK(*d0 == a);
  auto d4 = j->ReadWriteData(p[4]);
  REQUIRE(d4.ok());
  CHECK(*d4 == big);
  CHECK_FALSE(j->ReadWriteData(p[1]).ok());  // not a write
  // The journal keeps going in a new segment, seqs continue.
  CHECK(AppendW(*j, 0, b) == 6);
  CHECK(SegmentFiles(DiskDir(c, Header())) == std::vector<std::string>{"000001.log", "000002.log"});
}

TEST_CASE("the hand-encoded write record is the protobuf encoding", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t);
  auto j = OpenOk(c, Header());
  AppendW(*j, 0, Bytes{});
  AppendW(*j, 0, Pattern(10, 1));
  AppendW(*j, 512, Bytes{});
  AppendW(*j, (1 << 20) - 300, Pattern(300, 2));
  const std::string path = DiskDir(c, Header()) + "/000001.log";
  const Bytes file = ReadFile(path);
  journal_log::Reader reader(file, 0);
  journal_log::Record rec;
  journal_log::Damage dmg;
  int writes = 0;
  while (reader.Next(&rec, &dmg) == journal_log::Reader::Outcome::kRecord) {
    journal::JournalRecord m;
    REQUIRE(m.ParseFromArray(rec.payload.data(), static_cast<int>(rec.payload.size())));
    if (!m.has_write()) continue;
    ++writes;
    const std::string again = m.SerializeAsString();
    CHECK(again == std::string(rec.payload.begin(), rec.payload.end()));
    CHECK(m.seq() == static_cast<uint64_t>(writes));
  }
  CHECK(writes == 4);
}

TEST_CASE("overlapping writes and trims read back newest first, also after replay", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t);
  Model m;
  auto j = OpenOk(c, Header());
  auto write = [&](uint64_t off, size_t len, uint32_t seed) {
    const Bytes d = Pattern(len, seed);
    const uint64_t seq = AppendW(*j, off, d);
    m.pending.push_back({seq, false, off, d, len});
  };
  auto trim = [&](uint64_t off, uint64_t len) {
    auto seq = j->AppendTrim(off, len);
    REQUIRE(seq.ok());
    m.pending.push_back({*seq, true, off, {}, len});
  };
  write(0, 4096, 1);
  write(1000, 100, 2);   // inside the first
  trim(2000, 3000);      // over the first's tail and beyond
  write(4500, 1000, 3);  // inside the trim
  write(0, 10, 4);       // head of the first
  write(3990, 20, 5);    // across a piece boundary
  trim(100, 0);          // empty: covers nothing
  write(10000, 500, 6);
  write(9900, 700, 7);  // swallows the previous write
  const std::vector<std::pair<uint64_t, uint64_t>> ranges = {
      {0, 12000}, {0, 1},       {995, 10},    {4095, 2},   {4999, 1000},
      {9899, 2},  {10550, 100}, {20000, 512}, {1999, 3002}};
  for (auto [off, len] : ranges) CheckAgainstModel(*j, m, off, len);

  // Retiring the oldest records removes only the pieces they still own.
  REQUIRE(j->Retire(3).ok());
  m.Retire(3);
  for (auto [off, len] : ranges) CheckAgainstModel(*j, m, off, len);

  // Replay rebuilds the same index.
  j.reset();
  j = OpenOk(c, Header());
  CHECK(j->retired_seq() == 3);
  for (auto [off, len] : ranges) CheckAgainstModel(*j, m, off, len);
  REQUIRE(j->Retire(j->last_seq()).ok());
  m.Retire(UINT64_MAX);
  CHECK(j->Covered(0, 1 << 20) == 0);
  for (auto [off, len] : ranges) CheckAgainstModel(*j, m, off, len);
}

TEST_CASE("a randomized model of writes, trims, retires and restarts", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t, 256 << 10);
  const uint64_t disk = 256 << 10;
  const JournalDiskHeader h = Header(disk);
  std::mt19937_64 rng(12345);
  Model m;
  auto j = OpenOk(c, h);
  for (int step = 0; step < 1500; ++step) {
    INFO("step " << step);
    const int what = static_cast<int>(rng() % 100);
    if (what < 55) {
      const uint64_t len = rng() % 3 == 0 ? rng() % 40000 : rng() % 5000;
      const uint64_t off = rng() % (disk - len + 1);
      const Bytes d = Pattern(len, static_cast<uint32_t>(rng()));
      m.pending.push_back({AppendW(*j, off, d), false, off, d, len});
    } else if (what < 70) {
      const uint64_t len = rng() % 20000;
      const uint64_t off = rng() % (disk - len + 1);
      auto seq = j->AppendTrim(off, len);
      REQUIRE(seq.ok());
      m.pending.push_back({*seq, true, off, {}, len});
    } else if (what < 73) {
      REQUIRE(j->AppendFlush().ok());
    } else if (what < 88) {
      const uint64_t lo = j->retired_seq(), hi = j->last_seq();
      const uint64_t upto = lo + (hi > lo ? rng() % (hi - lo + 1) : 0);
      REQUIRE(j->Retire(upto).ok());
      m.Retire(upto);
    } else if (what < 90) {
      const uint64_t last = j->last_seq();
      j.reset();
      ReplayReport rep;
      j = OpenOk(c, h, &rep);
      INFO(rep.ToString());
      REQUIRE(rep.damage.empty());
      REQUIRE_FALSE(rep.torn_tail);
      REQUIRE(j->last_seq() == last);
    } else {
      const uint64_t len = 1 + rng() % 30000;
      const uint64_t off = rng() % (disk - len + 1);
      CheckAgainstModel(*j, m, off, len);
    }
    uint64_t model_bytes = 0;
    for (const auto& o : m.pending) model_bytes += o.trim ? 0 : o.len;
    REQUIRE(j->pending_bytes() == model_bytes);
    REQUIRE(j->bytes_on_disk() == FilesBytes(DiskDir(c, h)));
  }
  CheckAgainstModel(*j, m, 0, disk);
}

TEST_CASE("retiring deletes whole segments and bounds the journal", "[journal]") {
  TempDir t;
  const uint64_t seg_bytes = 64 << 10;
  const JournalConfig c = Config(t, seg_bytes);
  const JournalDiskHeader h = Header(64 << 20);
  auto j = OpenOk(c, h);
  const std::string dir = DiskDir(c, h);
  const Bytes d = Pattern(4096, 7);
  uint64_t max_files = 0;
  for (int i = 0; i < 400; ++i) {
    AppendW(*j, static_cast<uint64_t>(i) * 4096, d);
    // Keep at most 20 writes pending.
    if (j->pending().size() > 20) REQUIRE(j->Retire(j->last_seq() - 20).ok());
    REQUIRE(j->bytes_on_disk() == FilesBytes(dir));
    // Pending data, its framing, plus at most one partly retired segment
    // and the segment being written.
    const uint64_t framed_pending = j->pending().size() * (4096 + 64);
    CHECK(j->bytes_on_disk() <= framed_pending + 2 * (seg_bytes + 4096 + 64));
    max_files = std::max<uint64_t>(max_files, SegmentFiles(dir).size());
  }
  CHECK(max_files <= 4);
  const uint64_t before = j->bytes_on_disk();
  REQUIRE(j->Retire(j->last_seq()).ok());
  CHECK(j->pending().empty());
  CHECK(j->pending_bytes() == 0);
  CHECK(j->bytes_on_disk() < before);
  CHECK(SegmentFiles(dir).size() == 1);  // only the current one stays
  CHECK(j->bytes_on_disk() == FilesBytes(dir));
}

TEST_CASE("seqs keep increasing across restarts, also after every segment is retired",
          "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t, 4096);  // roll often
  const JournalDiskHeader h = Header();
  {
    auto j = OpenOk(c, h);
    for (int i = 0; i < 10; ++i) AppendW(*j, 0, Pattern(1000, i));
    REQUIRE(j->Retire(10).ok());
  }
  {
    ReplayReport rep;
    auto j = OpenOk(c, h, &rep);
    CHECK(rep.pending == 0);
    CHECK(j->last_seq() == 10);
    CHECK(j->retired_seq() == 10);
    // Only the new segment is left: the watermark lives on in it.
    CHECK(SegmentFiles(DiskDir(c, h)).size() == 1);
    CHECK(AppendW(*j, 0, Pattern(10, 1)) == 11);
  }
  auto j = OpenOk(c, h);
  CHECK(j->last_seq() == 11);
  CHECK(j->pending().size() == 1);
  CHECK(AppendW(*j, 0, Pattern(10, 2)) == 12);
  // Retire beyond last_seq() is clamped: seq 13 is not retired in advance.
  REQUIRE(j->Retire(1000).ok());
  CHECK(j->retired_seq() == 12);
  CHECK(AppendW(*j, 0, Pattern(10, 3)) == 13);
  CHECK(j->pending().size() == 1);
}

TEST_CASE("records that roll to a new segment replay intact", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t, 1);  // every append after a header rolls
  const JournalDiskHeader h = Header();
  {
    auto j = OpenOk(c, h);
    AppendW(*j, 0, Pattern(100, 1));
    REQUIRE(j->AppendTrim(50, 10).ok());
    REQUIRE(j->AppendFlush().ok());
    REQUIRE(j->Retire(1).ok());
    AppendW(*j, 4096, Pattern(100, 2));
  }
  ReplayReport rep;
  auto j = OpenOk(c, h, &rep);
  INFO(rep.ToString());
  CHECK(rep.damage.empty());
  CHECK_FALSE(rep.torn_tail);
  CHECK(rep.pending == 3);
  CHECK(j->retired_seq() == 1);
  CHECK(j->last_seq() == 4);
  CHECK(j->Covered(0, 8192) == 10 + 100);
}

TEST_CASE("a journal of another disk is refused", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t);
  { auto j = OpenOk(c, Header(1 << 20)); }
  auto other_size = Journal::Open(c, Header(2 << 20), nullptr);
  REQUIRE_FALSE(other_size.ok());
  CHECK(other_size.status().kind() == Status::Kind::kInvalidArgument);
  CHECK(other_size.status().message().find("000001.log") != std::string::npos);
  JournalDiskHeader other_blk = Header(1 << 20);
  other_blk.blksize = 4096;
  auto b = Journal::Open(c, other_blk, nullptr);
  REQUIRE_FALSE(b.ok());
  CHECK(b.status().kind() == Status::Kind::kInvalidArgument);
  // A new label is not another disk.
  JournalDiskHeader relabeled = Header(1 << 20);
  relabeled.label = "renamed";
  auto r = Journal::Open(c, relabeled, nullptr);
  REQUIRE(r.ok());
  r.value().reset();
  // OpenExisting takes the header (with the newest label) from the journal.
  ReplayReport rep;
  auto e = Journal::OpenExisting(c, "SER-0001", &rep);
  REQUIRE(e.ok());
  CHECK((*e)->header().size == uint64_t{1} << 20);
  CHECK((*e)->header().label == "renamed");
  // One open journal per directory.
  auto second = Journal::Open(c, relabeled, nullptr);
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().kind() == Status::Kind::kUnavailable);
  e.value().reset();
  auto missing = Journal::OpenExisting(c, "NOPE", &rep);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().kind() == Status::Kind::kNotFound);
  fs::create_directory(c.dir + "/EMPTY");
  CHECK(Journal::OpenExisting(c, "EMPTY", &rep).status().kind() == Status::Kind::kNotFound);
  for (const char* bad : {"", ".", "..", "a/b"}) {
    JournalDiskHeader hb = Header();
    hb.serial = bad;
    CHECK(Journal::Open(c, hb, nullptr).status().kind() == Status::Kind::kInvalidArgument);
  }
}

TEST_CASE("writes outside the disk are refused and the journal stays usable", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t);
  auto j = OpenOk(c, Header(8192));
  CHECK(j->AppendWrite(8000, Pattern(193, 1)).status().kind() == Status::Kind::kInvalidArgument);
  CHECK(j->AppendWrite(UINT64_MAX - 1, Pattern(4, 1)).status().kind() ==
        Status::Kind::kInvalidArgument);
  CHECK(j->AppendTrim(4096, 4097).status().kind() == Status::Kind::kInvalidArgument);
  CHECK(AppendW(*j, 8000, Pattern(192, 1)) == 1);
  CHECK(j->Covered(UINT64_MAX - 10, 100) == 0);
  Bytes buf(10);
  CHECK_FALSE(j->Overlay(UINT64_MAX - 5, buf).ok());
}

TEST_CASE("a torn tail is a clean end, in strict mode too", "[journal]") {
  TempDir t;
  JournalConfig c = Config(t);
  const JournalDiskHeader h = Header();
  uint64_t last_framed = 0;
  {
    auto j = OpenOk(c, h);
    for (int i = 0; i < 5; ++i) AppendW(*j, static_cast<uint64_t>(i) * 4096, Pattern(3000, i));
    last_framed = j->pending().back().loc.framed_length;
  }
  const std::string seg = DiskDir(c, h) + "/000001.log";
  Bytes b = ReadFile(seg);
  REQUIRE(b.size() > 1000);
  b.erase(b.end() - 1000, b.end());  // into the last write
  WriteFile(seg, b);
  c.strict = true;
  ReplayReport rep;
  auto j = OpenOk(c, h, &rep);
  CHECK(rep.torn_tail);
  CHECK(rep.torn_bytes == last_framed - 1000);
  CHECK(rep.damage.empty());
  CHECK(rep.pending == 4);
  CHECK(j->last_seq() == 4);
  CHECK(rep.ToString().find("torn tail") != std::string::npos);
  for (const JournalPending& p : j->pending()) {
    auto d = j->ReadWriteData(p);
    REQUIRE(d.ok());
    CHECK(*d == Pattern(3000, static_cast<uint32_t>(p.seq - 1)));
  }
  CHECK(AppendW(*j, 0, Pattern(5, 5)) == 5);
}

TEST_CASE("damage in the middle of a segment is reported, or refused in strict mode", "[journal]") {
  TempDir t;
  JournalConfig c = Config(t);
  const JournalDiskHeader h = Header();
  {
    auto j = OpenOk(c, h);
    // 24 writes of 4 KiB: three blocks of the segment.
    for (int i = 0; i < 24; ++i) AppendW(*j, static_cast<uint64_t>(i) * 4096, Pattern(4096, i));
  }
  const std::string seg = DiskDir(c, h) + "/000001.log";
  Bytes b = ReadFile(seg);
  b[20000] ^= 0x40;  // inside a write record in the first block
  WriteFile(seg, b);

  c.strict = true;
  auto strict = Journal::Open(c, h, nullptr);
  REQUIRE_FALSE(strict.ok());
  CHECK(strict.status().kind() == Status::Kind::kCorruption);
  CHECK(strict.status().message().find("000001.log") != std::string::npos);
  CHECK(strict.status().message().find("offset") != std::string::npos);

  c.strict = false;
  ReplayReport rep;
  auto j = OpenOk(c, h, &rep);
  REQUIRE(rep.damage.size() == 1);
  CHECK(rep.damage[0].segment == 1);
  CHECK(rep.damage[0].offset < 20000);
  CHECK(rep.damage[0].offset + rep.damage[0].bytes >= 32768);
  CHECK(rep.damage[0].reason == "checksum mismatch");
  CHECK(rep.ToString().find("checksum mismatch") != std::string::npos);
  // The records before the damage and those in the following blocks are
  // intact, in order.
  CHECK(rep.pending >= 24 - 6);
  CHECK(rep.pending < 24);
  CHECK(j->pending().front().seq == 1);
  CHECK(j->pending().back().seq == 24);
  for (const JournalPending& p : j->pending()) {
    auto d = j->ReadWriteData(p);
    REQUIRE(d.ok());
    CHECK(*d == Pattern(4096, static_cast<uint32_t>(p.seq - 1)));
  }
  CHECK(AppendW(*j, 0, Pattern(1, 1)) == 25);
  // The damaged segment stays until everything read from it is retired.
  REQUIRE(j->Retire(24).ok());
  CHECK(SegmentFiles(DiskDir(c, h)) == std::vector<std::string>{"000002.log"});
}

TEST_CASE("a record that frames but does not parse is damage", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t);
  const JournalDiskHeader h = Header();
  {
    auto j = OpenOk(c, h);
    AppendW(*j, 0, Pattern(10, 1));
  }
  // Append a well-framed record with garbage protobuf, then a good one.
  const std::string seg = DiskDir(c, h) + "/000001.log";
  Bytes b = ReadFile(seg);
  const Bytes junk = {0xff, 0xff, 0xff, 0xff};
  journal_log::AppendRecord(b.size(), junk, &b);
  journal::JournalRecord rec;
  rec.set_seq(2);
  rec.mutable_flush();
  const std::string flush = rec.SerializeAsString();
  journal_log::AppendRecord(
      b.size(),
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(flush.data()), flush.size()), &b);
  // And one with a seq going backwards.
  rec.set_seq(1);
  const std::string back = rec.SerializeAsString();
  journal_log::AppendRecord(
      b.size(),
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(back.data()), back.size()), &b);
  WriteFile(seg, b);
  ReplayReport rep;
  auto j = OpenOk(c, h, &rep);
  REQUIRE(rep.damage.size() == 2);
  CHECK(rep.damage[0].reason == "unparseable record");
  CHECK(rep.damage[1].reason.find("out of order") != std::string::npos);
  CHECK(j->last_seq() == 2);
  CHECK(j->pending().size() == 2);
}

TEST_CASE("group commit makes appended records durable in order", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t, 8192);
  auto j = OpenOk(c, Header());
  CHECK(j->durable_seq() == 0);
  AppendW(*j, 0, Pattern(100, 1));
  Journal::SyncBatch b1 = j->PrepareSync();
  CHECK(b1.upto_seq == 1);
  CHECK(b1.fds.size() == 1);
  CHECK(b1.dir_fd >= 0);  // the segment was created
  // Appends after PrepareSync go into the next batch.
  AppendW(*j, 0, Pattern(10000, 2));  // rolls to a second segment
  AppendW(*j, 0, Pattern(100, 3));
  Journal::SyncBatch b2 = j->PrepareSync();
  CHECK(b2.upto_seq == 3);
  CHECK(b2.dir_fd >= 0);
  Journal::SyncBatch b3 = j->PrepareSync();  // nothing new
  CHECK(b3.fds.empty());
  CHECK(b3.dir_fd < 0);
  REQUIRE(Journal::RunSync(&b2).ok());
  CHECK(b2.fds.empty());
  j->SyncDone(b2);
  CHECK(j->durable_seq() == 0);  // b1 has not finished
  REQUIRE(Journal::RunSync(&b1).ok());
  j->SyncDone(b1);
  // b3 claims seq 3 as well; batches are told apart only by upto_seq, so
  // seq 3 counts as durable once both are done.
  CHECK(j->durable_seq() == 1);
  REQUIRE(Journal::RunSync(&b3).ok());
  j->SyncDone(b3);
  CHECK(j->durable_seq() == 3);
  // A sync may run while the segment is deleted: its descriptor stays valid.
  AppendW(*j, 0, Pattern(10000, 4));
  Journal::SyncBatch b4 = j->PrepareSync();
  REQUIRE(j->Retire(4).ok());
  Journal::SyncBatch b5 = j->PrepareSync();
  CHECK(b5.dir_fd >= 0);  // segments were deleted
  REQUIRE(Journal::RunSync(&b4).ok());
  REQUIRE(Journal::RunSync(&b5).ok());
  j->SyncDone(b4);
  j->SyncDone(b5);
  CHECK(j->durable_seq() == 4);
}

TEST_CASE("the dump lists every record and a summary", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t);
  const JournalDiskHeader h = Header();
  auto j = OpenOk(c, h);
  AppendW(*j, 4096, Pattern(16, 1));
  REQUIRE(j->AppendTrim(0, 512).ok());
  REQUIRE(j->Retire(1).ok());
  std::string out;
  REQUIRE(Journal::Dump(c.dir, &out).ok());
  INFO(out);
  CHECK(out.find("000001.log @0 ") != std::string::npos);
  CHECK(out.find("header serial=SER-0001") != std::string::npos);
  CHECK(out.find("seq=1 write offset=4096 length=16 retired") != std::string::npos);
  CHECK(out.find("seq=2 trim offset=0 length=512 pending") != std::string::npos);
  CHECK(out.find("retire upto=1") != std::string::npos);
  CHECK(out.find("1 pending (0 bytes of writes), retired up to 1, last seq 2") !=
        std::string::npos);
  std::string one;
  REQUIRE(Journal::Dump(DiskDir(c, h), &one).ok());
  CHECK(one == out);
  CHECK(Journal::Dump(t.path() + "/missing", &out).kind() == Status::Kind::kNotFound);
  std::string empty;
  fs::create_directory(t.path() + "/empty");
  REQUIRE(Journal::Dump(t.path() + "/empty", &empty).ok());
  CHECK(empty.find("no journals") != std::string::npos);
}

TEST_CASE("RemoveIfEmpty removes the directory only when nothing is pending", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t);
  const JournalDiskHeader h = Header();
  auto j = OpenOk(c, h);
  AppendW(*j, 0, Pattern(16, 1));
  REQUIRE(j->RemoveIfEmpty().ok());
  CHECK(fs::exists(DiskDir(c, h)));
  REQUIRE(j->Retire(1).ok());
  REQUIRE(j->RemoveIfEmpty().ok());
  CHECK_FALSE(fs::exists(DiskDir(c, h)));
  CHECK(j->bytes_on_disk() == 0);
  CHECK_FALSE(j->AppendWrite(0, Pattern(1, 1)).ok());
  auto disks = Journal::ListDisks(c.dir);
  REQUIRE(disks.ok());
  CHECK(disks->empty());
}

TEST_CASE("an append that fails switches the journal off and it cleans up after itself",
          "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t);
  const JournalDiskHeader h = Header(64 << 20);
  auto j = OpenOk(c, h);
  AppendW(*j, 0, Pattern(1000, 1));
  Status failure;
  WithFileSizeLimit(256 << 10, [&] {
    for (int i = 0; i < 100 && failure.ok(); ++i) {
      auto r = j->AppendWrite(0, Pattern(10000, 2));
      if (!r.ok()) failure = r.status();
    }
  });
  REQUIRE_FALSE(failure.ok());
  CHECK(failure.kind() == Status::Kind::kIoError);
  CHECK(failure.message().find("000001.log") != std::string::npos);
  // Refused from now on, even with space again.
  CHECK_FALSE(j->AppendFlush().ok());
  // The segment was cut back to its last complete record.
  const std::string dir = DiskDir(c, h);
  CHECK(j->bytes_on_disk() == FilesBytes(dir));
  const std::string dump = CleanDump(dir);
  INFO(dump);
  CHECK(dump.find(" " + std::to_string(j->pending().size()) + " pending") != std::string::npos);
  // Retiring everything deletes every segment of a failed journal.
  REQUIRE(j->Retire(j->last_seq()).ok());
  CHECK(j->pending().empty());
  CHECK(SegmentFiles(dir).empty());
  CHECK(j->bytes_on_disk() == 0);
}

TEST_CASE("a journal that cannot start its new segment opens failed and still sends what it holds",
          "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t);
  const JournalDiskHeader h = Header(1 << 20);
  const std::string dir = DiskDir(c, h);
  CHECK_FALSE(Journal::MayHoldRecords(c.dir, h.serial));  // no directory
  {
    auto j = OpenOk(c, h);
    for (int i = 0; i < 3; ++i) AppendW(*j, 4096 * i, Pattern(4096, i));
  }
  CHECK(Journal::MayHoldRecords(c.dir, h.serial));
  // A full file system: the new segment's header cannot be written.
  std::unique_ptr<Journal> j;
  WithFileSizeLimit(0, [&] {
    ReplayReport rep;
    auto r = Journal::Open(c, h, &rep);
    REQUIRE(r.ok());
    j = std::move(*r);
    CHECK(rep.pending == 3);
  });
  CHECK(j->failed());
  CHECK(j->failure().find("000002.log") != std::string::npos);
  CHECK(j->pending().size() == 3);
  CHECK_FALSE(j->AppendFlush().ok());
  Bytes got(4096, 0);
  REQUIRE(j->Overlay(8192, got).ok());
  CHECK(got == Pattern(4096, 2));
  // Dropped unretired (a crash): nothing is lost, the next open has it all.
  j.reset();
  {
    auto again = OpenOk(c, h);
    CHECK_FALSE(again->failed());
    CHECK(again->pending().size() == 3);
  }
  // Failed again; once its records are retired (sent), the segments go,
  // so no later start can resend them over later writes.
  WithFileSizeLimit(0, [&] {
    auto r = Journal::Open(c, h, nullptr);
    REQUIRE(r.ok());
    j = std::move(*r);
  });
  REQUIRE(j->failed());
  CHECK_FALSE(j->gone());
  REQUIRE(j->Retire(j->last_seq()).ok());
  CHECK(j->pending().empty());
  CHECK(SegmentFiles(dir).empty());
  CHECK(j->gone());  // deleted and the directory synced
  CHECK_FALSE(Journal::MayHoldRecords(c.dir, h.serial));
  CHECK_FALSE(Journal::MayHoldRecords(c.dir, "a/b"));
}

TEST_CASE("a hostile journal never crashes replay or the dump", "[journal]") {
  TempDir t;
  const JournalConfig c = Config(t, 48 << 10);
  const JournalDiskHeader h = Header();
  {
    auto j = OpenOk(c, h);
    for (int i = 0; i < 30; ++i) AppendW(*j, static_cast<uint64_t>(i) * 512, Pattern(3000, i));
    REQUIRE(j->AppendTrim(0, 100).ok());
    REQUIRE(j->Retire(5).ok());
  }
  const std::string dir = DiskDir(c, h);
  std::map<std::string, Bytes> pristine;
  for (const auto& f : SegmentFiles(dir)) pristine[f] = ReadFile(dir + "/" + f);
  std::mt19937 rng(777);
  for (int round = 0; round < 60; ++round) {
    fs::remove_all(dir);
    fs::create_directory(dir);
    for (const auto& [name, bytes] : pristine) {
      Bytes b = bytes;
      const int mode = static_cast<int>(rng() % 3);
      if (mode == 0) {
        for (int k = 0; k < 20; ++k) b[rng() % b.size()] = static_cast<uint8_t>(rng());
      } else if (mode == 1) {
        b = Pattern(b.size(), static_cast<uint32_t>(rng()));
      } else {
        // Re-frame a random payload so the framing is valid but the
        // protobuf is not (or says odd things).
        b.resize(b.size() / 2);
        const Bytes junk = Pattern(1 + rng() % 40, static_cast<uint32_t>(rng()));
        journal_log::AppendRecord(b.size(), junk, &b);
      }
      WriteFile(dir + "/" + name, b);
    }
    std::string dump;
    (void)Journal::Dump(c.dir, &dump);
    ReplayReport rep;
    { auto existing = Journal::OpenExisting(c, h.serial, &rep); }
    auto j = Journal::Open(c, h, &rep);
    if (!j.ok()) continue;  // refused with a status, which is fine too
    // Whatever replayed is readable or reports an error, never crashes.
    for (const JournalPending& p : (*j)->pending())
      if (p.kind == JournalRecordKind::kWrite) (void)(*j)->ReadWriteData(p);
    Bytes buf(1 << 16);
    (void)(*j)->Overlay(0, buf);
    CHECK((*j)->Retire((*j)->last_seq()).ok());
    CHECK((*j)->pending().empty());
  }
}

TEST_CASE("the worked example of docs/journal-format.md is what the journal writes", "[journal]") {
  TempDir t;
  JournalConfig c = Config(t);
  c.synced = true;                              // a write-back journal: no boot id in its header
  const JournalDiskHeader h = Header(1048576);  // SER-0001, 512, "data"
  auto j = OpenOk(c, h);
  const std::string data = "0123456789abcdef";
  CHECK(AppendW(*j, 4096, Bytes(data.begin(), data.end())) == 1);
  REQUIRE(j->Retire(1).ok());
  const Bytes want = {0x92, 0x43, 0xe1, 0x40, 0x1d, 0x00, 0x01, 0x12, 0x1b, 0x0a, 0x08, 0x53, 0x45,
                      0x52, 0x2d, 0x30, 0x30, 0x30, 0x31, 0x10, 0x80, 0x80, 0x40, 0x18, 0x80, 0x04,
                      0x22, 0x04, 0x64, 0x61, 0x74, 0x61, 0x28, 0x01, 0x38, 0x01, 0x34, 0x2f, 0x56,
                      0xc9, 0x02, 0x00, 0x01, 0x32, 0x00, 0x60, 0x14, 0x95, 0x7a, 0x19, 0x00, 0x01,
                      0x08, 0x01, 0x1a, 0x15, 0x08, 0x80, 0x20, 0x12, 0x10, 0x30, 0x31, 0x32, 0x33,
                      0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x83,
                      0xa3, 0xb4, 0xbc, 0x04, 0x00, 0x01, 0x32, 0x02, 0x08, 0x01};
  const Bytes got = ReadFile(DiskDir(c, h) + "/000001.log");
  std::string hex;
  for (uint8_t b : got) {
    char x[8];
    snprintf(x, sizeof x, "%02x ", b);
    hex += x;
  }
  INFO("written: " << hex);
  CHECK(got == want);
}
