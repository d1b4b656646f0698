// The FUSE protocol bytes the server handles itself (fusedev/fuse_wire.h).
#include "fusedev/fuse_wire.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <string>

using namespace xdisk::fusedev;

namespace {

void Put32(std::string& b, size_t at, uint32_t v) { memcpy(b.data() + at, &v, 4); }

// A FUSE_INIT request as the kernel writes it: header, then fuse_init_in
// (64 bytes from protocol 7.36 on).
std::string Init(uint32_t minor, uint32_t flags, uint32_t flags2, size_t body = 64) {
  std::string b(wire::kInHeaderSize + body, '\0');
  Put32(b, 0, static_cast<uint32_t>(b.size()));
  Put32(b, 4, wire::kOpInit);
  uint64_t unique = 2;
  memcpy(b.data() + 8, &unique, 8);
  const uint32_t fields[] = {7, minor, 131072, flags, flags2};
  for (size_t i = 0; i < 5 && 4 * (i + 1) <= body; i++) Put32(b, 40 + 4 * i, fields[i]);
  return b;
}

}  // namespace

TEST_CASE("FUSE_INIT announces resend in bit 7 of flags2, read only with INIT_EXT", "[fuse_wire]") {
  wire::InitRequest r;
  REQUIRE(wire::ParseInitRequest(Init(45, 1u << 30, 1u << 7), &r));
  CHECK(r.major == 7);
  CHECK(r.minor == 45);
  CHECK(r.has_resend());
  // Without FUSE_INIT_EXT the second word is not flags2.
  REQUIRE(wire::ParseInitRequest(Init(45, 0, 1u << 7), &r));
  CHECK_FALSE(r.has_resend());
  // An older kernel: the short body of protocol 7.35.
  REQUIRE(wire::ParseInitRequest(Init(31, 1u << 3, 0, 16), &r));
  CHECK(r.flags == (1u << 3));
  CHECK_FALSE(r.has_resend());
}

TEST_CASE("anything but a whole FUSE_INIT is refused", "[fuse_wire]") {
  wire::InitRequest r;
  std::string ok = Init(45, 1u << 30, 1u << 7);
  CHECK_FALSE(wire::ParseInitRequest(ok.substr(0, 39), &r));  // short header
  CHECK_FALSE(wire::ParseInitRequest(ok.substr(0, ok.size() - 1), &r));  // len disagrees
  std::string other = ok;
  Put32(other, 4, 15);  // FUSE_READ
  CHECK_FALSE(wire::ParseInitRequest(other, &r));
  std::string tiny = Init(45, 0, 0, 8);  // body without flags
  CHECK_FALSE(wire::ParseInitRequest(tiny, &r));
}

TEST_CASE("the header gives opcode and unique, with the resend bit", "[fuse_wire]") {
  std::string b = Init(45, 0, 0);
  uint64_t unique = wire::kUniqueResent | 77;
  memcpy(b.data() + 8, &unique, 8);
  wire::InHeader h;
  REQUIRE(wire::ParseInHeader(b, &h));
  CHECK(h.opcode == wire::kOpInit);
  CHECK(h.len == b.size());
  CHECK((h.unique & wire::kUniqueResent) != 0);
  CHECK((h.unique & ~wire::kUniqueResent) == 77);
  CHECK_FALSE(wire::ParseInHeader(b.substr(0, 20), &h));
}

TEST_CASE("FUSE_NOTIFY_RESEND is a bare 16-byte notification with code 7", "[fuse_wire]") {
  auto n = wire::ResendNotification();
  const uint8_t want[16] = {16, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  CHECK(memcmp(n.data(), want, 16) == 0);
}
