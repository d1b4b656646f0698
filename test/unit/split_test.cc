// SplitOn (daemon/base/split.h): the pieces of the kernel's lists and tables.
#include "daemon/base/split.h"

#include <catch2/catch.hpp>
#include <string>
#include <string_view>
#include <vector>

using xdisk::SplitOn;
using V = std::vector<std::string_view>;

TEST_CASE("SplitOn: pieces between separators, none after a final one", "[split]") {
  CHECK(SplitOn("", ' ').empty());
  CHECK(SplitOn("a", ' ') == V{"a"});
  CHECK(SplitOn("a b", ' ') == V{"a", "b"});
  // A NUL-terminated list (/proc/self/cmdline) has as many pieces as entries.
  const std::string cmdline(
      "xdisk-fuse\0--port\0"
      "987\0",
      22);
  CHECK(SplitOn(cmdline, '\0') == V{"xdisk-fuse", "--port", "987"});
  // Two separators in a row keep the empty piece between them, so fields
  // keep their positions; a leading separator gives an empty first piece.
  CHECK(SplitOn("a  b", ' ') == V{"a", "", "b"});
  CHECK(SplitOn(" a", ' ') == V{"", "a"});
  CHECK(SplitOn("l1\nl2\n", '\n') == V{"l1", "l2"});
}
