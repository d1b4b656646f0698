// Loop-level tests of LocalDisk: a real uv_loop_t and the real threadpool
// over a temporary file (and a loop device when running as root). Every test
// ends by checking that uv_loop_close() returns 0.
#include "daemon/export/local_disk.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using xdisk::LocalDisk;
using xdisk::Status;

namespace {

std::string TempDir() {
  const char* t = std::getenv("TMPDIR");
  return t && *t ? t : "/tmp";
}

// A temporary file of `size` bytes, filled with `fill` (so that it has real
// blocks allocated) or left sparse when fill is 0.
struct TempFile {
  std::string path;
  explicit TempFile(size_t size, uint8_t fill = 0) {
    std::string tmpl = TempDir() + "/local_disk_test.XXXXXX";
    int fd = mkstemp(tmpl.data());
    REQUIRE(fd >= 0);
    path = tmpl;
    REQUIRE(ftruncate(fd, static_cast<off_t>(size)) == 0);
    if (fill != 0) {
      xdisk::dmsg::ByteBuffer buf(size, fill);
      REQUIRE(pwrite(fd, buf.data(), buf.size(), 0) == static_cast<ssize_t>(buf.size()));
      REQUIRE(fsync(fd) == 0);
    }
    close(fd);
  }
  ~TempFile() { unlink(path.c_str()); }
  blkcnt_t Blocks() const {
    struct stat st;
    REQUIRE(stat(path.c_str(), &st) == 0);
    return st.st_blocks;
  }
};

struct Loop {
  uv_loop_t loop;
  Loop() { REQUIRE(uv_loop_init(&loop) == 0); }
  void Run() { uv_run(&loop, UV_RUN_DEFAULT); }
  int Close() { return uv_loop_close(&loop); }
};

std::unique_ptr<LocalDisk> OpenOrFail(uv_loop_t* loop, const std::string& path, bool ro) {
  auto r = LocalDisk::Open(loop, path, ro);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  return std::move(r).value();
}

xdisk::dmsg::ByteBuffer ReadSync(Loop& l, LocalDisk& d, uint64_t off, uint32_t len) {
  Status st = Status::Unavailable("not called");
  xdisk::dmsg::ByteBuffer out;
  d.Read(off, len, [&](Status s, xdisk::dmsg::ByteBuffer data) {
    st = std::move(s);
    out = std::move(data);
  });
  l.Run();
  INFO(st.ToString());
  REQUIRE(st.ok());
  REQUIRE(out.size() == len);
  return out;
}

Status WriteSync(Loop& l, LocalDisk& d, uint64_t off, xdisk::dmsg::ByteBuffer data) {
  Status st = Status::Unavailable("not called");
  d.Write(off, std::move(data), [&](Status s) { st = std::move(s); });
  l.Run();
  return st;
}

Status TrimSync(Loop& l, LocalDisk& d, uint64_t off, uint64_t len) {
  Status st = Status::Unavailable("not called");
  d.Trim(off, len, [&](Status s) { st = std::move(s); });
  l.Run();
  return st;
}

Status FlushSync(Loop& l, LocalDisk& d) {
  Status st = Status::Unavailable("not called");
  d.Flush([&](Status s) { st = std::move(s); });
  l.Run();
  return st;
}

bool AllEqual(const xdisk::dmsg::ByteBuffer& v, uint8_t b) {
  for (uint8_t x : v)
    if (x != b) return false;
  return true;
}

// Random reads and writes submitted in batches without running the loop in
// between, so that many are in flight at once and overlap. The shadow buffer
// is updated at submission time and every read's expected bytes are captured
// at submission time: that is exactly what the ordering guarantee promises.
void RandomWorkload(Loop& l, LocalDisk& d, uint64_t size, uint32_t align, uint64_t seed) {
  xdisk::dmsg::ByteBuffer shadow = ReadSync(l, d, 0, static_cast<uint32_t>(size));
  std::mt19937_64 rng(seed);
  size_t reads_checked = 0;
  size_t writes_done = 0;
  size_t failures = 0;
  for (int round = 0; round < 10; ++round) {
    for (int i = 0; i < 100; ++i) {
      uint64_t units = size / align;
      uint64_t off = (rng() % units) * align;
      uint64_t max_len = std::min<uint64_t>(size - off, 64 * 1024);
      uint32_t len =
          static_cast<uint32_t>(std::max<uint64_t>(align, (rng() % max_len) / align * align));
      if (len > size - off) len = static_cast<uint32_t>(size - off);
      if (rng() % 2 == 0) {
        xdisk::dmsg::ByteBuffer data(len);
        for (auto& b : data) b = static_cast<uint8_t>(rng());
        std::memcpy(shadow.data() + off, data.data(), len);
        d.Write(off, std::move(data), [&](Status s) {
          if (!s.ok()) ++failures;
          ++writes_done;
        });
      } else {
        xdisk::dmsg::ByteBuffer expect(shadow.begin() + off, shadow.begin() + off + len);
        d.Read(off, len, [&, expect = std::move(expect)](Status s, xdisk::dmsg::ByteBuffer data) {
          if (!s.ok() || data != expect) ++failures;
          ++reads_checked;
        });
      }
    }
    l.Run();
    REQUIRE(d.in_flight() == 0);
  }
  CHECK(failures == 0);
  CHECK(reads_checked + writes_done == 1000);
  CHECK(ReadSync(l, d, 0, static_cast<uint32_t>(size)) == shadow);
}

// Runs a shell command and returns its first output line, or "" on failure.
std::string RunCapture(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return "";
  char buf[256] = {};
  std::string out;
  if (fgets(buf, sizeof buf, p)) out = buf;
  int rc = pclose(p);
  if (rc != 0) return "";
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// Attaches a loop device to a file. It holds a descriptor on the device and
// detaches it at once: the kernel then only marks it "autoclear" and tears
// it down when the last descriptor closes, so the device goes away on every
// exit path, including the test being killed.
struct LoopDevice {
  std::string dev;
  int fd = -1;
  LoopDevice(const std::string& file, int sector_size) {
    std::string cmd = "losetup -f --show";
    if (sector_size != 512) cmd += " --sector-size " + std::to_string(sector_size);
    dev = RunCapture(cmd + " '" + file + "' 2>/dev/null");
    if (dev.empty()) return;
    fd = open(dev.c_str(), O_RDONLY | O_CLOEXEC);
    std::string detach = "losetup -d " + dev;
    if (std::system(detach.c_str()) != 0 || fd < 0) {
      std::fprintf(stderr, "warning: could not hold and detach %s\n", dev.c_str());
    }
  }
  ~LoopDevice() {
    if (fd >= 0) close(fd);
  }
};

}  // namespace

TEST_CASE("Open reports size, block size and type of a regular file", "[local_disk]") {
  Loop l;
  TempFile f(3 * 1024 * 1024 + 4096);
  {
    auto d = OpenOrFail(&l.loop, f.path, false);
    CHECK(d->size() == 3 * 1024 * 1024 + 4096);
    CHECK(d->block_size() == 512);
    CHECK_FALSE(d->is_block_device());
    CHECK_FALSE(d->read_only());
    CHECK(d->path() == f.path);
    CHECK(d->in_flight() == 0);
  }
  REQUIRE(l.Close() == 0);
}

TEST_CASE("Open fails with the path in the message", "[local_disk]") {
  Loop l;
  auto missing = LocalDisk::Open(&l.loop, "/nonexistent/xdisk-disk", false);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().errno_value() == ENOENT);
  CHECK(missing.status().message().find("/nonexistent/xdisk-disk") != std::string::npos);

  auto dir = LocalDisk::Open(&l.loop, TempDir(), true);
  REQUIRE_FALSE(dir.ok());
  CHECK(dir.status().kind() == Status::Kind::kInvalidArgument);
  CHECK(dir.status().message().find("not a regular file or block device") != std::string::npos);
  REQUIRE(l.Close() == 0);
}

TEST_CASE("Concurrent random reads and writes match a shadow buffer byte for byte",
          "[local_disk]") {
  Loop l;
  TempFile f(4 * 1024 * 1024);
  {
    auto d = OpenOrFail(&l.loop, f.path, false);
    SECTION("sector-aligned") { RandomWorkload(l, *d, d->size(), 512, 1); }
    SECTION("byte-granular") { RandomWorkload(l, *d, d->size(), 1, 2); }
  }
  REQUIRE(l.Close() == 0);
}

TEST_CASE("Overlapping writes land in submission order and a later read sees the last",
          "[local_disk]") {
  Loop l;
  TempFile f(1024 * 1024);
  {
    auto d = OpenOrFail(&l.loop, f.path, false);
    const uint64_t off = 4096;
    const uint32_t len = 64 * 1024;
    std::vector<int> completion_order;
    for (int i = 0; i < 50; ++i) {
      // Shift each write a little so that the ranges overlap without being
      // identical; the last one covers [off, off+len) entirely.
      uint64_t o = off + static_cast<uint64_t>((49 - i) % 7) * 512;
      d->Write(o, xdisk::dmsg::ByteBuffer(len - (o - off), static_cast<uint8_t>(i + 1)),
               [&completion_order, i](Status s) {
                 CHECK(s.ok());
                 completion_order.push_back(i);
               });
    }
    xdisk::dmsg::ByteBuffer got;
    d->Read(off, len, [&](Status s, xdisk::dmsg::ByteBuffer data) {
      CHECK(s.ok());
      // Every write callback ran before this read's.
      CHECK(completion_order.size() == 50);
      got = std::move(data);
    });
    CHECK(d->in_flight() == 51);
    l.Run();
    REQUIRE(completion_order.size() == 50);
    for (int i = 0; i < 50; ++i) CHECK(completion_order[i] == i);
    CHECK(AllEqual(got, 50));
  }
  REQUIRE(l.Close() == 0);
}

TEST_CASE("A write does not overtake an earlier overlapping read", "[local_disk]") {
  Loop l;
  TempFile f(1024 * 1024, 0x11);
  {
    auto d = OpenOrFail(&l.loop, f.path, false);
    std::vector<xdisk::dmsg::ByteBuffer> reads(20);
    for (int i = 0; i < 20; ++i) {
      d->Read(0, 256 * 1024, [&reads, i](Status s, xdisk::dmsg::ByteBuffer data) {
        CHECK(s.ok());
        reads[i] = std::move(data);
      });
    }
    d->Write(0, xdisk::dmsg::ByteBuffer(256 * 1024, 0x22), [](Status s) { CHECK(s.ok()); });
    l.Run();
    for (auto& r : reads) CHECK(AllEqual(r, 0x11));
    CHECK(AllEqual(ReadSync(l, *d, 0, 256 * 1024), 0x22));
  }
  REQUIRE(l.Close() == 0);
}

TEST_CASE("Trim reads back as zeros and punches holes in a file", "[local_disk]") {
  Loop l;
  const uint64_t size = 4 * 1024 * 1024;
  TempFile f(size, 0xAB);
  {
    auto d = OpenOrFail(&l.loop, f.path, false);
    const blkcnt_t before = f.Blocks();
    REQUIRE(TrimSync(l, *d, 1024 * 1024, 2 * 1024 * 1024).ok());
    CHECK(f.Blocks() < before);
    CHECK(AllEqual(ReadSync(l, *d, 1024 * 1024, 2 * 1024 * 1024), 0));
    CHECK(AllEqual(ReadSync(l, *d, 0, 1024 * 1024), 0xAB));
    CHECK(AllEqual(ReadSync(l, *d, 3 * 1024 * 1024, 1024 * 1024), 0xAB));

    // An unaligned range is zeroed exactly, neighbours untouched.
    REQUIRE(TrimSync(l, *d, 1000, 5000).ok());
    auto around = ReadSync(l, *d, 0, 8192);
    for (size_t i = 0; i < around.size(); ++i) {
      uint8_t want = (i >= 1000 && i < 6000) ? 0 : 0xAB;
      if (around[i] != want) FAIL("byte " << i << " is " << int(around[i]));
    }
    CHECK(d->size() == size);  // KEEP_SIZE: the file did not shrink.
    struct stat st;
    REQUIRE(stat(f.path.c_str(), &st) == 0);
    CHECK(static_cast<uint64_t>(st.st_size) == size);
  }
  REQUIRE(l.Close() == 0);
}

TEST_CASE("Trim is ordered against overlapping writes", "[local_disk]") {
  Loop l;
  TempFile f(1024 * 1024);
  {
    auto d = OpenOrFail(&l.loop, f.path, false);
    for (int i = 0; i < 10; ++i) {
      d->Write(0, xdisk::dmsg::ByteBuffer(128 * 1024, 0x5A), [](Status s) { CHECK(s.ok()); });
      d->Trim(4096, 64 * 1024, [](Status s) { CHECK(s.ok()); });
    }
    xdisk::dmsg::ByteBuffer got;
    d->Read(0, 128 * 1024, [&](Status s, xdisk::dmsg::ByteBuffer data) {
      CHECK(s.ok());
      got = std::move(data);
    });
    l.Run();
    REQUIRE(got.size() == 128 * 1024);
    for (size_t i = 0; i < got.size(); ++i) {
      uint8_t want = (i >= 4096 && i < 4096 + 64 * 1024) ? 0 : 0x5A;
      if (got[i] != want) FAIL("byte " << i << " is " << int(got[i]));
    }
  }
  REQUIRE(l.Close() == 0);
}

TEST_CASE("Flush succeeds after writes, and on a read-only disk", "[local_disk]") {
  Loop l;
  TempFile f(1024 * 1024);
  {
    auto d = OpenOrFail(&l.loop, f.path, false);
    REQUIRE(WriteSync(l, *d, 0, xdisk::dmsg::ByteBuffer(4096, 7)).ok());
    // A flush submitted together with writes completes too; it is not
    // ordered against them.
    int done = 0;
    for (int i = 0; i < 8; ++i) {
      d->Write(static_cast<uint64_t>(i) * 4096, xdisk::dmsg::ByteBuffer(4096, 9), [&](Status s) {
        CHECK(s.ok());
        ++done;
      });
    }
    d->Flush([&](Status s) {
      CHECK(s.ok());
      ++done;
    });
    l.Run();
    CHECK(done == 9);
    CHECK(FlushSync(l, *d).ok());

    auto ro = OpenOrFail(&l.loop, f.path, true);
    CHECK(FlushSync(l, *ro).ok());
  }
  REQUIRE(l.Close() == 0);
}

TEST_CASE("Errors complete through the callback, never synchronously", "[local_disk]") {
  Loop l;
  TempFile f(1024 * 1024, 0x33);
  {
    auto d = OpenOrFail(&l.loop, f.path, true);
    CHECK(d->read_only());

    bool called = false;
    Status st;
    d->Write(0, xdisk::dmsg::ByteBuffer(512, 1), [&](Status s) {
      called = true;
      st = std::move(s);
    });
    CHECK_FALSE(called);
    l.Run();
    REQUIRE(called);
    CHECK_FALSE(st.ok());
    CHECK(st.errno_value() == EROFS);
    CHECK(st.message().find(f.path) != std::string::npos);
    CHECK(st.message().find("write offset=0 length=512") != std::string::npos);

    Status trim = TrimSync(l, *d, 0, 4096);
    CHECK(trim.errno_value() == EROFS);

    // Reads still work and see the old data.
    CHECK(AllEqual(ReadSync(l, *d, 0, 512), 0x33));

    // A range past the end is rejected, with the range in the message.
    Status range = Status::Unavailable("not called");
    xdisk::dmsg::ByteBuffer data{1};
    d->Read(1024 * 1024 - 100, 200, [&](Status s, xdisk::dmsg::ByteBuffer got) {
      range = std::move(s);
      data = std::move(got);
    });
    l.Run();
    CHECK(range.kind() == Status::Kind::kInvalidArgument);
    CHECK(range.message().find("offset=1048476 length=200") != std::string::npos);
    CHECK(data.empty());
  }
  REQUIRE(l.Close() == 0);
}

TEST_CASE("CloseWhenIdle waits for in-flight operations and rejects new ones", "[local_disk]") {
  Loop l;
  TempFile f(1024 * 1024);
  SECTION("with operations in flight") {
    auto d = OpenOrFail(&l.loop, f.path, false);
    int ops_done = 0;
    bool closed = false;
    for (int i = 0; i < 20; ++i) {
      d->Write(static_cast<uint64_t>(i) * 4096, xdisk::dmsg::ByteBuffer(4096, 1), [&](Status s) {
        CHECK(s.ok());
        CHECK_FALSE(closed);
        ++ops_done;
      });
    }
    Status late;
    d->CloseWhenIdle([&] {
      CHECK(ops_done == 21);
      closed = true;
      d.reset();  // Destroying the disk from its close callback is allowed.
    });
    d->Read(0, 512, [&](Status s, xdisk::dmsg::ByteBuffer) {
      late = std::move(s);
      ++ops_done;
    });
    l.Run();
    CHECK(closed);
    CHECK(late.kind() == Status::Kind::kUnavailable);
    CHECK(d == nullptr);
  }
  SECTION("when already idle the callback is deferred to the loop") {
    auto d = OpenOrFail(&l.loop, f.path, false);
    bool closed = false;
    d->CloseWhenIdle([&] { closed = true; });
    CHECK_FALSE(closed);
    l.Run();
    CHECK(closed);
    CHECK(d->in_flight() == 0);
  }
  SECTION("destroying the disk from the last operation's callback is safe") {
    auto d = OpenOrFail(&l.loop, f.path, false);
    d->Write(0, xdisk::dmsg::ByteBuffer(512, 1), [&](Status s) {
      CHECK(s.ok());
      REQUIRE(d->in_flight() == 0);
      d.reset();
    });
    l.Run();
    CHECK(d == nullptr);
  }
  REQUIRE(l.Close() == 0);
}

TEST_CASE("A loop device works as a block-device export", "[local_disk]") {
  if (geteuid() != 0) {
    WARN("not root: skipping the loop-device test");
    return;
  }
  const uint64_t size = 8 * 1024 * 1024;
  for (int sector : {512, 4096}) {
    TempFile backing(size, 0xC3);
    LoopDevice ld(backing.path, sector);
    if (ld.dev.empty()) {
      WARN("losetup failed for sector size " << sector << ": skipping");
      continue;
    }
    INFO("device " << ld.dev << " sector " << sector);
    Loop l;
    {
      auto d = OpenOrFail(&l.loop, ld.dev, false);
      CHECK(d->is_block_device());
      CHECK(d->size() == size);
      CHECK(d->block_size() == static_cast<uint32_t>(sector));

      REQUIRE(WriteSync(l, *d, 8192, xdisk::dmsg::ByteBuffer(16384, 0x17)).ok());
      CHECK(AllEqual(ReadSync(l, *d, 8192, 16384), 0x17));
      CHECK(FlushSync(l, *d).ok());

      const blkcnt_t before = backing.Blocks();
      REQUIRE(TrimSync(l, *d, 1024 * 1024, 4 * 1024 * 1024).ok());
      CHECK(AllEqual(ReadSync(l, *d, 1024 * 1024, 4 * 1024 * 1024), 0));
      CHECK(AllEqual(ReadSync(l, *d, 0, 8192), 0xC3));
      CHECK(AllEqual(ReadSync(l, *d, 5 * 1024 * 1024, 1024 * 1024), 0xC3));
      if (backing.Blocks() >= before) {
        WARN("trim on " << ld.dev << " did not free blocks in the backing file");
      }

      // Unaligned trim: partial sectors are zeroed by hand.
      REQUIRE(TrimSync(l, *d, 100, 10000).ok());
      auto around = ReadSync(l, *d, 0, 16384);
      for (size_t i = 0; i < around.size(); ++i) {
        uint8_t want = (i >= 100 && i < 10100) ? 0 : (i >= 8192 ? 0x17 : 0xC3);
        if (around[i] != want) FAIL("byte " << i << " is " << int(around[i]));
      }

      RandomWorkload(l, *d, 2 * 1024 * 1024, 512, 3);
    }
    REQUIRE(l.Close() == 0);
  }
}

TEST_CASE("A file that shrank underneath reads as zeros past its new end, never stale memory",
          "[local_disk]") {
  // Read buffers are not zeroed on allocation (ByteBuffer): the bytes past
  // a short read's end must be filled explicitly, or whatever the heap held
  // would go to the peer. (meson runs tests with MALLOC_PERTURB_, so fresh
  // heap memory is not zero here.)
  TempFile f(1 << 20, 0x5A);
  Loop l;
  auto d = OpenOrFail(&l.loop, f.path, false);
  REQUIRE(truncate(f.path.c_str(), 512 * 1024) == 0);
  const uint64_t off = 512 * 1024 - 100;
  auto check = [&](const xdisk::dmsg::ByteBuffer& got) {
    REQUIRE(got.size() == 200 * 1024);
    for (size_t i = 0; i < 100; ++i) REQUIRE(got[i] == 0x5A);
    for (size_t i = 100; i < got.size(); ++i) REQUIRE(got[i] == 0);
  };
  check(ReadSync(l, *d, off, 200 * 1024));  // threadpool path
  xdisk::dmsg::ByteBuffer now;
  REQUIRE(d->ReadNow(off, 200 * 1024, &now).ok());  // loop-thread path
  check(now);
  d.reset();
  l.Run();
  CHECK(l.Close() == 0);
}
