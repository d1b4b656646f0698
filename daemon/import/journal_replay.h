// Journal replay: reading every record of a journal directory (scan), and
// turning what was read into the records still pending (replay). Open()
// and Dump() share the scan (daemon/import/journal.h); docs/journal-format.md,
// "Replay and damage", says what counts as damage.
//
// Scanning only reads: it never changes a file. Functions only; the loop
// thread calls them, at open and dump time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "daemon/import/journal.h"
#include "proto/status.h"

namespace xdisk::journal_replay {

enum class RecKind { kHeader, kRetire, kWrite, kTrim, kFlush };

// One valid record, where it is and what it says.
struct ScannedRecord {
  uint64_t segment = 0;        // segment number
  uint64_t offset = 0;         // of its first fragment header in the segment
  uint64_t framed_length = 0;  // as JournalLocation::framed_length
  RecKind kind = RecKind::kFlush;
  uint64_t seq = 0;
  uint64_t disk_offset = 0;  // write, trim
  uint64_t length = 0;       // write, trim
  uint64_t upto = 0;         // retire
  size_t header = 0;         // header: index into Scan::headers
};

// A disk header record's contents.
struct ScannedHeader {
  JournalDiskHeader disk;
  uint32_t version = 0;
};

// One segment file as the scan found it.
struct ScannedSegment {
  std::string boot_id;  // from its first disk header
  bool synced = false;
  bool have_header = false;
  uint64_t number = 0;
  std::string path;
  uint64_t size = 0;
  uint64_t max_seq = 0;     // highest data seq read from it
  bool damaged = false;     // some of it was dropped as damage
  uint64_t torn_bytes = 0;  // after its last complete record
};

// Everything read from one disk's directory, in file order.
struct Scan {
  std::vector<ScannedSegment> segments;
  std::vector<ScannedRecord> records;
  std::vector<ScannedHeader> headers;
  std::vector<JournalDamage> damage;
  uint64_t watermark = 0;  // highest retire record
  uint64_t max_seq = 0;    // highest data seq
};

struct ScanOptions {
  bool strict = false;  // damage is an error, not a report
  // Refuse header records that disagree with `expected` (or, without it,
  // with the first header read) or that have an unknown format version.
  bool check_headers = true;
  const JournalDiskHeader* expected = nullptr;
};

// Reads every segment of `disk_dir` in number order and every record in
// file order into *scan. Damage is collected in scan->damage, or with
// opts.strict returned as Corruption naming the file and offset. A header
// that opts.check_headers refuses is InvalidArgument. A torn tail is no
// damage: ScannedSegment::torn_bytes counts it.
Status ScanDisk(const std::string& disk_dir, const ScanOptions& opts, Scan* scan);

// "header", "retire", "write", "trim", "flush".
const char* KindName(RecKind k);
// "serial S size N blksize B", for messages.
std::string Describe(const JournalDiskHeader& h);
// Same serial, size and block size (the label may differ).
bool SameDisk(const JournalDiskHeader& a, const JournalDiskHeader& b);

// What replay keeps of a scan.
struct Replayed {
  std::vector<JournalPending> pending;  // in seq order
  // Well-formed pending writes and trims beyond the disk's end (in file
  // order): damage, and the segments that hold them are kept until
  // everything read at this open is retired (see keep_segments).
  std::vector<JournalDamage> damage;
  std::vector<uint64_t> keep_segments;
};
// The records of `scan` above its watermark that fit `header`'s disk, as
// pending records. With `strict`, a record beyond the disk's end is
// Corruption instead of damage.
Status ReplayPending(const Scan& scan, const JournalDiskHeader& header, bool strict,
                     const std::string& disk_dir, Replayed* out);

}  // namespace xdisk::journal_replay
