// DiskTree: names, links, inode stability and visibility, without FUSE.
#include "fusedev/disk_tree.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <string>
#include <vector>

using xdisk::fusedev::DirEntry;
using xdisk::fusedev::DiskInfo;
using xdisk::fusedev::DiskTree;
using xdisk::fusedev::Ino;
using xdisk::fusedev::kByLabelIno;
using xdisk::fusedev::kByUuidIno;
using xdisk::fusedev::kRootIno;
using xdisk::fusedev::kSernoIno;
using xdisk::fusedev::TreeAttrs;
using xdisk::fusedev::TreeChange;

namespace {

DiskInfo Disk(std::string serial, std::string label = "", std::string uuid = "",
              uint64_t size = 1 << 20) {
  return DiskInfo{std::move(serial), std::move(label), std::move(uuid), size, 512};
}

// Resolves "a/b/c" from the root; 0 when any component is missing.
Ino Resolve(const DiskTree& t, const std::string& path) {
  Ino cur = kRootIno;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    std::string c =
        path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    auto next = t.Lookup(cur, c);
    if (!next) return 0;
    cur = *next;
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return cur;
}

std::vector<std::string> Names(const DiskTree& t, Ino dir) {
  std::vector<DirEntry> list;
  REQUIRE(t.ReadDir(dir, &list));
  std::vector<std::string> out;
  for (const auto& e : list) out.push_back(e.name);
  return out;
}

}  // namespace

TEST_CASE("an empty tree has the three fixed directories", "[disk_tree]") {
  DiskTree t;
  CHECK(Names(t, kRootIno) == std::vector<std::string>{".", "..", "by-label", "by-uuid", "serno"});
  CHECK(Resolve(t, "serno") == kSernoIno);
  CHECK(Resolve(t, "by-label") == kByLabelIno);
  CHECK(Resolve(t, "by-uuid") == kByUuidIno);
  struct stat st;
  REQUIRE(t.GetAttr(kRootIno, &st));
  CHECK(S_ISDIR(st.st_mode));
  CHECK((st.st_mode & 07777) == 0755);
  CHECK(st.st_nlink == 5);  // ".", its entry in its parent, three subdirectories.
  CHECK_FALSE(t.GetAttr(999, &st));
}

TEST_CASE("a disk gets xaN, serno, by-label and by-uuid names on one inode", "[disk_tree]") {
  DiskTree t;
  Ino ino = t.AddOrUpdate(Disk("S1", "host/da0", "u-1", 10 << 20), nullptr);
  REQUIRE(ino != 0);
  CHECK(Resolve(t, "xa0") == ino);
  CHECK(Resolve(t, "serno/S1") == ino);
  CHECK(Resolve(t, "by-label/host/da0") == ino);
  CHECK(Resolve(t, "by-uuid/u-1") == ino);
  CHECK(t.nlink(ino) == 4);
  CHECK(t.XaName("S1") == "xa0");

  struct stat st;
  REQUIRE(t.GetAttr(ino, &st));
  CHECK(S_ISREG(st.st_mode));
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(st.st_size == 10 << 20);
  CHECK(st.st_blksize == 512);
  CHECK(st.st_blocks == (10 << 20) / 512);
  CHECK(st.st_nlink == 4);
  CHECK(st.st_ino == ino);

  Ino host = Resolve(t, "by-label/host");
  REQUIRE(host != 0);
  CHECK(t.IsDir(host));
  CHECK(Names(t, host) == std::vector<std::string>{".", "..", "da0"});
  CHECK(*t.Lookup(host, "..") == kByLabelIno);
}

TEST_CASE("configured mode and owner are reported", "[disk_tree]") {
  TreeAttrs a;
  a.file_mode = 0640;
  a.uid = 1234;
  a.gid = 5678;
  DiskTree t(a);
  Ino ino = t.AddOrUpdate(Disk("S1"), nullptr);
  struct stat st;
  REQUIRE(t.GetAttr(ino, &st));
  CHECK((st.st_mode & 07777) == 0640);
  CHECK(st.st_uid == 1234);
  CHECK(st.st_gid == 5678);
}

TEST_CASE("xaN follows first appearance and is never reused", "[disk_tree]") {
  DiskTree t;
  Ino a = t.AddOrUpdate(Disk("A"), nullptr);
  Ino b = t.AddOrUpdate(Disk("B"), nullptr);
  CHECK(t.XaName("A") == "xa0");
  CHECK(t.XaName("B") == "xa1");
  CHECK(a != b);

  REQUIRE(t.SetOnline("A", false));
  CHECK(Resolve(t, "xa0") == 0);
  CHECK(Resolve(t, "serno/A") == 0);
  Ino c = t.AddOrUpdate(Disk("C"), nullptr);
  CHECK(t.XaName("C") == "xa2");  // xa0 stays reserved for A.
  CHECK(c != a);
  CHECK(Resolve(t, "xa0") == 0);

  // A comes back: same inode, same xaN.
  CHECK(t.AddOrUpdate(Disk("A"), nullptr) == a);
  CHECK(Resolve(t, "xa0") == a);
  CHECK(t.XaName("A") == "xa0");
  CHECK(t.InoOf("A") == a);
  CHECK(t.InoOf("nope") == 0);
  CHECK(t.XaName("nope").empty());
}

TEST_CASE("an empty serial is rejected", "[disk_tree]") {
  DiskTree t;
  CHECK(t.AddOrUpdate(Disk(""), nullptr) == 0);
  CHECK(Names(t, kRootIno).size() == 5);
  CHECK_FALSE(t.SetOnline("", false));
}

TEST_CASE("offline disks stay visible while open", "[disk_tree]") {
  DiskTree t;
  Ino ino = t.AddOrUpdate(Disk("S1", "h/d"), nullptr);
  t.OpenRef(ino);
  t.OpenRef(ino);
  REQUIRE(t.SetOnline("S1", false));
  CHECK(t.IsVisible(ino));
  CHECK_FALSE(t.IsOnline(ino));
  CHECK(Resolve(t, "xa0") == ino);
  CHECK(Resolve(t, "by-label/h/d") == ino);

  t.CloseRef(ino);
  CHECK(Resolve(t, "xa0") == ino);
  t.CloseRef(ino);
  CHECK_FALSE(t.IsVisible(ino));
  CHECK(Resolve(t, "xa0") == 0);
  CHECK(Resolve(t, "serno/S1") == 0);
  // The empty label directory goes too.
  CHECK(Resolve(t, "by-label/h") == 0);
  CHECK(Names(t, kByLabelIno) == std::vector<std::string>{".", ".."});

  // The kernel may still hold the inode: attributes stay available, nlink 0.
  struct stat st;
  REQUIRE(t.GetAttr(ino, &st));
  CHECK(st.st_nlink == 0);
  CHECK(t.open_count(ino) == 0);
}

TEST_CASE("going online again while open keeps the disk after close", "[disk_tree]") {
  DiskTree t;
  Ino ino = t.AddOrUpdate(Disk("S1"), nullptr);
  t.OpenRef(ino);
  t.SetOnline("S1", false);
  t.SetOnline("S1", true);
  t.CloseRef(ino);
  CHECK(Resolve(t, "xa0") == ino);
}

TEST_CASE("directory inodes are stable across disappearance", "[disk_tree]") {
  DiskTree t;
  t.AddOrUpdate(Disk("S1", "h/d"), nullptr);
  Ino h = Resolve(t, "by-label/h");
  REQUIRE(h != 0);
  t.SetOnline("S1", false);
  CHECK(Resolve(t, "by-label/h") == 0);
  t.SetOnline("S1", true);
  CHECK(Resolve(t, "by-label/h") == h);
}

TEST_CASE("label parsing edge cases", "[disk_tree]") {
  DiskTree t;
  SECTION("empty label: no by-label name") {
    Ino ino = t.AddOrUpdate(Disk("S1", ""), nullptr);
    CHECK(t.nlink(ino) == 2);
    CHECK(Names(t, kByLabelIno).size() == 2);
  }
  SECTION("single component") {
    Ino ino = t.AddOrUpdate(Disk("S1", "solo"), nullptr);
    CHECK(Resolve(t, "by-label/solo") == ino);
    CHECK(t.nlink(ino) == 3);
  }
  SECTION("many components nest") {
    Ino ino = t.AddOrUpdate(Disk("S1", "a/b/c/d"), nullptr);
    CHECK(Resolve(t, "by-label/a/b/c/d") == ino);
    Ino a = Resolve(t, "by-label/a");
    struct stat st;
    REQUIRE(t.GetAttr(a, &st));
    CHECK(st.st_nlink == 3);
  }
  SECTION("bad components drop only the label name") {
    for (const char* bad : {"/lead", "trail/", "a//b", "a/./b", "a/../b", "..", ".", "/"}) {
      DiskTree u;
      Ino ino = u.AddOrUpdate(Disk("S1", bad), nullptr);
      INFO(bad);
      CHECK(ino != 0);
      CHECK(u.nlink(ino) == 2);
      CHECK(Names(u, kByLabelIno).size() == 2);
    }
  }
  SECTION("control characters drop the label name, and LabelProblem says why") {
    for (const char* bad : {"h/d\nxdisk-fuse: error: FAKE", "h/\x1b[2J", "h/d\x7f", "tab\there"}) {
      DiskTree u;
      Ino ino = u.AddOrUpdate(Disk("S1", bad), nullptr);
      INFO(bad);
      CHECK(u.nlink(ino) == 2);
      CHECK(Names(u, kByLabelIno).size() == 2);
      CHECK_FALSE(DiskTree::LabelProblem(bad).empty());
    }
    for (const char* bad : {"x/../../y", "a//b", "/lead", "."})
      CHECK_FALSE(DiskTree::LabelProblem(bad).empty());
    CHECK(DiskTree::LabelProblem("host/dev").empty());
    CHECK(DiskTree::LabelProblem("caf\xc3\xa9/d").empty());
    CHECK(DiskTree::LabelProblem("").empty());
  }
  SECTION("long labels: components up to 255 bytes are kept, longer are dropped") {
    std::string c63(63, 'x'), c255(255, 'y'), c256(256, 'z');
    Ino a = t.AddOrUpdate(Disk("A", c63 + "/" + c255), nullptr);
    CHECK(Resolve(t, "by-label/" + c63 + "/" + c255) == a);
    Ino b = t.AddOrUpdate(Disk("B", "h/" + c256), nullptr);
    CHECK(t.nlink(b) == 2);
    Ino c = t.AddOrUpdate(Disk("C", std::string(10000, '/')), nullptr);
    CHECK(t.nlink(c) == 2);
  }
  SECTION("a serial with a slash gets no serno name but keeps the rest") {
    Ino ino = t.AddOrUpdate(Disk("a/b", "h/d"), nullptr);
    CHECK(t.nlink(ino) == 2);
    CHECK(Resolve(t, "xa0") == ino);
    CHECK(Names(t, kSernoIno).size() == 2);
  }
}

TEST_CASE("uuid absent or odd", "[disk_tree]") {
  DiskTree t;
  Ino a = t.AddOrUpdate(Disk("A", "h/a", ""), nullptr);
  CHECK(t.nlink(a) == 3);
  CHECK(Names(t, kByUuidIno).size() == 2);
  Ino b = t.AddOrUpdate(Disk("B", "h/b", "x/y"), nullptr);
  CHECK(t.nlink(b) == 3);
  CHECK(Names(t, kByUuidIno).size() == 2);
}

TEST_CASE("updates move names", "[disk_tree]") {
  DiskTree t;
  Ino ino = t.AddOrUpdate(Disk("S1", "h/old", "u1"), nullptr);
  CHECK(t.AddOrUpdate(Disk("S1", "h2/new", ""), nullptr) == ino);
  CHECK(Resolve(t, "by-label/h/old") == 0);
  CHECK(Resolve(t, "by-label/h") == 0);
  CHECK(Resolve(t, "by-label/h2/new") == ino);
  CHECK(Resolve(t, "by-uuid/u1") == 0);
  CHECK(t.nlink(ino) == 3);
}

TEST_CASE("name collisions go to the lower xaN and pass on", "[disk_tree]") {
  DiskTree t;
  Ino a = t.AddOrUpdate(Disk("A", "h/d", "same"), nullptr);
  Ino b = t.AddOrUpdate(Disk("B", "h/d", "same"), nullptr);
  CHECK(Resolve(t, "by-uuid/same") == a);
  CHECK(Resolve(t, "by-label/h/d") == a);
  CHECK(t.nlink(b) == 2);
  t.SetOnline("A", false);
  CHECK(Resolve(t, "by-uuid/same") == b);
  CHECK(Resolve(t, "by-label/h/d") == b);
  CHECK(t.nlink(b) == 4);

  SECTION("file versus directory") {
    DiskTree u;
    Ino f = u.AddOrUpdate(Disk("F", "h"), nullptr);
    Ino d = u.AddOrUpdate(Disk("D", "h/d"), nullptr);
    CHECK(Resolve(u, "by-label/h") == f);
    CHECK(u.nlink(d) == 2);
    u.SetOnline("F", false);
    CHECK(u.IsDir(Resolve(u, "by-label/h")));
    CHECK(Resolve(u, "by-label/h/d") == d);
  }
}

TEST_CASE("the change hook reports removals and attribute changes", "[disk_tree]") {
  DiskTree t;
  std::vector<TreeChange> seen;
  t.SetChangeHook([&](const TreeChange& c) { seen.push_back(c); });
  Ino ino = t.AddOrUpdate(Disk("S1", "h/d", "u"), nullptr);
  size_t added = 0;
  for (const auto& c : seen) added += c.kind == TreeChange::Kind::kEntryAdded;
  CHECK(added == 5);  // xa0, serno/S1, by-label/h, by-label/h/d, by-uuid/u
  seen.clear();

  t.SetOnline("S1", false);
  std::vector<std::string> removed;
  for (const auto& c : seen) {
    CHECK(c.kind == TreeChange::Kind::kEntryRemoved);
    removed.push_back(c.name);
  }
  std::sort(removed.begin(), removed.end());
  CHECK(removed == std::vector<std::string>{"S1", "d", "h", "u", "xa0"});
  seen.clear();

  t.AddOrUpdate(Disk("S1", "h/d", "u", 2 << 20), nullptr);
  bool attr = false;
  for (const auto& c : seen) attr |= c.kind == TreeChange::Kind::kAttrChanged && c.ino == ino;
  CHECK(attr);

  seen.clear();
  t.OpenRef(ino);
  t.CloseRef(ino);
  CHECK(seen.empty());  // Online: open and close change nothing.
}

TEST_CASE("lookup counts", "[disk_tree]") {
  DiskTree t;
  Ino ino = t.AddOrUpdate(Disk("S1"), nullptr);
  t.AddLookup(ino, 3);
  t.Forget(ino, 2);
  CHECK(t.lookup_count(ino) == 1);
  t.Forget(ino, 5);
  CHECK(t.lookup_count(ino) == 0);
  t.AddLookup(kSernoIno, 1);
  CHECK(t.lookup_count(kSernoIno) == 1);
}

TEST_CASE("statfs totals count visible disks", "[disk_tree]") {
  DiskTree t;
  t.AddOrUpdate(Disk("A", "", "", 1 << 20), nullptr);
  t.AddOrUpdate(Disk("B", "", "", 3 << 20), nullptr);
  CHECK(t.visible_disks() == 2);
  CHECK(t.visible_bytes() == 4 << 20);
  t.SetOnline("B", false);
  CHECK(t.visible_disks() == 1);
  CHECK(t.visible_bytes() == 1 << 20);
}

TEST_CASE("readdir of a file is refused", "[disk_tree]") {
  DiskTree t;
  Ino ino = t.AddOrUpdate(Disk("A"), nullptr);
  std::vector<DirEntry> list;
  CHECK_FALSE(t.ReadDir(ino, &list));
  CHECK_FALSE(t.Lookup(ino, "x"));
  CHECK(t.IsDisk(ino));
  CHECK_FALSE(t.IsDir(ino));
}

// ---- identity across restarts (fuse_server.h, ADOPTION) ----

TEST_CASE("a restored identity gives every serial its old inode and xaN", "[disk_tree]") {
  DiskTree first;
  Ino a = first.AddOrUpdate(Disk("A", "h/a"), nullptr);
  Ino b = first.AddOrUpdate(Disk("B", "h/b", "u-b"), nullptr);
  first.SetOnline("A", false);
  DiskTree::Identity id = first.identity();
  REQUIRE(id.disks.size() == 2);
  REQUIRE(id.dirs.size() == 1);  // by-label/h

  DiskTree second;
  REQUIRE(second.Restore(id));
  // Known but hidden until a span (or an open handle) brings them back.
  CHECK(second.InoOf("A") == a);
  CHECK(second.InoOf("B") == b);
  CHECK_FALSE(second.IsVisible(a));
  CHECK(Resolve(second, "xa1") == 0);
  CHECK(second.AddOrUpdate(Disk("B", "h/b", "u-b"), nullptr) == b);
  CHECK(Resolve(second, "xa1") == b);
  CHECK(Resolve(second, "by-label/h") == Resolve(first, "by-label/h"));
  // A serial never seen before gets a fresh inode and the next xaN.
  Ino c = second.AddOrUpdate(Disk("C"), nullptr);
  CHECK(c == id.next_ino);
  CHECK(second.XaName("C") == "xa2");
  // Offline registration keeps it hidden.
  CHECK(second.AddOrUpdate(Disk("A", "h/a"), nullptr, false) == a);
  CHECK_FALSE(second.IsVisible(a));
  second.OpenRef(a);
  CHECK(second.IsVisible(a));
  CHECK(Resolve(second, "xa0") == a);
}

TEST_CASE("an inconsistent identity is refused and changes nothing", "[disk_tree]") {
  DiskTree t;
  t.AddOrUpdate(Disk("A"), nullptr);
  t.AddOrUpdate(Disk("B"), nullptr);
  const DiskTree::Identity good = t.identity();

  auto refused = [](const DiskTree::Identity& id) {
    DiskTree fresh;
    bool ok = fresh.Restore(id);
    if (!ok) CHECK(fresh.InoOf("A") == 0);
    return !ok;
  };
  DiskTree::Identity id = good;
  id.disks[1].ino = id.disks[0].ino;  // two disks, one inode
  CHECK(refused(id));
  id = good;
  id.disks[1].xa = 0;  // two disks, one xaN
  CHECK(refused(id));
  id = good;
  id.disks[1].xa = 5;  // a hole in the xaN numbers
  CHECK(refused(id));
  id = good;
  id.disks[0].ino = kSernoIno;  // a reserved inode
  CHECK(refused(id));
  id = good;
  id.next_ino = id.disks[1].ino;  // would hand out an inode again
  CHECK(refused(id));
  id = good;
  id.dirs.push_back({"by-label/x", id.disks[0].ino, kByLabelIno});  // a disk's inode
  CHECK(refused(id));
  id = good;
  id.dirs.push_back({"by-label/x", id.next_ino - 1 + 10, id.disks[0].ino});
  id.next_ino += 20;  // parent is a disk
  CHECK(refused(id));
  // And a tree that already has disks takes no identity.
  CHECK_FALSE(t.Restore(good));
  DiskTree fresh;
  CHECK(fresh.Restore(good));
}

TEST_CASE("the identity hook hears new serials, directories and who is listed", "[disk_tree]") {
  DiskTree t;
  int calls = 0;
  t.SetIdentityHook([&] { calls++; });
  t.AddOrUpdate(Disk("A"), nullptr);
  CHECK(calls == 1);
  t.AddOrUpdate(Disk("A"), nullptr);  // known serial, nothing new
  CHECK(calls == 1);
  t.SetOnline("A", false);  // no longer listed
  CHECK(calls == 2);
  CHECK_FALSE(t.identity().disks[0].visible);
  t.SetOnline("A", true);
  CHECK(calls == 3);
  CHECK(t.identity().disks[0].visible);
  t.AddOrUpdate(Disk("A", "h/d"), nullptr);  // by-label/h is new
  CHECK(calls == 4);
}
