// Journal log framing: the pure codec under the journal's segment files
// (daemon/import/journal.h). No files, no loop: the encoder appends bytes to a
// buffer, the reader walks a byte span. The byte layout is specified in
// docs/journal-format.md, "Blocks and fragments"; it is LevelDB's log format
// (leveldb doc/log_format.md) with our own CRC-32C (proto/crc32c.h).
//
// A segment is a sequence of 32 KiB blocks (kBlockSize). A record's payload
// is cut into fragments, each with a 7-byte header:
//
//   offset 0  masked CRC-32C of the type byte and the payload, LE32
//   offset 4  payload length, LE16
//   offset 6  type: kFull, kFirst, kMiddle or kLast
//
// A fragment never crosses a block boundary. A record that fits the rest of
// the block is one kFull fragment; otherwise kFirst, any kMiddle, kLast.
// When fewer than kHeaderSize bytes are left in a block they are zero
// padding (a "trailer"), written just before the next fragment.
//
// Offsets here are absolute segment offsets (from the segment's first byte):
// the block position follows from them, so a reader can start at any
// record's first fragment, not only at offset 0.
//
// Thread safety: the functions are pure; a Reader is used by one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace xdisk::journal_log {

inline constexpr uint64_t kBlockSize = 32768;
inline constexpr uint64_t kHeaderSize = 7;
// The largest payload of one fragment.
inline constexpr uint64_t kMaxFragmentPayload = kBlockSize - kHeaderSize;

// Fragment types (header byte 6). 0 is never written: it is what a
// zero-filled region looks like.
enum class FragmentType : uint8_t { kFull = 1, kFirst = 2, kMiddle = 3, kLast = 4 };

// CRCs are stored masked, so that a CRC over data that itself contains CRCs
// does not degenerate (LevelDB's reasoning): rotate right by 15, add a
// constant.
inline constexpr uint32_t kCrcMaskDelta = 0xa282ead8u;
inline uint32_t MaskCrc(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + kCrcMaskDelta; }
inline uint32_t UnmaskCrc(uint32_t masked) {
  const uint32_t rot = masked - kCrcMaskDelta;
  return (rot >> 17) | (rot << 15);
}

// Where one record sits in a segment: the absolute offset of its first
// fragment header, and its framed length (from that header to the end of
// its last fragment, including headers and any trailer padding between its
// fragments).
struct Framed {
  uint64_t offset = 0;
  uint64_t framed_length = 0;
};

// The number of bytes AppendRecord() appends for a payload of
// `payload_size` bytes to a segment that is `segment_length` bytes long:
// leading trailer padding (if fewer than kHeaderSize bytes are left in the
// current block) plus the framed length.
uint64_t AppendedBytes(uint64_t segment_length, uint64_t payload_size);

// Appends to *out the bytes that add one record to the end of a segment that
// is `segment_length` bytes long; the payload is the concatenation of
// `pieces` (a gather list, so a caller can frame a small encoded prefix and
// a large data buffer without first joining them). Returns where the record
// lands. *out grows by exactly AppendedBytes(segment_length, total size).
Framed AppendRecord(uint64_t segment_length, std::span<const std::span<const uint8_t>> pieces,
                    std::vector<uint8_t>* out);
Framed AppendRecord(uint64_t segment_length, std::span<const uint8_t> payload,
                    std::vector<uint8_t>* out);

// The same bytes as AppendRecord(), without copying the payload: *out gets
// the record as a gather list (for writev) of spans over *headers (padding
// and fragment headers, appended to it) and over the caller's pieces.
// *headers is reserved here so that it does not move while spans point
// into it; both must outlive the use of *out. The CRCs are computed over
// the pieces in place.
Framed GatherRecord(uint64_t segment_length, std::span<const std::span<const uint8_t>> pieces,
                    std::vector<uint8_t>* headers, std::vector<std::span<const uint8_t>>* out);

// One record returned by the Reader. `payload` points into the reader's
// input (a kFull record) or into the reader's own buffer (a fragmented
// one); it is valid until the next call on the reader.
struct Record {
  uint64_t offset = 0;  // absolute offset of the first fragment header
  uint64_t framed_length = 0;
  std::span<const uint8_t> payload;
};

// A damaged region that the reader skipped: `bytes` bytes from absolute
// offset `offset` were dropped. Adjacent problems (a bad fragment, the rest
// of its block, orphaned fragments of the record it broke) are reported as
// one region, with the reason of the first.
struct Damage {
  uint64_t offset = 0;
  uint64_t bytes = 0;
  std::string reason;  // "checksum mismatch", "bad fragment type 9", ...
};

// The default limit on one record's payload: a fragmented record that grows
// past it is damage (this bounds the memory a hostile file can make the
// reader allocate).
inline constexpr uint64_t kDefaultMaxRecordBytes = 64ull << 20;

// Reader: walks the records of `input`, whose first byte is at absolute
// segment offset `base_offset`. The input must outlive the reader.
//
// Next() returns, in file order:
//   kRecord  a complete, checksummed record (*rec filled);
//   kDamage  a damaged region (*damage filled); reading may continue: the
//            reader has resynchronised;
//   kEnd     the end of the input; torn_bytes() then says whether it ended
//            inside a record. Every later call returns kEnd again.
//
// Outcomes:
//   - An incomplete record at the end of the input (a partial header, a
//     fragment longer than what is left, a kFirst with no kLast yet) is a
//     torn tail: kEnd, with torn_bytes() counting from the record's first
//     byte. So is a tail made only of zero bytes (a file system may show a
//     zero-filled tail after a power loss).
//   - A fragment with a bad type, a length that crosses its block, or a
//     checksum mismatch loses the framing: the region up to the next block
//     boundary is dropped (with the unfinished record it belonged to) and
//     reading resumes there.
//   - A well-formed fragment out of order (kMiddle/kLast with no kFirst
//     before it, or a kFirst/kFull while a record is unfinished) keeps the
//     framing: only the orphaned fragment, or the unfinished record, is
//     dropped.
class Reader {
 public:
  enum class Outcome { kRecord, kDamage, kEnd };

  Reader(std::span<const uint8_t> input, uint64_t base_offset,
         uint64_t max_record_bytes = kDefaultMaxRecordBytes);
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  Outcome Next(Record* rec, Damage* damage);

  // After kEnd: the input ended inside a record (or in a zero-filled tail),
  // and how many bytes from that record's start were ignored.
  bool torn_tail() const { return torn_bytes_ > 0; }
  uint64_t torn_bytes() const { return torn_bytes_; }

 private:
  // Notes damage [offset, offset+bytes); merges it with the damage not yet
  // returned (which it extends).
  void AddDamage(uint64_t offset, uint64_t bytes, std::string reason);
  // Framing lost at absolute offset `at`: drop the unfinished record and
  // everything up to the next block boundary.
  void Resync(uint64_t at, std::string reason);
  // The input from index `from` on is all zero bytes.
  bool ZeroTail(size_t from) const;
  // Ends the input at absolute offset `at` as a torn tail (or a clean end).
  void EndTorn(uint64_t at);

  std::span<const uint8_t> input_;
  uint64_t base_;
  uint64_t max_record_;
  size_t pos_ = 0;  // index into input_ of the next unread byte
  static constexpr size_t kUnknown = SIZE_MAX;
  mutable size_t nonzero_end_ = kUnknown;  // ZeroTail(): input_ is all zeros from here
  bool done_ = false;
  uint64_t torn_bytes_ = 0;
  // The record being assembled from kFirst/kMiddle fragments.
  bool in_record_ = false;
  uint64_t record_start_ = 0;
  std::vector<uint8_t> scratch_;
  // Damage found but not yet returned.
  bool have_damage_ = false;
  Damage damage_;
};

}  // namespace xdisk::journal_log
