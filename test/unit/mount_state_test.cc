// MountState (daemon/import/mount_state.h): what a restarted daemon reads back.
#include "daemon/import/mount_state.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

using xdisk::DecodeMountState;
using xdisk::EncodeMountState;
using xdisk::LoadMountState;
using xdisk::MountState;
using xdisk::MountStatePath;
using xdisk::SaveMountState;
using xdisk::Status;

namespace {

MountState Sample() {
  MountState st;
  st.mountpoint = "/mnt/xdisk";
  st.mount_dev = "0:52";
  st.init_request = std::string("\x68\0\0\0\x1a\0\0\0", 8) + std::string(96, '\x01');
  st.identity.next_ino = 9;
  st.identity.disks.push_back({{"s\xff", "h/d", "u", 1 << 20, 4096}, 5, 0, true});
  st.identity.disks.push_back({{"t", "", "", 512, 512}, 7, 1, false});
  st.identity.dirs.push_back({"by-label/h", 6, 3});
  st.handles[5] = 3;
  st.restarts = 4;
  return st;
}

}  // namespace

TEST_CASE("a mount state survives encoding, non-UTF-8 serials and raw INIT bytes included",
          "[mount_state]") {
  MountState st = Sample();
  auto back = DecodeMountState(EncodeMountState(st));
  REQUIRE(back.ok());
  CHECK(back->mountpoint == st.mountpoint);
  CHECK(back->mount_dev == st.mount_dev);
  CHECK(back->init_request == st.init_request);
  CHECK(back->identity.next_ino == 9);
  REQUIRE(back->identity.disks.size() == 2);
  CHECK(back->identity.disks[0].info.serial == "s\xff");
  CHECK(back->identity.disks[0].info.label == "h/d");
  CHECK(back->identity.disks[0].info.blksize == 4096);
  CHECK(back->identity.disks[0].ino == 5);
  CHECK(back->identity.disks[1].xa == 1);
  CHECK(back->identity.disks[0].visible);
  CHECK_FALSE(back->identity.disks[1].visible);
  REQUIRE(back->identity.dirs.size() == 1);
  CHECK(back->identity.dirs[0].path == "by-label/h");
  CHECK(back->identity.dirs[0].parent == 3);
  CHECK(back->handles == st.handles);
  CHECK(back->restarts == 4);
}

TEST_CASE("bytes that are no mount state of version 1 are corruption", "[mount_state]") {
  auto garbage = DecodeMountState(std::string("\xff\xff\xff\xff", 4));
  REQUIRE_FALSE(garbage.ok());
  CHECK(garbage.status().kind() == Status::Kind::kCorruption);
  // An empty message decodes but has version 0.
  auto empty = DecodeMountState("");
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.status().kind() == Status::Kind::kCorruption);
}

TEST_CASE("the state file is replaced whole and found again by mountpoint", "[mount_state]") {
  char tmpl[] = "/tmp/mount_state_test.XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  std::string dir = std::string(tmpl) + "/state";  // created by Save
  std::string path = MountStatePath(dir, "/mnt/xdisk");
  CHECK(path == MountStatePath(dir, "/mnt/xdisk"));
  CHECK(path != MountStatePath(dir, "/mnt/xdisk2"));
  auto none = LoadMountState(path);
  REQUIRE_FALSE(none.ok());
  CHECK(none.status().kind() == Status::Kind::kNotFound);

  MountState st = Sample();
  REQUIRE(SaveMountState(path, st).ok());
  st.restarts = 5;
  REQUIRE(SaveMountState(path, st).ok());
  auto back = LoadMountState(path);
  REQUIRE(back.ok());
  CHECK(back->restarts == 5);
  CHECK(access((path + ".tmp").c_str(), F_OK) != 0);

  // A damaged file is reported, not taken.
  int fd = open(path.c_str(), O_WRONLY | O_TRUNC);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, "\xff\xff", 2) == 2);
  close(fd);
  auto bad = LoadMountState(path);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().kind() == Status::Kind::kCorruption);
  unlink(path.c_str());
  rmdir(dir.c_str());
  rmdir(tmpl);
}
