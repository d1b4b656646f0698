#include "fusedev/fuse_wire.h"

#include <cstring>

namespace xdisk::fusedev::wire {

namespace {

uint32_t U32(std::string_view b, size_t at) {
  uint32_t v;
  memcpy(&v, b.data() + at, sizeof v);
  return v;
}

}  // namespace

bool ParseInHeader(std::string_view bytes, InHeader* out) {
  if (bytes.size() < kInHeaderSize) return false;
  out->len = U32(bytes, 0);
  out->opcode = U32(bytes, 4);
  memcpy(&out->unique, bytes.data() + 8, sizeof out->unique);
  return true;
}

bool ParseInitRequest(std::string_view bytes, InitRequest* out) {
  InHeader h;
  // major, minor, max_readahead and flags are in every protocol version.
  if (!ParseInHeader(bytes, &h) || h.opcode != kOpInit || h.len != bytes.size() ||
      bytes.size() < kInHeaderSize + 16)
    return false;
  out->major = U32(bytes, 40);
  out->minor = U32(bytes, 44);
  out->flags = U32(bytes, 52);
  if ((out->flags & kFlagInitExt) && bytes.size() >= kInHeaderSize + 20)
    out->flags |= static_cast<uint64_t>(U32(bytes, 56)) << 32;
  return true;
}

std::array<uint8_t, 16> ResendNotification() {
  std::array<uint8_t, 16> b{};
  uint32_t len = 16;
  int32_t code = kNotifyResend;
  memcpy(b.data(), &len, 4);
  memcpy(b.data() + 4, &code, 4);
  return b;  // unique stays 0: a notification
}

}  // namespace xdisk::fusedev::wire
