// What the keeper and a re-executing daemon hand over through the
// environment is checked before anything starts (daemon/import/keeper.h).
#include "daemon/import/keeper.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <string>

using namespace xdisk;

namespace {
// Sets the variable for one check and removes it afterwards.
Status CheckWith(const char* name, const std::string& value) {
  setenv(name, value.c_str(), 1);
  Status st = CheckInheritedDescriptors();
  unsetenv(name);
  return st;
}
}  // namespace

TEST_CASE("unset handover variables are fine", "[keeper]") {
  unsetenv(kEnvFuseFd);
  unsetenv(kEnvKeeperFd);
  CHECK(CheckInheritedDescriptors().ok());
}

TEST_CASE("bad XDISK_FUSE_FD values are refused with the variable named", "[keeper]") {
  for (const char* bad : {"", "abc", "7x", "2", "-5", "99999999999999999999"}) {
    Status st = CheckWith(kEnvFuseFd, bad);
    INFO(bad);
    CHECK(st.kind() == Status::Kind::kInvalidArgument);
    CHECK(st.message().find("XDISK_FUSE_FD=") == 0);
  }
  // A number that is not open.
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 3);
  close(fd);
  CHECK(CheckWith(kEnvFuseFd, std::to_string(fd)).message().find("not an open descriptor") !=
        std::string::npos);
  // Open, but a pipe: the resend notification must never go there.
  int p[2];
  REQUIRE(pipe2(p, O_CLOEXEC) == 0);
  Status st = CheckWith(kEnvFuseFd, std::to_string(p[1]));
  CHECK(st.message().find("not a /dev/fuse descriptor") != std::string::npos);
  close(p[0]);
  close(p[1]);
  // /dev/fuse itself is accepted.
  int f = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (f >= 0) {
    CHECK(CheckWith(kEnvFuseFd, std::to_string(f)).ok());
    close(f);
  }
}

TEST_CASE("XDISK_KEEPER_FD must be a socket", "[keeper]") {
  int p[2];
  REQUIRE(pipe2(p, O_CLOEXEC) == 0);
  CHECK(CheckWith(kEnvKeeperFd, std::to_string(p[0])).message().find("not a socket") !=
        std::string::npos);
  close(p[0]);
  close(p[1]);
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  CHECK(CheckWith(kEnvKeeperFd, std::to_string(sv[0])).ok());
  close(sv[0]);
  close(sv[1]);
}
