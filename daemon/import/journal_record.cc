// Journal records (the contract is in journal_record.h).
#include "daemon/import/journal_record.h"

namespace xdisk::journal_record {
namespace {

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

uint8_t* PutVarint(uint8_t* p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<uint8_t>(v);
  return p;
}

}  // namespace

// Writes are the hot path: encoding this prefix by hand lets the data go
// from the caller's buffer straight into the framed output (one copy)
// instead of through a message and a serialized string. The bytes are
// exactly what SerializeToString() makes (fields in number order, proto3
// zero values omitted); journal_test checks that. kWritePrefixMax: four
// tags of one byte and four varints of at most ten.
size_t EncodeWritePrefix(uint64_t seq, uint64_t offset, uint64_t size, uint8_t* out) {
  uint8_t* p = out;
  const uint64_t write_len =
      (offset ? 1 + VarintSize(offset) : 0) + (size ? 1 + VarintSize(size) + size : 0);
  if (seq) {
    *p++ = 0x08;  // JournalRecord.seq = 1, varint
    p = PutVarint(p, seq);
  }
  *p++ = 0x1a;  // JournalRecord.write = 3, length-delimited
  p = PutVarint(p, write_len);
  if (offset) {
    *p++ = 0x08;  // Write.offset = 1, varint
    p = PutVarint(p, offset);
  }
  if (size) {
    *p++ = 0x12;  // Write.data = 2, length-delimited
    p = PutVarint(p, size);
  }
  return static_cast<size_t>(p - out);
}

}  // namespace xdisk::journal_record
