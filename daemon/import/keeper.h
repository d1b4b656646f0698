// Keeper: the small process that keeps a FUSE mount alive while the daemon
// serving it is down, and starts the daemon again when it dies.
//
// `xdisk-fuse [OPTIONS] MOUNTPOINT` in a shell (no systemd, no --no-keeper)
// runs as the keeper. It starts the daemon as its child (the same binary,
// re-executed from the path it was started from, so an upgraded binary is
// what comes back), holds a copy of the mount's /dev/fuse descriptor, and:
//   - when the daemon dies (a crash, kill -9, the OOM killer) after it has
//     served, starts it again at once with that descriptor inherited, and
//     the new daemon adopts the mount (fusedev/fuse_server.h, ADOPTION): the
//     kernel resends what the dead one read, nothing reaches the application;
//   - when the daemon stops cleanly (SIGTERM, SIGINT, an unmount from
//     outside), exits with its status; SIGTERM, SIGINT and SIGHUP sent to
//     the keeper are passed on to the daemon;
//   - when the daemon dies before it ever served (bad options, mount
//     refused), exits with its status, leaving nothing mounted;
//   - gives up after kMaxFailedStarts restarts in a row that never served
//     (restarts wait 0, 0.25, 0.5, 1, 2 s), or after more than
//     kMaxRestartsPerMinute restarts within a minute (a request that
//     crashes every daemon it is resent to): it then lazily unmounts and
//     closes the descriptor, so the kernel fails the waiting requests
//     (ENOTCONN) instead of leaving them to hang for good.
//
// Between keeper and daemon (KeeperLink, the daemon's side):
//   environment  XDISK_KEEPER_FD=N  the daemon's end of a SOCK_SEQPACKET pair
//                XDISK_KEEPER_PID=P
//                XDISK_FUSE_FD=N    a /dev/fuse descriptor of a live mount to
//                                   adopt (also set by a daemon that
//                                   re-executes itself: xdiskctl restart)
//   messages, daemon to keeper, one datagram each:
//                "fuse" with the descriptor attached (SCM_RIGHTS): hold it
//                "ready": the daemon serves the mount
//                "stop": a clean stop; the mount is gone
//   The keeper sends nothing; the daemon sees the keeper's death as the end
//   of the socket, and says what protection is then gone.
//
// Threading: the keeper is single-threaded and runs no loop; KeeperLink is
// used on the daemon's loop thread.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "daemon/base/uv_handle.h"
#include "proto/status.h"

namespace xdisk {

inline constexpr char kEnvKeeperFd[] = "XDISK_KEEPER_FD";
inline constexpr char kEnvKeeperPid[] = "XDISK_KEEPER_PID";
inline constexpr char kEnvFuseFd[] = "XDISK_FUSE_FD";
inline constexpr int kMaxFailedStarts = 5;
inline constexpr size_t kMaxRestartsPerMinute = 40;

// Runs the keeper for the daemon command line `argv` (argv[0] included) and
// `mountpoint` (absolute, normalized). Returns the keeper's exit status.
int RunKeeper(const std::vector<std::string>& argv, const std::string& mountpoint);

// A descriptor named by an environment variable (XDISK_FUSE_FD), removed
// from the environment so that it is not passed on by accident; -1 if the
// variable is unset or not a valid open descriptor. O_CLOEXEC is set on it.
int TakeFdFromEnvironment(const char* name);
// Checks what the environment hands this process before anything starts:
// XDISK_FUSE_FD must name an open /dev/fuse descriptor, XDISK_KEEPER_FD an
// open socket (only the keeper and a re-executing daemon set them). An
// InvalidArgument status names the variable and what is wrong with it; OK
// if they are unset or usable. Writing to a wrong descriptor (the resend
// notification) could damage whatever file it is.
Status CheckInheritedDescriptors();

// The daemon's side of the keeper socket.
class KeeperLink {
 public:
  // The link named by XDISK_KEEPER_FD / XDISK_KEEPER_PID, or nullptr when
  // the daemon does not run under a keeper. Takes the variables out of the
  // environment. `on_gone` runs once on the loop thread if the keeper dies.
  static std::unique_ptr<KeeperLink> FromEnvironment(uv_loop_t* loop,
                                                     std::function<void()> on_gone);
  ~KeeperLink();
  KeeperLink(const KeeperLink&) = delete;
  KeeperLink& operator=(const KeeperLink&) = delete;

  Status SendFuseFd(int fd);
  void SendReady();
  void SendStop();
  pid_t keeper_pid() const { return alive_ ? pid_ : 0; }
  bool alive() const { return alive_; }
  // The socket's descriptor, to be kept (without O_CLOEXEC) across a
  // re-exec of the daemon; -1 once the keeper is gone.
  int fd() const { return alive_ ? fd_ : -1; }
  // Closes the libuv handle (before the loop closes).
  void Close();
  // Gives up ownership of the socket (for a re-exec) and returns it.
  int TakeFd() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  KeeperLink(uv_loop_t* loop, int fd, pid_t pid, std::function<void()> on_gone);
  bool Send(const std::string& what, int fd = -1);
  void Gone();

  uv_loop_t* loop_;
  int fd_;
  pid_t pid_;
  bool alive_ = true;
  std::function<void()> on_gone_;
  UvHandle<uv_poll_t> poll_;  // watches fd_ for the keeper's end
};

}  // namespace xdisk
