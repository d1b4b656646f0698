// DiskPaths: which path an imported disk opens on.
#include "daemon/import/disk_paths.h"

#include <catch2/catch.hpp>
#include <set>

using namespace xdisk;

namespace {
// Links are only compared, never dereferenced: fake addresses do.
Link* FakeLink(uintptr_t n) { return reinterpret_cast<Link*>(n * 64); }
}  // namespace

TEST_CASE("the lowest dist among links that are up wins; the older wins a tie", "[disk_paths]") {
  std::set<const Link*> down;
  DiskPaths paths([&](const Link* l) { return down.count(l) == 0; });
  CHECK(paths.Best() == nullptr);
  paths.Add(DiskPath{1, FakeLink(1), nullptr, 2});  // through two relays
  paths.Add(DiskPath{2, FakeLink(2), nullptr, 1});
  paths.Add(DiskPath{3, FakeLink(3), nullptr, 1});
  REQUIRE(paths.Best() != nullptr);
  CHECK(paths.Best()->span_id == 2);
  down.insert(FakeLink(2));  // its link is going: the other dist-1 path
  CHECK(paths.Best()->span_id == 3);
  down.insert(FakeLink(3));
  CHECK(paths.Best()->span_id == 1);
  down.insert(FakeLink(1));
  CHECK(paths.Best() == nullptr);
  CHECK(paths.size() == 3);  // down links' paths stay until their spans go
}

TEST_CASE("removing a path", "[disk_paths]") {
  DiskPaths paths([](const Link*) { return true; });
  paths.Add(DiskPath{7, FakeLink(1), nullptr, 0});
  paths.Add(DiskPath{8, FakeLink(2), nullptr, 0});
  CHECK_FALSE(paths.Remove(9));
  CHECK(paths.Remove(7));
  CHECK(paths.Best()->span_id == 8);
  CHECK(paths.Remove(8));
  CHECK(paths.empty());
  CHECK(paths.Best() == nullptr);
}
