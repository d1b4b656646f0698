// JournalDriver: the feed, retirement and gate of a disk's journal, on a
// real journal in a temporary directory, without links or FUSE.
#include "daemon/import/journal_driver.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <catch2/catch.hpp>

#include "test/unit/temp_dir.h"

using namespace xdisk;
using xdisk::testing::TempDir;

namespace {
using Bytes = std::vector<uint8_t>;

JournalDiskHeader Header() {
  JournalDiskHeader h;
  h.serial = "DRV-1";
  h.size = 1 << 20;
  h.blksize = 512;
  h.label = "data";
  return h;
}

std::unique_ptr<Journal> OpenJournal(const TempDir& t, bool synced) {
  JournalConfig c;
  c.dir = t.path() + "/journal";
  c.synced = synced;
  ReplayReport report;
  auto j = Journal::Open(c, Header(), &report);
  INFO(j.status().ToString());
  REQUIRE(j.ok());
  return std::move(j.value());
}

// Declared before the driver, so destroyed after it: each test runs the
// loop dry before its driver goes.
struct Loop {
  uv_loop_t loop;
  Loop() { uv_loop_init(&loop); }
  ~Loop() {
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
  }
};
}  // namespace

TEST_CASE("a journal left to --sync=remote drains first and holds new writes until gone",
          "[journal_driver]") {
  TempDir dir("journal_driver_test");
  const Bytes a(4096, 0xaa);
  {
    // An earlier write-back run left three records.
    auto j = OpenJournal(dir, true);
    REQUIRE(j->AppendWrite(0, a).ok());
    REQUIRE(j->AppendTrim(8192, 4096).ok());
    REQUIRE(j->AppendFlush().ok());
  }
  Loop l;
  int kicks = 0;
  bool drained = false;
  JournalDriver d(&l.loop, "test", SyncMode::kRemote, OpenJournal(dir, false), [&] { ++kicks; });
  d.SetDrainedHook([&] { drained = true; });
  CHECK_FALSE(d.writeback());
  CHECK(d.busy());
  // Until the backlog is fed, every new request waits; writes and trims
  // until it is gone.
  CHECK(d.GateClosed(IoKind::kRead));
  CHECK(d.GateClosed(IoKind::kWrite));

  std::vector<JournalDriver::Record> fed;
  REQUIRE(d.Feed(0, &fed));
  REQUIRE(fed.size() == 3);  // in seq order, no flush of our own (kRemote)
  CHECK(fed[0].kind == IoKind::kWrite);
  REQUIRE(fed[0].data != nullptr);
  CHECK(*fed[0].data == a);
  CHECK(fed[1].kind == IoKind::kTrim);
  CHECK(fed[1].offset == 8192);
  CHECK(fed[2].kind == IoKind::kFlush);
  CHECK(fed[0].seq < fed[1].seq);
  CHECK(fed[1].seq < fed[2].seq);
  CHECK_FALSE(d.GateClosed(IoKind::kRead));
  CHECK_FALSE(d.GateClosed(IoKind::kFlush));
  CHECK(d.GateClosed(IoKind::kWrite));
  CHECK(d.GateClosed(IoKind::kTrim));
  std::vector<JournalDriver::Record> again;
  REQUIRE(d.Feed(0, &again));
  CHECK(again.empty());  // fed once

  // Answers out of order: only a prefix retires.
  d.RecordDone(fed[0], 0);
  d.RecordDone(fed[2], 0);
  d.Turn();
  CHECK(d.journal().retired_seq() == fed[0].seq);
  CHECK(d.busy());
  CHECK(d.GateClosed(IoKind::kWrite));
  const int before = kicks;
  d.RecordDone(fed[1], 0);
  d.Turn();
  CHECK(kicks > before);
  CHECK_FALSE(d.busy());
  CHECK(drained);
  CHECK(d.journal().gone());
  CHECK_FALSE(d.GateClosed(IoKind::kWrite));
  d.Shutdown();
  uv_run(&l.loop, UV_RUN_DEFAULT);  // nothing of the driver's may run after it
}

TEST_CASE("write-back: durable before done, retired after a flush, refed after a lost link",
          "[journal_driver]") {
  TempDir dir("journal_driver_test");
  Loop l;
  JournalDriver d(&l.loop, "test", SyncMode::kJournal, OpenJournal(dir, true), [] {});
  REQUIRE(d.writeback());
  const Bytes b(8192, 0xbb);
  int done = -1;
  std::string why;
  REQUIRE(d.AppendWrite(
              4096, b, [&](int err) { done = err; }, &why) == JournalDriver::Append::kAccepted);
  CHECK(done == -1);  // not durable yet
  d.Turn();           // starts the group commit
  uv_run(&l.loop, UV_RUN_DEFAULT);
  CHECK(done == 0);
  // A write outside the disk is refused alone.
  CHECK(d.AppendWrite(
            1 << 20, b, [](int) {}, &why) == JournalDriver::Append::kRefused);
  CHECK(d.writeback());

  std::vector<JournalDriver::Record> fed;
  REQUIRE(d.Feed(0, &fed));
  REQUIRE(fed.size() == 1);
  CHECK(*fed[0].data == b);
  d.RecordDone(fed[0], 0);
  CHECK(d.busy());  // acknowledged, not yet flushed: not retired
  fed.clear();
  REQUIRE(d.Feed(0, &fed));
  REQUIRE(fed.size() == 1);
  CHECK(fed[0].kind == IoKind::kFlush);
  CHECK(fed[0].flush_target != 0);
  // The link dies before the flush is answered: the exporter may have lost
  // the acknowledged write; it is fed again.
  d.Dropped(fed[0]);
  d.LinkLost();
  fed.clear();
  REQUIRE(d.Feed(0, &fed));
  REQUIRE(fed.size() == 1);
  CHECK(fed[0].kind == IoKind::kWrite);
  d.RecordDone(fed[0], 0);
  fed.clear();
  REQUIRE(d.Feed(0, &fed));
  REQUIRE(fed.size() == 1);
  d.RecordDone(fed[0], 0);  // the flush
  CHECK_FALSE(d.busy());
  d.Shutdown();
  uv_run(&l.loop, UV_RUN_DEFAULT);  // nothing of the driver's may run after it
}

TEST_CASE("an unreadable record stops the feed but not the flush of what went before",
          "[journal_driver]") {
  TempDir dir("journal_driver_test");
  Loop l;
  JournalDriver d(&l.loop, "test", SyncMode::kJournal, OpenJournal(dir, true), [] {});
  const Bytes a(4096, 0xaa), b(65536, 0xbb);
  std::string why;
  REQUIRE(d.AppendWrite(
              0, a, [](int) {}, &why) == JournalDriver::Append::kAccepted);
  std::vector<JournalDriver::Record> fed;
  REQUIRE(d.Feed(0, &fed));
  REQUIRE(fed.size() == 1);
  d.RecordDone(fed[0], 0);  // A acknowledged, waiting for its flush
  REQUIRE(d.AppendWrite(
              8192, b, [](int) {}, &why) == JournalDriver::Append::kAccepted);
  d.Turn();
  uv_run(&l.loop, UV_RUN_DEFAULT);
  // B's bytes are damaged on disk: its record can no longer be read back.
  const std::string seg = dir.path() + "/journal/DRV-1/000001.log";
  int fd = open(seg.c_str(), O_WRONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  struct stat st {};
  REQUIRE(fstat(fd, &st) == 0);
  const Bytes junk(16384, 0x5a);
  REQUIRE(pwrite(fd, junk.data(), junk.size(), 45000) == static_cast<ssize_t>(junk.size()));
  close(fd);
  fed.clear();
  CHECK_FALSE(d.Feed(0, &fed));  // B is not fed...
  REQUIRE(fed.size() == 1);      // ...but A's flush is
  CHECK(fed[0].kind == IoKind::kFlush);
  d.RecordDone(fed[0], 0);
  CHECK(d.journal().retired_seq() >= 1);
  CHECK(d.busy());  // B stays pending, never skipped
  d.Shutdown();
  uv_run(&l.loop, UV_RUN_DEFAULT);
}
