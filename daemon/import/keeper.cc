#include "daemon/import/keeper.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>

#include "daemon/base/log.h"

extern char** environ;

namespace xdisk {

namespace {

volatile sig_atomic_t g_child = 0;
volatile sig_atomic_t g_stop = 0;

void OnKeeperSignal(int sig) {
  if (sig != SIGHUP) g_stop = 1;
  pid_t child = g_child;
  if (child > 0) kill(child, sig);
}

std::string SelfPath() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "/proc/self/exe";
  std::string p(buf, static_cast<size_t>(n));
  // Replaced since it started: the path now names the new binary.
  if (p.ends_with(" (deleted)")) p.resize(p.size() - 10);
  return p;
}

std::string Describe(int status) {
  if (WIFSIGNALED(status))
    return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + ")";
  return "exit status " + std::to_string(WEXITSTATUS(status));
}

int ExitCode(int status) {
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

// Starts the daemon: `sock` and `fuse_fd` (if >= 0) are inherited under the
// numbers the environment names. Everything the child needs is prepared
// before fork: between fork and exec only async-signal-safe calls are made.
pid_t Spawn(const std::string& exe, const std::vector<std::string>& argv, int sock, int fuse_fd) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; e++) {
    std::string_view v(*e);
    if (v.starts_with(std::string(kEnvKeeperFd) + "=") ||
        v.starts_with(std::string(kEnvKeeperPid) + "=") ||
        v.starts_with(std::string(kEnvFuseFd) + "="))
      continue;
    env.emplace_back(v);
  }
  env.push_back(std::string(kEnvKeeperFd) + "=" + std::to_string(sock));
  env.push_back(std::string(kEnvKeeperPid) + "=" + std::to_string(getpid()));
  if (fuse_fd >= 0) env.push_back(std::string(kEnvFuseFd) + "=" + std::to_string(fuse_fd));
  std::vector<char*> envp, args;
  for (std::string& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (std::string& s : argv_copy) args.push_back(s.data());
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid != 0) return pid;
  fcntl(sock, F_SETFD, 0);
  if (fuse_fd >= 0) fcntl(fuse_fd, F_SETFD, 0);
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  // Ignored until the daemon's main() installs its reload: a forwarded
  // SIGHUP would otherwise kill it at its very start.
  signal(SIGHUP, SIG_IGN);
  execve(exe.c_str(), args.data(), envp.data());
  _exit(127);
}

// Reads the daemon's messages until its end of the socket closes.
void Listen(int sock, int* fuse_fd, bool* ready, bool* stopped) {
  while (true) {
    struct pollfd p {};
    p.fd = sock;
    p.events = POLLIN;
    if (poll(&p, 1, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    char buf[32];
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov {
      buf, sizeof buf
    };
    struct msghdr msg {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return;  // the daemon is gone (or about to be)
    std::string_view what(buf, static_cast<size_t>(n));
    int passed = -1;
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
        memcpy(&passed, CMSG_DATA(c), sizeof passed);
    if (what == "fuse" && passed >= 0 && *fuse_fd < 0) {
      *fuse_fd = passed;
      passed = -1;
    } else if (what == "ready") {
      *ready = true;
    } else if (what == "stop") {
      *stopped = true;
    }
    if (passed >= 0) close(passed);
  }
}

// Drops the mount the keeper holds: lazily unmounted (unless the daemon
// did that itself in a clean stop: what is at the path now may be another
// mount), and with the last descriptor closed the kernel fails what waits
// (ENOTCONN).
void Release(int* fuse_fd, const std::string& mountpoint, bool unmount = true) {
  if (*fuse_fd < 0) return;
  if (unmount && umount2(mountpoint.c_str(), MNT_DETACH) == 0)
    XLOG(kInfo, "keeper", "unmounted %s", mountpoint.c_str());
  close(*fuse_fd);
  *fuse_fd = -1;
}

}  // namespace

int RunKeeper(const std::vector<std::string>& argv, const std::string& mountpoint) {
  prctl(PR_SET_NAME, "xdisk-keeper", 0, 0, 0);
  const std::string exe = SelfPath();
  struct sigaction sa {};
  sa.sa_handler = OnKeeperSignal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaction(sig, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  int fuse_fd = -1;
  bool ever_ready = false;
  int failed_starts = 0;
  unsigned restarts = 0;
  std::deque<time_t> recent;  // restart times (monotonic seconds)
  while (true) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
      XLOG(kError, "keeper", "socketpair: %s", strerror(errno));
      Release(&fuse_fd, mountpoint);
      return 1;
    }
    pid_t pid = Spawn(exe, argv, sv[1], fuse_fd);
    close(sv[1]);
    if (pid < 0) {
      XLOG(kError, "keeper", "fork: %s", strerror(errno));
      close(sv[0]);
      Release(&fuse_fd, mountpoint);
      return 1;
    }
    g_child = pid;
    if (g_stop) kill(pid, SIGTERM);  // a stop that came between two daemons
    bool ready = false, stopped = false;
    Listen(sv[0], &fuse_fd, &ready, &stopped);
    close(sv[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    g_child = 0;
    ever_ready = ever_ready || ready;
    const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (stopped || clean || g_stop || !ever_ready) {
      // A clean stop unmounted already; anything else leaves the mount to
      // us, and nobody will serve it again.
      if (!stopped && fuse_fd >= 0)
        XLOG(kInfo, "keeper", "daemon pid %d: %s; not starting it again", pid,
             Describe(status).c_str());
      Release(&fuse_fd, mountpoint, !stopped);
      return ExitCode(status);
    }
    failed_starts = ready ? 0 : failed_starts + 1;
    // A daemon that serves and dies again and again (a request that crashes
    // every daemon it reaches, resent to each) would be restarted forever:
    // more than kMaxRestartsPerMinute in the last minute end it like
    // failed starts do.
    struct timespec now {};
    clock_gettime(CLOCK_MONOTONIC, &now);
    recent.push_back(now.tv_sec);
    while (!recent.empty() && recent.front() < now.tv_sec - 60) recent.pop_front();
    if (recent.size() > kMaxRestartsPerMinute) {
      XLOG(kError, "keeper",
           "daemon died %zu times in a minute (last: %s); giving up: %s is unmounted and the "
           "I/O waiting in it fails",
           recent.size(), Describe(status).c_str(), mountpoint.c_str());
      Release(&fuse_fd, mountpoint);
      return 1;
    }
    if (failed_starts >= kMaxFailedStarts) {
      XLOG(kError, "keeper",
           "daemon failed %d starts in a row (last: %s); giving up: %s is unmounted and the "
           "I/O waiting in it fails",
           failed_starts, Describe(status).c_str(), mountpoint.c_str());
      Release(&fuse_fd, mountpoint);
      return 1;
    }
    restarts++;
    XLOG(kWarning, "keeper", "daemon pid %d: %s; starting it again (restart %u)", pid,
         Describe(status).c_str(), restarts);
    if (failed_starts > 0) {
      // 0.25, 0.5, 1, 2 s; a signal ends the wait early.
      unsigned ms = 250u << (failed_starts - 1);
      struct timespec ts {
        static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1000000
      };
      nanosleep(&ts, nullptr);
      if (g_stop) {
        Release(&fuse_fd, mountpoint);
        return ExitCode(status);
      }
    }
  }
}

int TakeFdFromEnvironment(const char* name) {
  const char* v = getenv(name);
  if (v == nullptr) return -1;
  char* end = nullptr;
  long fd = strtol(v, &end, 10);
  unsetenv(name);
  if (end == nullptr || *end != '\0' || fd < 3 || fd > 1 << 20) return -1;
  int flags = fcntl(static_cast<int>(fd), F_GETFD);
  if (flags < 0) return -1;
  fcntl(static_cast<int>(fd), F_SETFD, flags | FD_CLOEXEC);
  return static_cast<int>(fd);
}

namespace {
// The descriptor number in `name`, or an error naming the variable.
Result<int> InheritedFd(const char* name) {
  const char* v = getenv(name);
  char* end = nullptr;
  errno = 0;
  long fd = strtol(v, &end, 10);
  if (*v == '\0' || *end != '\0' || errno != 0 || fd < 3 || fd > 1 << 20)
    return Status::InvalidArgument(std::string(name) + "=" + v +
                                   ": not a descriptor number (3 or more)");
  if (fcntl(static_cast<int>(fd), F_GETFD) < 0)
    return Status::InvalidArgument(std::string(name) + "=" + v + ": not an open descriptor");
  return static_cast<int>(fd);
}
}  // namespace

Status CheckInheritedDescriptors() {
  struct stat st {};
  if (getenv(kEnvFuseFd) != nullptr) {
    auto fd = InheritedFd(kEnvFuseFd);
    if (!fd.ok()) return fd.status();
    // /dev/fuse is the misc character device 10:229.
    if (fstat(*fd, &st) != 0 || !S_ISCHR(st.st_mode) || major(st.st_rdev) != 10 ||
        minor(st.st_rdev) != 229)
      return Status::InvalidArgument(std::string(kEnvFuseFd) + "=" + getenv(kEnvFuseFd) +
                                     ": not a /dev/fuse descriptor (set only by xdisk-fuse's "
                                     "keeper and restarts)");
  }
  if (getenv(kEnvKeeperFd) != nullptr) {
    auto fd = InheritedFd(kEnvKeeperFd);
    if (!fd.ok()) return fd.status();
    if (fstat(*fd, &st) != 0 || !S_ISSOCK(st.st_mode))
      return Status::InvalidArgument(std::string(kEnvKeeperFd) + "=" + getenv(kEnvKeeperFd) +
                                     ": not a socket (set only by xdisk-fuse's keeper)");
  }
  return Status::Ok();
}

std::unique_ptr<KeeperLink> KeeperLink::FromEnvironment(uv_loop_t* loop,
                                                        std::function<void()> on_gone) {
  const char* p = getenv(kEnvKeeperPid);
  pid_t pid = p != nullptr ? static_cast<pid_t>(atoi(p)) : 0;
  unsetenv(kEnvKeeperPid);
  int fd = TakeFdFromEnvironment(kEnvKeeperFd);
  if (fd < 0) return nullptr;
  return std::unique_ptr<KeeperLink>(new KeeperLink(loop, fd, pid, std::move(on_gone)));
}

KeeperLink::KeeperLink(uv_loop_t* loop, int fd, pid_t pid, std::function<void()> on_gone)
    : loop_(loop), fd_(fd), pid_(pid), on_gone_(std::move(on_gone)) {
  if (int r = poll_.Open(uv_poll_init, loop_, fd_); r != 0) {
    // Its death could not be noticed: say now that it cannot be relied on.
    XLOG(kWarning, "keeper", "cannot watch the keeper's socket: %s", uv_strerror(r));
    alive_ = false;
    return;
  }
  poll_.get()->data = this;
  uv_poll_start(poll_.get(), UV_READABLE | UV_DISCONNECT, [](uv_poll_t* h, int, int) {
    auto* self = static_cast<KeeperLink*>(h->data);
    char b;
    ssize_t n = recv(self->fd_, &b, 1, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) self->Gone();
  });
}

KeeperLink::~KeeperLink() {
  Close();
  if (fd_ >= 0) close(fd_);
}

void KeeperLink::Close() { poll_.Close(); }

void KeeperLink::Gone() {
  if (!alive_) return;
  alive_ = false;
  Close();
  XLOG(kWarning, "keeper",
       "the keeper (pid %d) is gone: a crash of this daemon now ends the mount and fails the "
       "I/O in flight; xdiskctl restart (or a restart of xdisk-fuse) brings a keeper back",
       static_cast<int>(pid_));
  if (on_gone_) on_gone_();
}

bool KeeperLink::Send(const std::string& what, int fd) {
  if (!alive_) return false;
  struct iovec iov {
    const_cast<char*>(what.data()), what.size()
  };
  struct msghdr msg {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  char cbuf[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  if (sendmsg(fd_, &msg, MSG_NOSIGNAL) < 0) {
    XLOG(kWarning, "keeper", "telling the keeper '%s': %s", what.c_str(), strerror(errno));
    return false;
  }
  return true;
}

Status KeeperLink::SendFuseFd(int fd) {
  if (!alive_) return Status::Unavailable("no keeper");
  if (!Send("fuse", fd)) {
    // The keeper holds nothing: a crash would end the mount.
    alive_ = false;
    Close();
    return Status::Unavailable("the keeper did not take the mount's descriptor");
  }
  return Status::Ok();
}
void KeeperLink::SendReady() { Send("ready"); }
void KeeperLink::SendStop() { Send("stop"); }

}  // namespace xdisk
