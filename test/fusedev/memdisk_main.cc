// xdisk-memdisk: mounts memory-backed disks through FuseServer, for the
// integration tests (test/integration/fusedev_memdisk.sh).
//
//   xdisk-memdisk MOUNTPOINT [--disk SERIAL,LABEL,UUID,SIZE_MIB]... [--async-ms N | --sync]
//                 [--block-size N] [--mode OCTAL] [--uid N] [--gid N] [-o OPT]... [--debug]
//
// Signals: SIGTERM/SIGINT stop the server (clean unmount, exit 0); SIGUSR1
// toggles disk 0 offline/online. Completions are deferred with a uv timer
// (--async-ms, default 0 = next loop iteration) so replies come after the
// FUSE handler returned, as with a remote disk; --sync completes inline.
#include <signal.h>
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fusedev/block_device.h"
#include "fusedev/disk_tree.h"
#include "fusedev/fuse_server.h"

namespace {

using xdisk::fusedev::BlockDevice;
using xdisk::fusedev::DiskInfo;
using xdisk::fusedev::DiskTree;
using xdisk::fusedev::FuseServer;
using xdisk::fusedev::LogLevel;

bool g_debug = false;

void Log(LogLevel level, const std::string& msg) {
  const char* l = level == LogLevel::kError     ? "error"
                  : level == LogLevel::kWarning ? "warning"
                  : level == LogLevel::kInfo    ? "info"
                                                : "debug";
  if (level == LogLevel::kDebug && !g_debug) return;
  fprintf(stderr, "xdisk-memdisk: %s: %s\n", l, msg.c_str());
}

// A deferred completion: one uv timer, freed in its close callback.
struct Deferred {
  uv_timer_t timer{};
  std::function<void()> fn;
  bool closing = false;

  static void Start(uv_loop_t* loop, uint64_t ms, std::function<void()> fn) {
    auto* d = new Deferred();
    d->fn = std::move(fn);
    uv_timer_init(loop, &d->timer);
    d->timer.data = d;
    uv_timer_start(&d->timer, &Deferred::Fire, ms, 0);
  }
  static void Fire(uv_timer_t* t) {
    auto* d = static_cast<Deferred*>(t->data);
    std::function<void()> fn = std::move(d->fn);
    d->closing = true;
    uv_close(reinterpret_cast<uv_handle_t*>(t), [](uv_handle_t* h) {
      auto* self = static_cast<Deferred*>(h->data);
      if (!self->closing) abort();
      delete self;
    });
    fn();
  }
};

class MemDisk : public BlockDevice {
 public:
  MemDisk(uv_loop_t* loop, std::string name, uint64_t bytes, uint32_t blksize, int async_ms)
      : loop_(loop), name_(std::move(name)), data_(bytes), blksize_(blksize), async_ms_(async_ms) {}

  uint64_t size() const override { return data_.size(); }
  uint32_t block_size() const override { return blksize_; }

  void Open(DoneFn done) override {
    Complete([this, done = std::move(done)] {
      opens_++;
      Log(LogLevel::kInfo, name_ + ": open (" + std::to_string(opens_) + ")");
      done(0);
    });
  }
  void Close() override {
    if (opens_ <= closes_) Log(LogLevel::kError, name_ + ": Close without Open");
    closes_++;
    Log(LogLevel::kInfo, name_ + ": close (" + std::to_string(closes_) + ")");
  }
  void Read(uint64_t offset, uint32_t length, ReadFn done) override {
    Complete([this, offset, length, done = std::move(done)] {
      if (!Check(offset, length)) return done(EIO, {});
      done(0, std::span<const uint8_t>(data_.data() + offset, length));
    });
  }
  void Write(uint64_t offset, std::span<const uint8_t> data, BufferHold, DoneFn done) override {
    Complete([this, offset, data, done = std::move(done)] {
      if (!Check(offset, data.size())) return done(EIO);
      memcpy(data_.data() + offset, data.data(), data.size());
      done(0);
    });
  }
  void Flush(DoneFn done) override {
    Complete([done = std::move(done)] { done(0); });
  }
  void Trim(uint64_t offset, uint64_t length, DoneFn done) override {
    Complete([this, offset, length, done = std::move(done)] {
      if (!Check(offset, length)) return done(EIO);
      memset(data_.data() + offset, 0, length);
      trims_++;
      Log(LogLevel::kInfo,
          name_ + ": trim " + std::to_string(offset) + "+" + std::to_string(length));
      done(0);
    });
  }

 private:
  // The FUSE layer promises in-range requests; a violation is a test failure.
  bool Check(uint64_t offset, uint64_t length) {
    if (offset + length <= data_.size() && offset + length >= offset) return true;
    Log(LogLevel::kError,
        name_ + ": out of range " + std::to_string(offset) + "+" + std::to_string(length));
    return false;
  }
  void Complete(std::function<void()> fn) {
    if (async_ms_ < 0) {
      fn();
    } else {
      Deferred::Start(loop_, static_cast<uint64_t>(async_ms_), std::move(fn));
    }
  }

  uv_loop_t* loop_;
  std::string name_;
  std::vector<uint8_t> data_;
  uint32_t blksize_;
  int async_ms_;
  int opens_ = 0, closes_ = 0;
  uint64_t trims_ = 0;
};

int Usage() {
  fprintf(stderr,
          "usage: xdisk-memdisk MOUNTPOINT [--disk SERIAL,LABEL,UUID,SIZE_MIB]...\n"
          "         [--async-ms N | --sync] [--block-size N] [--mode OCTAL] [--uid N] [--gid N]\n"
          "         [-o OPT]... [--debug]\n");
  return 2;
}

bool ParseDisk(const std::string& spec, DiskInfo* info) {
  std::vector<std::string> f;
  size_t start = 0;
  while (true) {
    size_t c = spec.find(',', start);
    f.push_back(spec.substr(start, c == std::string::npos ? std::string::npos : c - start));
    if (c == std::string::npos) break;
    start = c + 1;
  }
  if (f.size() != 4) return false;
  char* end = nullptr;
  unsigned long long mib = strtoull(f[3].c_str(), &end, 10);
  if (!end || *end || mib == 0) return false;
  info->serial = f[0];
  info->label = f[1];
  info->uuid = f[2];
  info->size = mib << 20;
  return true;
}

struct SignalBox {
  uv_signal_t sig{};
  std::function<void()> fn;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') return Usage();
  FuseServer::Options opts;
  opts.mountpoint = argv[1];
  xdisk::fusedev::TreeAttrs attrs;
  std::vector<DiskInfo> infos;
  int async_ms = 0;
  uint32_t blksize = 512;
  for (int i = 2; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--disk" && (v = next())) {
      DiskInfo info;
      if (!ParseDisk(v, &info)) return Usage();
      infos.push_back(info);
    } else if (a == "--async-ms" && (v = next())) {
      async_ms = atoi(v);
    } else if (a == "--sync") {
      async_ms = -1;
    } else if (a == "--block-size" && (v = next())) {
      blksize = static_cast<uint32_t>(atoi(v));
    } else if (a == "--mode" && (v = next())) {
      attrs.file_mode = static_cast<mode_t>(strtoul(v, nullptr, 8));
    } else if (a == "--uid" && (v = next())) {
      attrs.uid = static_cast<uid_t>(atoi(v));
    } else if (a == "--gid" && (v = next())) {
      attrs.gid = static_cast<gid_t>(atoi(v));
    } else if (a == "-o" && (v = next())) {
      opts.mount_options.push_back(v);
    } else if (a == "--debug") {
      g_debug = true;
      opts.debug = true;
    } else {
      return Usage();
    }
  }
  if (infos.empty()) infos.push_back({"MEM0", "memhost/md0", "", 64 << 20, 512});

  uv_loop_t loop;
  uv_loop_init(&loop);
  DiskTree tree(attrs);
  std::vector<std::unique_ptr<MemDisk>> disks;
  for (DiskInfo& info : infos) {
    info.blksize = blksize;
    disks.push_back(std::make_unique<MemDisk>(&loop, info.serial, info.size, blksize, async_ms));
    tree.AddOrUpdate(info, disks.back().get());
    Log(LogLevel::kInfo, "disk " + info.serial + " is " + tree.XaName(info.serial));
  }

  int exit_status = -1;
  std::vector<std::unique_ptr<SignalBox>> signals;
  auto server = std::make_unique<FuseServer>(&loop, &tree, opts, Log, [&](int status) {
    exit_status = status;
    Log(LogLevel::kInfo, "server stopped, status " + std::to_string(status));
    // Closing the signal handles lets uv_run return.
    for (auto& s : signals) uv_close(reinterpret_cast<uv_handle_t*>(&s->sig), nullptr);
  });

  auto on_signal = [&](int signum, std::function<void()> fn) {
    auto box = std::make_unique<SignalBox>();
    box->fn = std::move(fn);
    uv_signal_init(&loop, &box->sig);
    box->sig.data = box.get();
    uv_signal_start(
        &box->sig, [](uv_signal_t* s, int) { static_cast<SignalBox*>(s->data)->fn(); }, signum);
    signals.push_back(std::move(box));
  };
  on_signal(SIGTERM, [&] {
    Log(LogLevel::kInfo, "SIGTERM: stopping");
    server->Stop();
  });
  on_signal(SIGINT, [&] {
    Log(LogLevel::kInfo, "SIGINT: stopping");
    server->Stop();
  });
  on_signal(SIGUSR1, [&] {
    const std::string& serial = infos[0].serial;
    bool online = !tree.IsOnline(tree.InoOf(serial));
    tree.SetOnline(serial, online);
    Log(LogLevel::kInfo, "disk " + serial + (online ? " online" : " offline"));
  });

  std::string err;
  if (int r = server->Start(&err); r != 0) {
    Log(LogLevel::kError, "start failed: " + err + " (" + strerror(r) + ")");
    server.reset();
    for (auto& s : signals) uv_close(reinterpret_cast<uv_handle_t*>(&s->sig), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return 1;
  }
  Log(LogLevel::kInfo, "ready");
  uv_run(&loop, UV_RUN_DEFAULT);
  server.reset();
  uv_run(&loop, UV_RUN_DEFAULT);
  if (int r = uv_loop_close(&loop); r != 0) {
    Log(LogLevel::kError, std::string("uv_loop_close: ") + uv_strerror(r));
    return 1;
  }
  return exit_status == 0 ? 0 : 1;
}
