// ResolveAvoiding and MountsOfSameDevice (daemon/import/own_mount.h): operator
// paths are resolved without a system call on the daemon's own mount.
#include "daemon/import/own_mount.h"

#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>

using namespace xdisk;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/xdisk-own-mount-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

}  // namespace

TEST_CASE("the mounts of one device are found, bind mounts and escapes included", "[own_mount]") {
  const std::string info =
      "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
      "61 22 0:55 / /mnt/x\\040disks rw,nosuid - fuse.xdisk xdisk rw\n"
      "70 22 0:55 / /srv/bound rw,nosuid - fuse.xdisk xdisk rw\n"
      "71 22 0:56 / /mnt/other rw - fuse.xdisk xdisk rw\n"
      "broken line\n";
  auto m = MountsOfSameDevice(info, "/mnt/x disks");
  CHECK(m == std::vector<std::string>{"/mnt/x disks", "/srv/bound"});
  CHECK(MountsOfSameDevice(info, "/mnt/other") == std::vector<std::string>{"/mnt/other"});
  CHECK(MountsOfSameDevice(info, "/nowhere").empty());
  CHECK(MountsOfSameDevice("", "/mnt/other").empty());
}

TEST_CASE("the mount on top of a mountpoint is found with its type and source", "[own_mount]") {
  const std::string info =
      "61 22 0:55 / /mnt/x rw,nosuid shared:1 master:2 - fuse.xdisk xdisk rw\n"
      "62 61 0:57 / /mnt/x rw - tmpfs tmp\\040fs rw\n"
      "63 22 0:58 / /mnt/y rw\n";
  auto top = MountAt(info, "/mnt/x");
  REQUIRE(top);
  CHECK(top->dev == "0:57");
  CHECK(top->fstype == "tmpfs");
  CHECK(top->source == "tmp fs");
  auto fuse = ParseMountInfo(info)[0];
  CHECK(fuse.fstype == "fuse.xdisk");
  CHECK(fuse.source == "xdisk");
  auto y = MountAt(info, "/mnt/y");  // no " - " part: type unknown
  REQUIRE(y);
  CHECK(y->fstype.empty());
  CHECK_FALSE(MountAt(info, "/mnt"));
}

TEST_CASE("lexical paths fold . and .. without touching the file system", "[own_mount]") {
  CHECK(LexicalAbsolute("/a/./b//c/../d/") == "/a/b/d");
  CHECK(LexicalAbsolute("/../..") == "/");
  CHECK(LexicalAbsolute("/") == "/");
  CHECK(LexicalAbsolute("/no/such/dir/..") == "/no/such");
  char cwd[4096];
  REQUIRE(getcwd(cwd, sizeof cwd) != nullptr);
  CHECK(LexicalAbsolute("x/../y") == (std::string(cwd) == "/" ? "/y" : std::string(cwd) + "/y"));
}

TEST_CASE("paths resolve like realpath, and never through a forbidden directory", "[own_mount]") {
  TempDir t;
  const std::string d = t.path;
  // `mnt` stands for the daemon's mount: the walk must refuse before it
  // touches anything there (nothing in it exists, so an lstat would fail
  // with ENOENT instead of the refusal).
  fs::create_directories(d + "/real/sub");
  fs::create_directories(d + "/mnt");
  const std::vector<std::string> forbidden{d + "/mnt"};
  fs::create_symlink(d + "/real", d + "/abs");   // absolute link
  fs::create_symlink("real/sub", d + "/rel");    // relative link
  fs::create_symlink("../mnt", d + "/real/up");  // .. out of a directory, into mnt
  fs::create_symlink(d + "/mnt/serno/x", d + "/into");
  fs::create_symlink("loop2", d + "/loop1");
  fs::create_symlink("loop1", d + "/loop2");
  fs::create_symlink(d + "/abs/../real/./sub", d + "/dotty");

  auto ok = [&](const std::string& p) {
    auto r = ResolveAvoiding(p, forbidden);
    INFO(p << ": " << r.status().ToString());
    REQUIRE(r.ok());
    char* want = realpath(p.c_str(), nullptr);
    REQUIRE(want != nullptr);
    CHECK(*r == want);
    free(want);
  };
  ok(d + "/real/sub");
  ok(d + "/abs/sub");
  ok(d + "/rel");
  ok(d + "/rel/../sub/.");
  ok(d + "/dotty");
  ok(d + "//real///sub/");

  auto refused = [&](const std::string& p) {
    auto r = ResolveAvoiding(p, forbidden);
    INFO(p);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().kind() == Status::Kind::kInvalidArgument);
    CHECK(r.status().message().find(d + "/mnt") != std::string::npos);
  };
  refused(d + "/mnt");
  refused(d + "/mnt/serno/x");
  refused(d + "/real/../mnt/xa0");
  refused(d + "/into");
  refused(d + "/real/up/xa0");
  refused(d + "/abs/up");

  // Relative to the current directory.
  char cwd[4096];
  REQUIRE(getcwd(cwd, sizeof cwd) != nullptr);
  REQUIRE(chdir(d.c_str()) == 0);
  auto rel = ResolveAvoiding("rel/..", forbidden);
  auto bad = ResolveAvoiding("into", forbidden);
  REQUIRE(chdir(cwd) == 0);
  REQUIRE(rel.ok());
  CHECK(*rel == d + "/real");
  CHECK(bad.status().kind() == Status::Kind::kInvalidArgument);

  // A forbidden "/" refuses everything; errors of the walk are errors.
  CHECK(ResolveAvoiding(d, {"/"}).status().kind() == Status::Kind::kInvalidArgument);
  auto loop = ResolveAvoiding(d + "/loop1", forbidden);
  CHECK(loop.status().errno_value() == ELOOP);
  auto missing = ResolveAvoiding(d + "/real/nope/x", forbidden);
  CHECK(missing.status().errno_value() == ENOENT);
}
