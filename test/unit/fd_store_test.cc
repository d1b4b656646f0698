// The systemd fd-store handshake (daemon/import/fd_store.h) against a fake service
// manager: a datagram socket named by NOTIFY_SOCKET, as systemd provides.
#include "daemon/import/fd_store.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>

using namespace xdisk;

namespace {

// The fake manager's socket, bound at a fresh path; NOTIFY_SOCKET names it
// while the object lives.
struct FakeManager {
  int fd = -1;
  std::string path;
  FakeManager() {
    char tmpl[] = "/tmp/fd_store_test.XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    path = std::string(tmpl) + "/notify";
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    struct sockaddr_un a {};
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
    setenv("NOTIFY_SOCKET", path.c_str(), 1);
  }
  ~FakeManager() {
    unsetenv("NOTIFY_SOCKET");
    close(fd);
    unlink(path.c_str());
    rmdir(path.substr(0, path.rfind('/')).c_str());
  }
  // One notification: its text and the descriptor it carried (or -1).
  std::string Receive(int* passed) {
    char buf[512];
    char cbuf[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
    struct iovec iov {buf, sizeof buf};
    struct msghdr m {};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) return "";
    *passed = -1;
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
        memcpy(passed, CMSG_DATA(c), sizeof(int));
    return std::string(buf, static_cast<size_t>(n));
  }
};

bool SameFile(int a, int b) {
  struct stat sa, sb;
  return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

}  // namespace

TEST_CASE("the mount's descriptor goes to the fd store under its name", "[fd_store]") {
  FakeManager mgr;
  REQUIRE(UnderServiceManager());
  int pipefd[2];
  REQUIRE(pipe2(pipefd, O_CLOEXEC) == 0);
  REQUIRE(StoreFd(pipefd[0], kFuseFdName).ok());
  int passed = -1;
  CHECK(mgr.Receive(&passed) == "FDSTORE=1\nFDNAME=fuse");
  REQUIRE(passed >= 0);
  CHECK(passed != pipefd[0]);
  CHECK(SameFile(passed, pipefd[0]));
  close(passed);

  RemoveStoredFd(kFuseFdName);
  CHECK(mgr.Receive(&passed) == "FDSTOREREMOVE=1\nFDNAME=fuse");
  CHECK(passed == -1);
  NotifyReady();
  CHECK(mgr.Receive(&passed) == "READY=1");
  close(pipefd[0]);
  close(pipefd[1]);
}

TEST_CASE("without a service manager nothing is stored", "[fd_store]") {
  unsetenv("NOTIFY_SOCKET");
  CHECK_FALSE(UnderServiceManager());
  auto s = StoreFd(0, kFuseFdName);
  CHECK_FALSE(s.ok());
  CHECK(s.kind() == Status::Kind::kUnavailable);
}

TEST_CASE("a descriptor passed back by systemd is found by its name", "[fd_store]") {
  // systemd passes stored descriptors from fd 3 on, named in LISTEN_FDNAMES.
  int saved3 = fcntl(3, F_DUPFD_CLOEXEC, 100);
  int saved4 = fcntl(4, F_DUPFD_CLOEXEC, 100);
  int pipefd[2];
  REQUIRE(pipe2(pipefd, O_CLOEXEC) == 0);
  REQUIRE(dup2(pipefd[0], 3) == 3);
  REQUIRE(dup2(pipefd[1], 4) == 4);
  setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
  setenv("LISTEN_FDS", "2", 1);
  setenv("LISTEN_FDNAMES", "other:fuse", 1);
  int fd = TakeStoredFd(kFuseFdName);
  CHECK(fd == 4);
  CHECK(SameFile(fd, pipefd[1]));
  CHECK((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
  CHECK(fcntl(3, F_GETFD) < 0);  // the other one was closed
  CHECK(getenv("LISTEN_FDS") == nullptr);
  CHECK(TakeStoredFd(kFuseFdName) == -1);  // taken once
  if (saved3 >= 0) dup2(saved3, 3), close(saved3);
  if (saved4 >= 0) dup2(saved4, 4), close(saved4);
  if (saved4 < 0) close(4);
  close(pipefd[0]);
  close(pipefd[1]);
}
