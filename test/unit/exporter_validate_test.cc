// Request validation and error mapping of the exporter (spec §7.4, §7.6).
#include <catch2/catch.hpp>

#include "daemon/export/exporter.h"

using namespace xdisk;
using namespace xdisk::dmsg;

namespace {
BlkIo Io(uint64_t off, uint32_t n) {
  BlkIo io;
  io.offset = off;
  io.bytes = n;
  return io;
}
constexpr uint64_t kSize = 1 << 20;
}  // namespace

TEST_CASE("valid requests pass validation", "[exporter]") {
  CHECK(ValidateBlkRequest(kBlkRead, Io(0, 512), kSize, 512, false).error == 0);
  CHECK(ValidateBlkRequest(kBlkWrite, Io(kSize - 4096, 4096), kSize, 512, false).error == 0);
  CHECK(ValidateBlkRequest(kBlkRead, Io(0, kSize), kSize, 512, false).error == 0);  // 1 MiB
  CHECK(ValidateBlkRequest(kBlkFreeblks, Io(0, kSize), kSize, 512, false).error == 0);
  // A flush's range is not looked at (DragonFly sends the bio's, normally 0).
  CHECK(ValidateBlkRequest(kBlkFlush, Io(12345, 1), kSize, 512, false).error == 0);
  CHECK(ValidateBlkRequest(kBlkFlush, Io(0, 0), kSize, 512, true).error == 0);
  CHECK(ValidateBlkRequest(kBlkRead, Io(0, 512), kSize, 512, true).error == 0);
}

TEST_CASE("bad ranges and lengths are DMSG_ERR_PARAM", "[exporter]") {
  CHECK(ValidateBlkRequest(kBlkRead, Io(0, 0), kSize, 512, false).error == kErrParam);
  CHECK(ValidateBlkRequest(kBlkRead, Io(1, 512), kSize, 512, false).error == kErrParam);
  CHECK(ValidateBlkRequest(kBlkRead, Io(0, 100), kSize, 512, false).error == kErrParam);
  CHECK(ValidateBlkRequest(kBlkRead, Io(512, 512), kSize, 4096, false).error == kErrParam);
  CHECK(ValidateBlkRequest(kBlkRead, Io(kSize, 512), kSize, 512, false).error == kErrParam);
  CHECK(ValidateBlkRequest(kBlkRead, Io(kSize - 512, 1024), kSize, 512, false).error == kErrParam);
  CHECK(ValidateBlkRequest(kBlkRead, Io(~0ull - 511, 512), kSize, 512, false).error == kErrParam);
  CHECK(ValidateBlkRequest(kBlkWrite, Io(0, (1 << 20) + 512), 4 * kSize, 512, false).error ==
        kErrParam);
  CHECK(ValidateBlkRequest(kBlkFreeblks, Io(0, 0), kSize, 512, false).error == kErrParam);
}

TEST_CASE("writes and trims on a read-only export are DMSG_ERR_IO", "[exporter]") {
  CHECK(ValidateBlkRequest(kBlkWrite, Io(0, 512), kSize, 512, true).error == kErrIo);
  CHECK(ValidateBlkRequest(kBlkFreeblks, Io(0, 512), kSize, 512, true).error == kErrIo);
}

TEST_CASE("device errors map to DMSG_ERR_IO, bad parameters to PARAM", "[exporter]") {
  CHECK(DmsgErrorFor(Status::Ok()) == 0);
  CHECK(DmsgErrorFor(Status::FromErrno(EIO, "pread")) == kErrIo);
  CHECK(DmsgErrorFor(Status::FromErrno(ENOSPC, "pwrite")) == kErrIo);
  CHECK(DmsgErrorFor(Status::InvalidArgument("range")) == kErrParam);
}
