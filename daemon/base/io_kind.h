// IoKind: the four block requests, and the one ordering rule both ends of
// a disk keep (the importer's RequestQueue, the exporter's LocalDisk).
#pragma once

#include <cstdint>
#include <memory>

namespace xdisk {

enum class IoKind : uint8_t { kRead, kWrite, kFlush, kTrim };
constexpr int kIoKinds = 4;  // IoKind values are 0..kIoKinds-1 (stats arrays)

// The kinds that change the disk's contents.
constexpr bool Modifies(IoKind k) { return k == IoKind::kWrite || k == IoKind::kTrim; }

constexpr const char* IoKindName(IoKind k) {
  switch (k) {
    case IoKind::kRead:
      return "read";
    case IoKind::kWrite:
      return "write";
    case IoKind::kFlush:
      return "flush";
    case IoKind::kTrim:
      return "trim";
  }
  return "request";
}

// Two requests keep their order when their byte ranges overlap and at
// least one of them modifies data. Reads among themselves, and anything
// without a range (a flush), never wait for each other on this account.
constexpr bool MustKeepOrder(IoKind a, uint64_t a_off, uint64_t a_len, IoKind b, uint64_t b_off,
                             uint64_t b_len) {
  if (!Modifies(a) && !Modifies(b)) return false;
  if (a_len == 0 || b_len == 0) return false;
  return a_off < b_off + b_len && b_off < a_off + a_len;
}

// A new request record of type Op (anything with kind, offset and length
// members: the importer's and the exporter's) for one block request.
template <typename Op>
std::unique_ptr<Op> NewIoOp(IoKind kind, uint64_t offset, uint64_t length) {
  auto op = std::make_unique<Op>();
  op->kind = kind;
  op->offset = offset;
  op->length = length;
  return op;
}

}  // namespace xdisk
