#include "daemon/daemon.h"

#include <unistd.h>

#include <csignal>
#include <cstring>

#include "daemon/export_identity.h"
#include "daemon/exporter.h"
#include "daemon/importer.h"
#include "daemon/link_table.h"
#include "daemon/log.h"
#include "daemon/peer_policy.h"
#include "daemon/span_registry.h"
#include "fusedev/disk_tree.h"
#include "fusedev/fuse_server.h"

namespace xdisk {

struct Daemon::Impl {
  explicit Impl(DaemonOptions o) : opts(std::move(o)), policy(opts.keys_dir) {}

  DaemonOptions opts;
  uv_loop_t loop;
  uv_signal_t sigint, sigterm;
  PeerPolicy policy;
  SpanRegistry registry;
  std::unique_ptr<LinkTable> table;
  std::unique_ptr<Exporter> exporter;
  std::unique_ptr<fusedev::DiskTree> tree;
  std::unique_ptr<Importer> importer;
  std::unique_ptr<fusedev::FuseServer> fuse;
  bool stopping = false;
  int exit_code = 0;

  static void OnSignal(uv_signal_t* h, int signum) {
    auto* self = static_cast<Impl*>(h->data);
    XLOG(kInfo, "main", "%s: shutting down", strsignal(signum));
    self->Stop(0);
  }

  void Stop(int code) {
    if (stopping) return;
    stopping = true;
    exit_code = code;
    // Blocked I/O fails now (the FUSE server waits for every request handed
    // to a disk), then the mount goes. Withdraw what we advertised before the
    // links go, so peers see a clean DELETE rather than a lost link.
    if (importer) importer->Shutdown();
    if (fuse) fuse->Stop();
    registry.RemoveAllLocalSpans();
    table->Shutdown([this] {
      uv_close(reinterpret_cast<uv_handle_t*>(&sigint), nullptr);
      uv_close(reinterpret_cast<uv_handle_t*>(&sigterm), nullptr);
    });
  }

  bool StartImport() {
    fusedev::TreeAttrs attrs;
    attrs.file_mode = opts.file_mode;
    tree = std::make_unique<fusedev::DiskTree>(attrs);
    ImportedDisk::Config dc;
    dc.io_timeout_ms = opts.io_timeout_s * 1000;
    importer = std::make_unique<Importer>(&loop, tree.get(), dc);
    registry.AddObserver(importer.get());
    fusedev::FuseServer::Options fo;
    fo.mountpoint = opts.mountpoint;
    fo.mount_options = opts.fuse_options;
    auto log = [](fusedev::LogLevel level, const std::string& msg) {
      static const LogLevel kMap[] = {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarning,
                                      LogLevel::kError};
      LogLevel l = kMap[static_cast<int>(level)];
      if (LogEnabled(l)) Log(l, "fuse", "%s", msg.c_str());
    };
    fuse = std::make_unique<fusedev::FuseServer>(&loop, tree.get(), fo, log, [this](int status) {
      // The mount went away (Stop, or fusermount3 -u from outside).
      if (status != 0) XLOG(kError, "fuse", "session ended: %s", strerror(status));
      Stop(status == 0 ? 0 : 1);
    });
    std::string err;
    if (fuse->Start(&err) != 0) {
      XLOG(kError, "main", "cannot mount %s: %s", opts.mountpoint.c_str(), err.c_str());
      fuse.reset();
      return false;
    }
    XLOG(kInfo, "main", "mounted at %s", opts.mountpoint.c_str());
    return true;
  }

  int Usage(const std::string& msg) {
    fprintf(stderr, "xdisk-fuse: %s\n", msg.c_str());
    return 2;
  }

  int Run() {
    uv_loop_init(&loop);
    std::string hostname = opts.hostname;
    if (hostname.empty()) {
      char buf[256] = {};
      gethostname(buf, sizeof buf - 1);
      hostname = buf;
    }
    // Exports are resolved before anything listens: a bad one is a bad
    // option (exit 2), and nothing half-started is left behind.
    std::vector<ResolvedExport> resolved;
    for (const std::string& arg : opts.exports) {
      auto spec = ParseExportSpec(arg);
      if (!spec.ok()) return Usage("--export " + arg + ": " + spec.status().message());
      auto res = ResolveExport(*spec, opts.state_dir, hostname);
      if (!res.ok()) return Usage("--export " + arg + ": " + res.status().message());
      resolved.push_back(*res);
    }
    if (Status s = CheckUniqueSerials(resolved); !s.ok()) return Usage("--export: " + s.message());
    dmsg::Uuid host_uuid{};
    if (!resolved.empty()) {
      auto text = LoadOrCreateHostUuid(opts.state_dir);
      if (!text.ok()) {
        XLOG(kError, "main", "--state-dir %s: %s", opts.state_dir.c_str(),
             text.status().message().c_str());
        return 1;
      }
      auto u = dmsg::UuidFromString(*text);
      if (u.ok()) host_uuid = *u;
    }

    LinkConfig config;
    config.label = hostname + "/xdisk-fuse";
    config.peer_id = host_uuid;
    config.ping_interval_ms = opts.ping_interval_ms;
    config.dead_timeout_ms = opts.link_timeout_ms;
    table = std::make_unique<LinkTable>(&loop, config, &policy, &registry);

    for (const HostPort& hp : opts.listen) {
      Status s = table->Listen(hp);
      if (!s.ok()) {
        XLOG(kError, "main", "%s", s.message().c_str());
        exit_code = 1;
        table->Shutdown([] {});
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        return exit_code;
      }
    }
    uv_signal_init(&loop, &sigint);
    uv_signal_init(&loop, &sigterm);
    sigint.data = sigterm.data = this;
    uv_signal_start(&sigint, OnSignal, SIGINT);
    uv_signal_start(&sigterm, OnSignal, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    exporter = std::make_unique<Exporter>(&loop, &registry, host_uuid);
    for (const ResolvedExport& r : resolved) {
      if (Status s = exporter->Add(r); !s.ok()) {
        XLOG(kError, "main", "--export %s: %s", r.path.c_str(), s.message().c_str());
        exit_code = 2;
        Stop(2);
        break;
      }
    }
    if (!opts.mountpoint.empty() && exit_code == 0) {
      if (!StartImport()) {
        exit_code = 1;
        Stop(1);
      }
    }
    for (const HostPort& hp : opts.connect) table->Connect(hp);

    XLOG(kInfo, "main", "running (keys %s)", opts.keys_dir.c_str());
    uv_run(&loop, UV_RUN_DEFAULT);
    fuse.reset();
    exporter.reset();
    table.reset();
    importer.reset();
    tree.reset();
    int rc = uv_loop_close(&loop);
    if (rc != 0) XLOG(kWarning, "main", "loop closed with handles open: %s", uv_strerror(rc));
    XLOG(kInfo, "main", "exit %d", exit_code);
    return exit_code;
  }
};

Daemon::Daemon(DaemonOptions opts) : impl_(std::make_unique<Impl>(std::move(opts))) {}
Daemon::~Daemon() = default;
int Daemon::Run() { return impl_->Run(); }

}  // namespace xdisk
