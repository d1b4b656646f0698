// Which spans the importer accepts (issue: bad inputs are logged, never fatal).
#include <catch2/catch.hpp>

#include "daemon/import/importer.h"

using namespace xdisk;
using namespace xdisk::dmsg;

namespace {
LnkSpan Span(std::string serial, uint64_t bytes = 1 << 20, uint32_t blksize = 512) {
  LnkSpan s;
  s.peer_type = kPeerBlock;
  s.pfs_label = std::move(serial);
  s.peer_label = "host/dev";
  s.media_bytes = bytes;
  s.blksize = blksize;
  return s;
}
std::string Why(const LnkSpan& s) {
  std::string serial, label;
  uint32_t blk;
  return CheckImportSpan(s, &serial, &label, &blk);
}
}  // namespace

TEST_CASE("a normal block span is importable", "[importer]") {
  std::string serial, label;
  uint32_t blk = 0;
  CHECK(CheckImportSpan(Span("disk1"), &serial, &label, &blk).empty());
  CHECK(serial == "disk1");
  CHECK(label == "host/dev");
  CHECK(blk == 512);
}

TEST_CASE("spans that cannot be imported say why", "[importer]") {
  CHECK_THAT(Why(Span("")), Catch::Contains("empty serial"));
  CHECK_THAT(Why(Span("a/b")), Catch::Contains("file name"));
  CHECK_THAT(Why(Span("..")), Catch::Contains("file name"));
  CHECK_THAT(Why(Span("x\x01y")), Catch::Contains("control"));
  CHECK_THAT(Why(Span("d", 0)), Catch::Contains("zero-size"));
  CHECK_THAT(Why(Span("d", 1 << 20, 0)), Catch::Contains("block size"));
  CHECK_THAT(Why(Span("d", 1 << 20, 1000)), Catch::Contains("block size"));
  CHECK_THAT(Why(Span("d", 511, 512)), Catch::Contains("less than one block"));
  CHECK(Why(Span("d", 1000, 512)).empty());  // presented as 512 bytes
  LnkSpan hammer = Span("d");
  hammer.peer_type = kPeerHammer2;
  CHECK_THAT(Why(hammer), Catch::Contains("not a block device"));
}

TEST_CASE("oversize serials and labels are cut to 63 characters, as xdisk does", "[importer]") {
  LnkSpan s = Span(std::string(127, 's'));
  s.peer_label = std::string(100, 'l');
  std::string serial, label;
  uint32_t blk;
  CHECK(CheckImportSpan(s, &serial, &label, &blk).empty());
  CHECK(serial.size() == 63);
  CHECK(label.size() == 63);
}
