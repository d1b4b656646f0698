#include "daemon/daemon.h"

#include <fcntl.h>
#include <libgen.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>

#include "daemon/base/log.h"
#include "daemon/base/split.h"
#include "daemon/base/uv_handle.h"
#include "daemon/control/control_server.h"
#include "daemon/control/control_service.h"
#include "daemon/daemon_control.h"
#include "daemon/export/export_identity.h"
#include "daemon/export/exporter.h"
#include "daemon/import/fd_store.h"
#include "daemon/import/importer.h"
#include "daemon/import/keeper.h"
#include "daemon/import/mount_state.h"
#include "daemon/import/own_mount.h"
#include "daemon/link/link_table.h"
#include "daemon/link/peer_policy.h"
#include "daemon/link/relay.h"
#include "daemon/link/span_registry.h"
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
  for (std::string_view arg : SplitOn(text, '\0')) args.emplace_back(arg);
  if (args.empty()) return Status::NotFound("/proc/self/cmdline is empty");
  return args;
}

std::string SelfExe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return {};
  std::string p(buf, static_cast<size_t>(n));
  // A binary replaced since we started shows as "PATH (deleted)": the new
  // one is at PATH.
  if (p.ends_with(" (deleted)")) p.resize(p.size() - 10);
  return p;
}

// realpath(3) of the mountpoint without touching the mountpoint itself: once
// something is mounted there, only this daemon could answer for it.
std::string MountRealPath(const std::string& mountpoint) {
  std::string lex = LexicalAbsolute(mountpoint);
  if (lex == "/") return lex;
  std::string dir = lex.substr(0, lex.rfind('/'));
  if (dir.empty()) dir = "/";
  char* r = realpath(dir.c_str(), nullptr);
  if (r == nullptr) return lex;
  std::string out = r;
  free(r);
  return (out == "/" ? "" : out) + lex.substr(lex.rfind('/'));
}

// A FUSE mount whose server died without a keeper answers ENOTCONN; nothing
// can be mounted over it until it is gone. Ours or not, it serves nobody.
void ClearDeadMount(const std::string& mnt) {
  auto top = MountAt(ReadMountInfo(), mnt);
  if (!top || !top->fstype.starts_with("fuse")) return;
  // statfs, not stat: the kernel may answer stat from its attribute cache
  // even on a dead connection, but always asks the server for statfs.
  struct statfs sf;
  if (statfs(mnt.c_str(), &sf) == 0 || errno != ENOTCONN) return;
  if (umount2(mnt.c_str(), MNT_DETACH) == 0) {
    XLOG(kInfo, "main", "took away the dead FUSE mount at %s (its daemon died)", mnt.c_str());
  } else {
    XLOG(kWarning, "main", "cannot take away the dead FUSE mount at %s: %s", mnt.c_str(),
         strerror(errno));
  }
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
  UvHandle<uv_signal_t> sigint, sigterm;
  PeerPolicy policy;
  SpanRegistry registry;
  // Declared before the table: it must outlive every link (daemon/link/relay.h).
  std::unique_ptr<Relay> relay;  // null with --no-relay
  std::unique_ptr<LinkTable> table;
  std::unique_ptr<Exporter> exporter;
  std::unique_ptr<fusedev::DiskTree> tree;
  std::unique_ptr<Importer> importer;
  std::unique_ptr<fusedev::FuseServer> fuse;
  std::string mount_real;  // realpath of the mountpoint, taken before mounting
  // Surviving restarts (fusedev/fuse_server.h, ADOPTION): the keeper or
  // systemd's fd store holds the mount while no daemon runs; adopt_fd is the
  // descriptor of a live mount handed to this process to take over.
  std::unique_ptr<KeeperLink> keeper;
  bool fd_store = false;
  // This mount was served by a daemon: by us (READY sent) or, adopted, by
  // a predecessor. Only then may a failure leave it to a keeper or the fd
  // store; a first start that fails takes its mount away.
  bool mount_served = false;
  int adopt_fd = -1;
  std::string self_exe;  // what a live restart executes
  std::string state_path;
  MountState mount_state;
  bool state_warned = false, resend_noted = false;
  bool restarting = false;
  bool exit_after_detach = false;  // restart by the service manager: no exec
  bool stop_after_detach = false;  // a stop came during a live restart
  UvHandle<uv_timer_t> restart_timer;
  // Control socket and SIGHUP reload (StartControl). Destroyed after the
  // loop ran dry, before the modules they point at.
  std::unique_ptr<DaemonControl> daemon_control;
  std::unique_ptr<control::ControlService> control_service;
  std::unique_ptr<control::ControlServer> control_server;
  UvHandle<uv_signal_t> sighup;
  bool stopping = false;
  int exit_code = 0;

  static void OnSignal(uv_signal_t* h, int signum) {
    auto* self = static_cast<Impl*>(h->data);
    // A stop wins over a live restart that has begun: the daemon stops and
    // unmounts instead of re-executing.
    if (self->restarting && !self->exit_after_detach) {
      XLOG(kInfo, "main", "%s during a restart: stopping instead", strsignal(signum));
      if (self->stopping) {
        self->stop_after_detach = true;
      } else {
        self->restarting = false;
        self->Stop(0);
      }
      return;
    }
    // Under systemd, the SIGTERM of `systemctl restart` is not a stop: the
    // mount stays, its descriptor in the fd store, for the next daemon.
    if (signum == SIGTERM && self->fd_store && self->fuse && !self->stopping &&
        ServiceRestartPending()) {
      XLOG(kInfo, "main", "SIGTERM of a service restart: leaving the mount to the next daemon");
      self->restarting = true;
      self->exit_after_detach = true;
      self->Stop(0);
      return;
    }
    XLOG(kInfo, "main", "%s: shutting down", strsignal(signum));
    self->Stop(0);
  }

  // Something outside this process keeps the mount's /dev/fuse descriptor
  // for a daemon that served it.
  bool MountHeld() const { return mount_served && ((keeper && keeper->alive()) || fd_store); }

  void Stop(int code) {
    if (stopping) return;
    stopping = true;
    exit_code = code;
    if (restart_timer.is_open()) uv_timer_stop(restart_timer.get());
    if (!restarting && code == 0) {
      // A clean stop: the mount goes with us, nobody is to hold it or start
      // us again. A failure (code != 0) leaves the keeper to decide.
      if (keeper) keeper->SendStop();
      if (fd_store) RemoveStoredFd(kFuseFdName);
      NotifyStopping();
    }
    if (control_server) control_server->Close();
    sighup.Close();
    // A restart detaches first, so that what the importer's shutdown fails
    // below is left to the kernel to resend to the next daemon. So does a
    // failure of the daemon while the mount is held for it (keeper or fd
    // store): whoever holds it decides whether another daemon takes it
    // over or it goes. (A FUSE session that failed has already lost its
    // mount: the FUSE server took it away.) A
    // stop fails blocked I/O now (the FUSE server waits for every request
    // handed to a disk), then the mount goes. Withdraw what we advertised
    // before the links go, so peers see a clean DELETE rather than a lost
    // link.
    const bool leave_mount = restarting || (code != 0 && MountHeld());
    if (fuse && leave_mount) fuse->Detach();
    if (importer) importer->Shutdown();
    if (fuse && !leave_mount) fuse->Stop();
    if (relay) relay->Shutdown();
    registry.RemoveAllLocalSpans();
    table->Shutdown([this] {
      sigint.Close();
      sigterm.Close();
      restart_timer.Close();
      if (keeper) keeper->Close();
    });
  }

  // xdiskctl restart: answered first (the control reply needs a loop turn
  // or two), then the orderly stop without unmount, then Run() re-executes.
  Status BeginRestart() {
    if (stopping) return Status::Unavailable("the daemon is shutting down");
    if (self_exe.empty() || access(self_exe.c_str(), X_OK) != 0)
      return Status::Unavailable("cannot find this daemon's binary to execute (" + self_exe + ")");
    if (restarting) return Status::Ok();
    restarting = true;
    XLOG(kInfo, "main", "restart requested: re-executing %s", self_exe.c_str());
    uv_timer_start(
        restart_timer.get(), [](uv_timer_t* t) { static_cast<Impl*>(t->data)->Stop(0); }, 100, 0);
    return Status::Ok();
  }

  // Runs after the loop ended for a restart; returns only on failure.
  int ReExec(int fuse_fd) {
    auto args = OwnCommandLine();
    if (!args.ok()) {
      XLOG(kError, "main", "restart: %s", args.status().message().c_str());
      return 1;
    }
    if (fuse_fd >= 0) {
      fcntl(fuse_fd, F_SETFD, 0);
      setenv(kEnvFuseFd, std::to_string(fuse_fd).c_str(), 1);
    }
    if (keeper && keeper->alive()) {
      int kfd = keeper->TakeFd();
      fcntl(kfd, F_SETFD, 0);
      setenv(kEnvKeeperFd, std::to_string(kfd).c_str(), 1);
      setenv(kEnvKeeperPid, std::to_string(keeper->keeper_pid()).c_str(), 1);
    }
    std::vector<char*> argv;
    for (std::string& a : *args) argv.push_back(a.data());
    argv.push_back(nullptr);
    fflush(stderr);
    // Until the new image's main() ignores it, a SIGHUP (a reload) would
    // kill it: handlers do not survive exec, ignored signals do.
    signal(SIGHUP, SIG_IGN);
    execv(self_exe.c_str(), argv.data());
    XLOG(kError, "main", "restart: exec %s: %s", self_exe.c_str(), strerror(errno));
    return 1;
  }

  // Persists what a restarted daemon needs (daemon/import/mount_state.h). Runs on
  // every change of the tree's identity and of the FUSE session's state.
  void SaveState() {
    // Once stopping, the FUSE server's handles are being torn down: what a
    // next daemon needs was saved before.
    if (!tree || !fuse || stopping) return;
    mount_state.identity = tree->identity();
    fusedev::FuseServer::SessionState ss = fuse->session_state();
    if (!ss.init_request.empty()) mount_state.init_request = ss.init_request;
    mount_state.handles = ss.handles;
    if (Status s = SaveMountState(state_path, mount_state); !s.ok() && !state_warned) {
      state_warned = true;
      XLOG(kWarning, "main", "%s: a restarted daemon cannot take this mount over",
           s.message().c_str());
    }
    if (!mount_state.init_request.empty() && !resend_noted) {
      resend_noted = true;
      NoteProtection();
    }
  }

  // Said once, when the kernel's capabilities are known: what a crash of
  // this daemon would cost.
  void NoteProtection() {
    if (!fuse->resend_supported()) {
      XLOG(kWarning, "main",
           "this kernel cannot resend FUSE requests (FUSE_NOTIFY_RESEND, Linux 6.9+): a crash of "
           "this daemon fails the requests it had read");
    } else if (!keeper && !fd_store) {
      XLOG(kInfo, "main", "no keeper (--no-keeper): a crash of this daemon ends the mount");
    }
  }

  bool StartImport() {
    // Safe only before mounting (or adopting): afterwards, resolving the
    // mountpoint itself would ask ourselves.
    mount_real = MountRealPath(opts.mountpoint);
    state_path = MountStatePath(opts.state_dir, mount_real);
    auto loaded = LoadMountState(state_path);
    if (loaded.ok()) {
      mount_state = std::move(*loaded);
    } else if (loaded.status().kind() != Status::Kind::kNotFound) {
      XLOG(kWarning, "main", "%s; inode numbers and xaN names start afresh",
           loaded.status().message().c_str());
    }
    if (adopt_fd >= 0) {
      auto top = MountAt(ReadMountInfo(), mount_real);
      std::string why = !loaded.ok()                        ? loaded.status().message()
                        : mount_state.init_request.empty()  ? "its FUSE_INIT was never saved"
                        : !top                              ? "nothing is mounted there"
                        : top->dev != mount_state.mount_dev ? "the saved state is of another mount"
                                                            : "";
      if (!why.empty()) {
        XLOG(kError, "main", "cannot take over the mount at %s: %s", mount_real.c_str(),
             why.c_str());
        close(adopt_fd);
        adopt_fd = -1;
        return false;
      }
    } else {
      mount_state.init_request.clear();
      mount_state.handles.clear();
      mount_state.mount_dev.clear();
      ClearDeadMount(mount_real);
    }
    mount_state.mountpoint = mount_real;
    fusedev::TreeAttrs attrs;
    attrs.file_mode = opts.file_mode;
    tree = std::make_unique<fusedev::DiskTree>(attrs);
    if (!mount_state.identity.disks.empty() && !tree->Restore(mount_state.identity)) {
      if (adopt_fd >= 0) {
        // The kernel holds the old numbers: fresh ones could send one
        // disk's I/O to another.
        XLOG(kError, "main",
             "cannot take over the mount at %s: %s holds an inconsistent "
             "inode table",
             mount_real.c_str(), state_path.c_str());
        close(adopt_fd);
        adopt_fd = -1;
        return false;
      }
      XLOG(kWarning, "main", "%s: the saved inode table is inconsistent; numbers start afresh",
           state_path.c_str());
      mount_state.handles.clear();
    }
    ImportedDisk::Config dc;
    dc.io_timeout_ms = opts.io_timeout_s * 1000;
    dc.sync = opts.sync;
    JournalConfig jc;
    jc.dir = opts.JournalDir();
    jc.max_bytes = opts.journal_max;
    jc.segment_bytes = std::min<uint64_t>(jc.segment_bytes, opts.journal_max / 4);
    jc.strict = opts.journal_strict;
    jc.synced = opts.sync == SyncMode::kJournal;
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
    if (adopt_fd >= 0) {
      // The disks that were listed, or that the kernel holds open, come
      // back before their remotes.
      std::vector<fusedev::DiskInfo> restored;
      for (const auto& d : mount_state.identity.disks)
        if (d.visible || mount_state.handles.count(d.ino)) restored.push_back(d.info);
      importer->RestoreDisks(restored);
    }
    fusedev::FuseServer::Options fo;
    fo.mountpoint = opts.mountpoint;
    fo.mount_options = opts.fuse_options;
    fo.adopt_fd = adopt_fd;
    fo.init_request = mount_state.init_request;
    fo.restored_handles = mount_state.handles;
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
    const bool adopting = adopt_fd >= 0;
    adopt_fd = -1;  // the server owns it now
    if (fuse->Start(&err) != 0) {
      XLOG(kError, "main", "cannot %s %s: %s", adopting ? "take over the mount at" : "mount",
           opts.mountpoint.c_str(), err.c_str());
      fuse.reset();
      return false;
    }
    if (adopting) {
      mount_state.restarts++;
      XLOG(kInfo, "main", "took over the mount at %s (restart %u)", opts.mountpoint.c_str(),
           mount_state.restarts);
    } else {
      auto top = MountAt(ReadMountInfo(), mount_real);
      mount_state.mount_dev = top ? top->dev : "";
      XLOG(kInfo, "main", "mounted at %s", opts.mountpoint.c_str());
      // Whoever outlives us holds a copy of the mount from now on.
      if (keeper) {
        if (Status s = keeper->SendFuseFd(fuse->fd()); !s.ok())
          XLOG(kWarning, "main", "keeper: %s", s.message().c_str());
      } else if (fd_store) {
        if (Status s = StoreFd(fuse->fd(), kFuseFdName); !s.ok()) {
          XLOG(kWarning, "main", "%s: a crash of this daemon ends the mount", s.message().c_str());
          fd_store = false;
        }
      }
    }
    fuse->SetStateHook([this] { SaveState(); });
    tree->SetIdentityHook([this] { SaveState(); });
    SaveState();
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
    parts.relay = relay.get();
    parts.mount_real = mount_real;
    parts.describe_survival = [this](control::DaemonInfo* d) {
      if (!fuse) return;
      d->set_protection(keeper && keeper->alive() ? "keeper" : fd_store ? "systemd" : "none");
      d->set_keeper_pid(static_cast<uint32_t>(keeper ? keeper->keeper_pid() : 0));
      d->set_restarts(mount_state.restarts);
      d->set_resend(fuse->resend_supported());
    };
    parts.restart = [this] { return BeginRestart(); };
    daemon_control = std::make_unique<DaemonControl>(parts, opts, hostname);
    sighup.Open(uv_signal_init, &loop);
    sighup.get()->data = this;
    uv_signal_start(sighup.get(), OnHangup, SIGHUP);
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
    if (Status s = CheckInheritedDescriptors(); !s.ok()) return Usage(s.message());
    // A mount handed over to be taken over (keeper, re-exec, systemd) is
    // ours to serve: stat(2) on it would wait for this very process.
    const bool handed_a_mount = getenv(kEnvFuseFd) != nullptr || getenv("LISTEN_FDS") != nullptr;
    if (!handed_a_mount) {
      if (Status s = CheckMountpoint(opts.mountpoint); !s.ok()) return Usage(s.message());
    }
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
    restart_timer.Open(uv_timer_init, &loop);
    restart_timer.get()->data = this;
    self_exe = SelfExe();
    // A mount to take over: from a keeper or a re-executing predecessor
    // (XDISK_FUSE_FD), or from systemd's fd store.
    keeper = KeeperLink::FromEnvironment(&loop, nullptr);
    adopt_fd = TakeFdFromEnvironment(kEnvFuseFd);
    fd_store = UnderServiceManager() && !keeper;
    if (adopt_fd < 0 && fd_store) adopt_fd = TakeStoredFd(kFuseFdName);
    mount_served = adopt_fd >= 0;
    if (adopt_fd >= 0 && opts.mountpoint.empty()) {
      close(adopt_fd);
      adopt_fd = -1;
    }
    LinkConfig config;
    config.label = hostname + "/xdisk-fuse";
    config.peer_id = host_uuid;
    config.ping_interval_ms = opts.ping_interval_ms;
    config.dead_timeout_ms = opts.link_timeout_ms;
    if (!opts.no_relay) {
      relay = std::make_unique<Relay>(&loop, Relay::RandomRnss());
      registry.SetRelay(relay.get());
    }
    table = std::make_unique<LinkTable>(&loop, config, &policy, &registry);

    for (const HostPort& hp : opts.listen) {
      Status s = table->Listen(hp);
      if (!s.ok()) {
        XLOG(kError, "main", "%s", s.message().c_str());
        exit_code = 1;
        restart_timer.Close();
        if (keeper) keeper->Close();
        if (adopt_fd >= 0) close(adopt_fd);
        table->Shutdown([] {});
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        return exit_code;
      }
    }
    sigint.Open(uv_signal_init, &loop);
    sigterm.Open(uv_signal_init, &loop);
    sigint.get()->data = sigterm.get()->data = this;
    uv_signal_start(sigint.get(), OnSignal, SIGINT);
    uv_signal_start(sigterm.get(), OnSignal, SIGTERM);
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
    if (!stopping) {
      XLOG(kInfo, "main", "running (keys %s)", opts.keys_dir.c_str());
      if (keeper) keeper->SendReady();
      NotifyReady();
      mount_served = true;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    const int detached_fd = fuse ? fuse->detached_fd() : -1;
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
    if (restarting && stop_after_detach) {
      // The mount was detached for the restart; the stop takes it away.
      if (!opts.mountpoint.empty() && umount2(mount_real.c_str(), MNT_DETACH) != 0)
        XLOG(kWarning, "main", "umount %s: %s", mount_real.c_str(), strerror(errno));
      if (keeper) keeper->SendStop();
      if (fd_store) RemoveStoredFd(kFuseFdName);
      if (detached_fd >= 0) close(detached_fd);
      XLOG(kInfo, "main", "exit %d", exit_code);
      return exit_code;
    }
    if (restarting && !exit_after_detach) return ReExec(detached_fd);
    if (detached_fd >= 0) close(detached_fd);
    XLOG(kInfo, "main", "exit %d", exit_code);
    return exit_code;
  }
};

Daemon::Daemon(DaemonOptions opts) : impl_(std::make_unique<Impl>(std::move(opts))) {}
Daemon::~Daemon() = default;
int Daemon::Run() { return impl_->Run(); }

}  // namespace xdisk
