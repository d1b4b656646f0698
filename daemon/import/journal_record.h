// Journal records: the constants of the record format and the hand-made
// encoding of a write record's head (docs/journal-format.md describes the
// records; proto/journal.proto defines them; proto/journal_log.h frames
// them). Pure: no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "proto/journal_log.h"

namespace xdisk::journal_record {

// The disk header's format version this program writes and reads.
constexpr uint32_t kFormatVersion = 1;
// The largest record payload replay and read-back accept.
constexpr uint64_t kMaxRecordBytes = journal_log::kDefaultMaxRecordBytes;
// Seqs and watermarks above this in a file are damage: a journal's next
// seq (the highest one read + 1) must never overflow, whatever a hostile
// file says.
constexpr uint64_t kMaxSeq = 1ull << 62;

// The protobuf encoding of JournalRecord{seq, write{offset, data}} up to
// the first data byte, for data of `size` bytes: exactly what
// SerializeToString() makes of the whole record minus the data itself, so
// that the data can be framed straight from the caller's buffer. Writes at
// most kWritePrefixMax bytes to `out`; returns how many.
constexpr size_t kWritePrefixMax = 4 * (1 + 10);
size_t EncodeWritePrefix(uint64_t seq, uint64_t offset, uint64_t size, uint8_t* out);

// The bytes of a string, as a span.
inline std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace xdisk::journal_record
