#include "daemon/daemon.h"

#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>

#include "daemon/control_server.h"
#include "daemon/control_service.h"
#include "daemon/daemon_control.h"
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

namespace {

// The command line this process was started with. SIGHUP re-parses it (and
// with it the configuration file); reading it back from the kernel keeps
// main() and the Daemon's constructor as they are.
Result<std::vector<std::string>> OwnCommandLine() {
  FILE* f = fopen("/proc/self/cmdline", "re");
  if (f == nullptr) return Status::FromErrno(errno, "/proc/self/cmdline");
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  fclose(f);
  std::vector<std::string> args;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\0', start);
    if (end == std::string::npos) end = text.size();
    args.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  if (args.empty()) return Status::NotFound("/proc/self/cmdline is empty");
  return args;
}

// The mountpoint must be a directory: FUSE mounts over a regular file too,
// and the disk tree then answers stat(2) on it with EIO. Refused like any
// other bad argument (exit 2), before anything starts. A dead FUSE mount
// (ENOTCONN) is left to the start-up that deals with it.
Status CheckMountpoint(const std::string& path) {
  if (path.empty()) return Status::Ok();
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOTCONN) return Status::Ok();
    return Status::FromErrno(errno, "mountpoint " + path);
  }
  if (!S_ISDIR(st.st_mode))
    return Status::InvalidArgument("mountpoint " + path + ": not a directory");
  return Status::Ok();
}

// Without KEYS/remote every link is refused, one log line per attempt, and
// nothing says why the daemon is deaf: say it once, at start. (The policy
// reads the directory on every check, so creating it later is enough.)
void WarnIfNoKeys(const std::string& keys_dir) {
  const std::string remote = keys_dir + "/remote";
  struct stat st;
  if (stat(remote.c_str(), &st) != 0)
    XLOG(kWarning, "main",
         "keys directory %s: %s; every link is refused until it holds a file "
         "for the peer",
         remote.c_str(), strerror(errno));
  else if (!S_ISDIR(st.st_mode))
    XLOG(kWarning, "main", "keys directory %s is not a directory; every link is refused",
         remote.c_str());
}

}  // namespace

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
  std::string mount_real;  // realpath of the mountpoint, taken before mounting
  // Control socket and SIGHUP reload (StartControl). Destroyed after the
  // loop ran dry, before the modules they point at.
  std::unique_ptr<DaemonControl> daemon_control;
  std::unique_ptr<control::ControlService> control_service;
  std::unique_ptr<control::ControlServer> control_server;
  uv_signal_t sighup;
  bool sighup_open = false;
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
    if (control_server) control_server->Close();
    if (sighup_open) {
      sighup_open = false;
      uv_close(reinterpret_cast<uv_handle_t*>(&sighup), nullptr);
    }
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
    dc.sync = opts.sync == DaemonOptions::SyncMode::kJournal ? ImportedDisk::SyncMode::kJournal
                                                             : ImportedDisk::SyncMode::kRemote;
    JournalConfig jc;
    jc.dir = opts.JournalDir();
    jc.max_bytes = opts.journal_max;
    jc.segment_bytes = std::min<uint64_t>(jc.segment_bytes, opts.journal_max / 4);
    jc.strict = opts.journal_strict;
    jc.synced = opts.sync == DaemonOptions::SyncMode::kJournal;
    jc.deferred_writes = !jc.synced;
    // I/O waiting for a path: reconnect attempts at most
    // LinkTable::kHurryRetryMs apart until it has one.
    dc.on_waiting_for_path = [this] { table->Hurry(); };
    table->SetHurry([this] { return importer != nullptr && importer->AnyWaitingForPath(); });
    importer = std::make_unique<Importer>(&loop, tree.get(), dc, jc);
    if (Status st = importer->RecoverJournals(); !st.ok()) {
      XLOG(kError, "main", "--journal %s: %s", jc.dir.c_str(), st.ToString().c_str());
      return false;
    }
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
    // Safe only now: once mounted, resolving the path would ask ourselves.
    if (char* r = realpath(opts.mountpoint.c_str(), nullptr)) {
      mount_real = r;
      free(r);
    } else {
      XLOG(kWarning, "main", "realpath %s: %s; runtime exports are checked against it by name only",
           opts.mountpoint.c_str(), strerror(errno));
    }
    std::string err;
    if (fuse->Start(&err) != 0) {
      XLOG(kError, "main", "cannot mount %s: %s", opts.mountpoint.c_str(), err.c_str());
      fuse.reset();
      return false;
    }
    XLOG(kInfo, "main", "mounted at %s", opts.mountpoint.c_str());
    return true;
  }

  // After listen, exports and mount: the control API sees a started daemon.
  // A control socket that cannot be created is fatal when --control named
  // it; the default path is best effort (another daemon may hold it).
  void StartControl(const std::string& hostname) {
    if (stopping) return;
    DaemonControl::Parts parts;
    parts.loop = &loop;
    parts.table = table.get();
    parts.exporter = exporter.get();
    parts.importer = importer.get();
    parts.tree = tree.get();
    parts.mount_real = mount_real;
    daemon_control = std::make_unique<DaemonControl>(parts, opts, hostname);
    uv_signal_init(&loop, &sighup);
    sighup.data = this;
    uv_signal_start(&sighup, OnHangup, SIGHUP);
    sighup_open = true;
    if (opts.control_path == "none") return;
    const bool named = !opts.control_path.empty();
    const std::string path = named ? opts.control_path : control::kDefaultControlPath;
    control_service = std::make_unique<control::ControlService>(daemon_control.get());
    control_server = std::make_unique<control::ControlServer>(&loop, control_service.get());
    if (Status s = control_server->Start(path); !s.ok()) {
      if (named) {
        XLOG(kError, "main", "%s", s.message().c_str());
        Stop(1);
      } else {
        XLOG(kInfo, "main", "no control socket: %s", s.message().c_str());
      }
    }
  }

  static void OnHangup(uv_signal_t* h, int) { static_cast<Impl*>(h->data)->Reload(); }

  // SIGHUP: re-parse the command line (re-reading the configuration file)
  // and let DaemonControl apply what changed. Any error keeps the running
  // configuration.
  void Reload() {
    if (stopping || !daemon_control) return;
    auto args = OwnCommandLine();
    if (!args.ok()) {
      XLOG(kWarning, "reload", "%s; keeping the running configuration",
           args.status().message().c_str());
      return;
    }
    std::vector<const char*> argv;
    for (const std::string& a : *args) argv.push_back(a.c_str());
    DaemonOptions fresh;
    std::string out;
    auto parsed = ParseOptions(static_cast<int>(argv.size()), argv.data(), &fresh, &out);
    if (!parsed.ok()) {
      XLOG(kWarning, "reload", "%s; keeping the running configuration",
           parsed.status().message().c_str());
      return;
    }
    XLOG(kInfo, "reload", "SIGHUP: reloading exports and peers%s%s",
         fresh.config_file.empty() ? "" : " from ", fresh.config_file.c_str());
    if (Status s = daemon_control->Reload(fresh); !s.ok())
      XLOG(kWarning, "reload", "%s; keeping the running configuration", s.message().c_str());
  }

  int Usage(const std::string& msg) {
    fprintf(stderr, "xdisk-fuse: %s\n", msg.c_str());
    return 2;
  }

  int Run() {
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
    if (Status s = CheckMountpoint(opts.mountpoint); !s.ok()) return Usage(s.message());
    // The host uuid is the peer_id of our links and spans. A daemon with
    // no exports needs it too (exports may be added at runtime), but may
    // run without it if the state directory is not writable.
    dmsg::Uuid host_uuid{};
    {
      auto text = LoadOrCreateHostUuid(opts.state_dir);
      if (!text.ok()) {
        if (!resolved.empty()) {
          XLOG(kError, "main", "--state-dir %s: %s", opts.state_dir.c_str(),
               text.status().message().c_str());
          return 1;
        }
        XLOG(kInfo, "main", "--state-dir %s: %s; links carry no host uuid", opts.state_dir.c_str(),
             text.status().message().c_str());
      } else if (auto u = dmsg::UuidFromString(*text); u.ok()) {
        host_uuid = *u;
      }
    }

    // From here on every way out closes the loop (the checks above leave
    // nothing to close).
    uv_loop_init(&loop);
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
    StartControl(hostname);
    // After a failed start (Stop() ran) the table is shutting down.
    if (!stopping)
      for (const HostPort& hp : opts.connect) table->Connect(hp);

    if (!opts.listen.empty() || !opts.connect.empty()) WarnIfNoKeys(opts.keys_dir);
    XLOG(kInfo, "main", "running (keys %s)", opts.keys_dir.c_str());
    uv_run(&loop, UV_RUN_DEFAULT);
    control_server.reset();
    control_service.reset();
    daemon_control.reset();
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
