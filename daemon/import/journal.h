// Journal: the persistent record of one imported disk's outstanding
// requests (docs/journal-format.md has the byte layout and the guarantees).
//
// One journal per disk, in DIR/<serial>/, as numbered segment files
// ("000001.log", ...). Each segment is a LevelDB-style log
// (proto/journal_log.h): 32 KiB blocks of CRC-checked fragments; record
// payloads are JournalRecord protobuf messages (proto/journal.proto). Every
// segment starts with a disk header record and a retire record carrying the
// current retire watermark, so older segments can be deleted whole.
//
// Records carry a sequence number (seq), strictly increasing over the life
// of the journal, also across restarts. A record is *pending* until it is
// retired; retirement is always a prefix: Retire(upto) retires every record
// with seq <= upto. Because of that the journal never needs compaction by
// copying: a segment whose last seq is <= the watermark is deleted, and what
// remains is the pending records plus at most one partly retired segment.
//
// Appends are plain write(2)s on the calling (loop) thread: they land in the
// page cache and are durable only after a sync. Group commit: PrepareSync()
// (loop thread) hands out duplicated descriptors of every segment written
// since the previous PrepareSync(), RunSync() (any thread, the libuv
// threadpool in the daemon) fdatasyncs them, and SyncDone() (loop thread)
// advances durable_seq(). Descriptors are duplicated so that a segment
// deleted meanwhile cannot pull a descriptor from under a running sync.
//
// Read-your-writes: the journal keeps an index of the disk ranges that
// pending writes and trims cover (newest wins, daemon/import/range_index.h).
// Covered() and Overlay() answer reads from it; write data is read back
// from the segment files.
//
// Damage: replay (Open) treats a torn final record as a clean end; a
// damaged region in the middle is skipped to the next block and reported in
// ReplayReport, or makes Open fail with Status::Corruption if strict.
//
// Threading: one thread (the loop) for everything except RunSync().
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "daemon/import/range_index.h"
#include "proto/status.h"

namespace xdisk {

struct JournalConfig {
  std::string dir;                       // the journal root (--journal)
  uint64_t max_bytes = 1ull << 30;       // --journal-max: full() above this
  uint64_t segment_bytes = 64ull << 20;  // roll to a new segment past this
  bool strict = false;                   // --journal-strict
  // Appends become durable by group commit before they count (write-back).
  // Without it (--sync=remote), records are never fsynced: after a reboot
  // (power loss) their segments may have kept an older record and lost a
  // newer one, so Open() drops what such segments left pending instead of
  // letting it be resent over newer data (ReplayReport::stale_dropped).
  bool synced = false;
};

struct JournalDiskHeader {
  std::string serial;
  uint64_t size = 0;
  uint32_t blksize = 512;
  std::string label;
};

enum class JournalRecordKind { kWrite, kTrim, kFlush };

// Where a record's framed bytes sit: segment number and byte offset of the
// record's first fragment header, and the framed length (headers, padding
// skipped inside it, payload).
struct JournalLocation {
  uint64_t segment = 0;
  uint64_t offset = 0;
  uint64_t framed_length = 0;
};

struct JournalPending {
  uint64_t seq = 0;
  JournalRecordKind kind = JournalRecordKind::kWrite;
  uint64_t offset = 0;  // disk offset (write, trim)
  uint64_t length = 0;  // data length (write) or trimmed length; 0 for flush
  JournalLocation loc;
};

struct JournalDamage {
  uint64_t segment = 0;
  uint64_t offset = 0;  // first damaged byte in the segment
  uint64_t bytes = 0;   // bytes dropped
  std::string reason;   // "checksum mismatch", "bad fragment type 7", ...
};

struct ReplayReport {
  uint64_t segments = 0;
  uint64_t records = 0;        // valid records read
  uint64_t pending = 0;        // records left pending after replay
  uint64_t pending_bytes = 0;  // write data bytes among them
  bool torn_tail = false;      // the last segment ended inside a record
  uint64_t torn_bytes = 0;
  std::vector<JournalDamage> damage;  // mid-segment damage, skipped
  uint64_t stale_dropped = 0;         // pending records of unsynced segments of an earlier boot
  std::string ToString() const;       // one line for the log
};

class Journal {
 public:
  // Opens (creating if needed) DIR/<header.serial>/ and replays what is
  // there. A journal written for a different disk (serial, size or blksize
  // differ from `header`) is an InvalidArgument error. A fresh journal gets
  // its header record at once. A journal is locked (flock) while a Journal
  // object has it open: a second open is Unavailable. New records always
  // go to a new segment; if that cannot be created (a full or read-only
  // file system), the journal still opens, failed() (no appends), with
  // what it replayed pending: the caller sends and retires it, and the
  // segments go once nothing is pending (on a read-only file system they
  // cannot, and gone() stays false).
  static Result<std::unique_ptr<Journal>> Open(const JournalConfig& config,
                                               const JournalDiskHeader& header,
                                               ReplayReport* report);
  // Opens an existing journal for `serial`, taking the disk header from it
  // (used at daemon start to put disks with pending records in the tree).
  // NotFound if there is no directory or no segment in it.
  static Result<std::unique_ptr<Journal>> OpenExisting(const JournalConfig& config,
                                                       const std::string& serial,
                                                       ReplayReport* report);
  // Serials that have a journal directory under `dir` (sorted). A missing
  // `dir` is an empty list.
  static Result<std::vector<std::string>> ListDisks(const std::string& dir);
  // Whether DIR/<serial>/ may hold records: false only if it is missing or
  // readable and without segments. For a journal that Open() refused: its
  // records must not be bypassed and later resent over newer writes.
  static bool MayHoldRecords(const std::string& dir, const std::string& serial);
  // Human-readable listing of every record of every journal under `dir`
  // (or of the one journal if `dir` is a disk's directory) and a summary
  // per disk: for `xdisk-fuse --journal-dump DIR`.
  static Status Dump(const std::string& dir, std::string* out);

  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  const JournalDiskHeader& header() const { return header_; }

  // Appends one record; returns its seq. IoError if the write fails (the
  // journal then refuses further appends: the caller stops journaling).
  // A write or trim must lie inside the disk (header().size), and one
  // write's data is at most kMaxWriteBytes: InvalidArgument otherwise, with
  // nothing appended and the journal still usable.
  Result<uint64_t> AppendWrite(uint64_t offset, std::span<const uint8_t> data);
  Result<uint64_t> AppendTrim(uint64_t offset, uint64_t length);
  Result<uint64_t> AppendFlush();
  // Appends are refused after a failed append or new segment, or Fail();
  // failure() says why.
  bool failed() const { return failed_; }
  const std::string& failure() const { return failure_; }
  // Refuses appends from now on (the daemon no longer trusts the journal,
  // say after a failed fdatasync). What is pending stays and is retired as
  // usual. No-op if already failed.
  void Fail(const std::string& why);
  // A failed journal with nothing pending deletes every segment file, so
  // nothing of it can be replayed later; returns the first deletion error.
  // No-op otherwise (Retire() does the same as records drain).
  Status DeleteIfDrained();
  // A failed journal whose every file is deleted, durably (the directory
  // synced): nothing of it can replay, even after a power loss.
  bool gone() const { return segments_.empty() && !dir_dirty_; }
  // Retires every record with seq <= upto (no-op if upto <= watermark):
  // appends a retire record, drops them from pending() and the index, and
  // deletes segments that hold nothing pending.
  // `upto` above last_seq() is taken as last_seq() (a seq not yet handed
  // out must never count as retired). An error status means the retirement
  // happened in memory but was not (fully) recorded on disk. After an
  // append failure Retire still works in memory and deletes what it can;
  // its retire record is then written on a best-effort basis (failures not
  // reported), and once nothing is pending every segment is deleted, so
  // that a journal switched off leaves nothing stale behind.
  Status Retire(uint64_t upto);
  // Removes the disk's directory if nothing is pending (clean shutdown);
  // does nothing (OK) otherwise. After a removal the journal refuses
  // appends; only destruction is left.
  Status RemoveIfEmpty();

  // Group commit (see the file comment). Several batches may be in flight;
  // durable_seq() advances to a batch's upto_seq only once it and every
  // batch prepared before it are done. REQUIRES: SyncDone() only for a batch
  // whose RunSync() succeeded. After a failed RunSync() durability is
  // unknown (fsync errors are not retryable on Linux): the caller must stop
  // journaling, and durable_seq() never passes that batch.
  struct SyncBatch {
    std::vector<int> fds;   // duplicated; RunSync closes them
    int dir_fd = -1;        // duplicated directory fd if a segment was created
    uint64_t upto_seq = 0;  // every record <= this is durable when RunSync succeeds
  };
  SyncBatch PrepareSync();
  static Status RunSync(SyncBatch* batch);
  void SyncDone(const SyncBatch& batch);
  uint64_t durable_seq() const { return durable_seq_; }

  uint64_t last_seq() const { return next_seq_ - 1; }
  uint64_t retired_seq() const { return retired_seq_; }

  // Largest data of one AppendWrite() (records are bounded so that a
  // hostile journal cannot make replay allocate without limit).
  static constexpr uint64_t kMaxWriteBytes = (64ull << 20) - 64;

  // Pending records in seq order.
  const std::deque<JournalPending>& pending() const { return pending_; }
  // The data of a pending write record (read back from its segment).
  Result<std::vector<uint8_t>> ReadWriteData(const JournalPending& rec);

  // Read-your-writes. Covered(): bytes of [offset, offset+length) that
  // pending writes or trims cover. Overlay(): copies the newest pending data
  // for every covered byte of [offset, offset+buf.size()) into buf (zeros
  // for trimmed ranges), leaves other bytes alone.
  uint64_t Covered(uint64_t offset, uint64_t length) const;
  Status Overlay(uint64_t offset, std::span<uint8_t> buf);
  // The covered parts of [offset, offset+length) as [start, end) disk
  // ranges in ascending order (adjacent pieces merged).
  std::vector<std::pair<uint64_t, uint64_t>> CoveredRanges(uint64_t offset, uint64_t length) const;

  uint64_t bytes_on_disk() const { return bytes_on_disk_; }  // all segment files
  uint64_t pending_bytes() const { return pending_bytes_; }  // write data pending
  bool full() const { return bytes_on_disk_ >= config_.max_bytes; }

 private:
  struct Segment;  // one open segment file (journal.cc)

  Journal(JournalConfig config, JournalDiskHeader header, std::string disk_dir);
  // Open() and OpenExisting(): `expected` is the caller's header, or null to
  // take it from the journal (which must then exist).
  static Result<std::unique_ptr<Journal>> OpenDisk(const JournalConfig& config,
                                                   const std::string& serial,
                                                   const JournalDiskHeader* expected,
                                                   ReplayReport* report);
  // Creates the next segment and writes its header and retire records.
  Status StartSegment();
  // Allocates the current segment's blocks up to at least `end`, ahead.
  void Preallocate(Segment& seg, uint64_t end);
  // Frames the payload (the concatenation of `pieces`) and writes it to the
  // current segment, rolling to a new one first if `may_roll` and the
  // current one is past segment_bytes. `even_if_failed`: try although an
  // earlier append failed (best-effort retire records).
  Status AppendPayload(std::span<const std::span<const uint8_t>> pieces, bool may_roll,
                       bool even_if_failed, JournalLocation* loc);
  // Appends a data record (write, trim, flush) and indexes it.
  Result<uint64_t> AppendData(JournalRecordKind kind, uint64_t offset, uint64_t length,
                              std::span<const std::span<const uint8_t>> payload);
  // Deletes the non-current segments whose records are all retired (every
  // segment once a failed journal has nothing pending).
  Status DeleteRetiredSegments();
  const JournalPending* FindPending(uint64_t seq) const;

  JournalConfig config_;
  JournalDiskHeader header_;
  std::string disk_dir_;
  int dir_fd_ = -1;  // disk_dir_, for fsync after creating or deleting segments
  std::map<uint64_t, std::unique_ptr<Segment>> segments_;  // by number; last is current
  std::deque<JournalPending> pending_;
  // Pending writes and trims by disk range; a write's data for a piece
  // starting at `start` is at start - its record's offset.
  RangeIndex index_;
  uint64_t next_seq_ = 1;
  uint64_t retired_seq_ = 0;
  uint64_t durable_seq_ = 0;
  uint64_t bytes_on_disk_ = 0;
  uint64_t pending_bytes_ = 0;
  bool failed_ = false;
  std::string failure_;  // why appends are refused
  bool dir_dirty_ = false;
  // Batches handed out by PrepareSync() and not yet all done, in order:
  // (upto_seq, done).
  std::deque<std::pair<uint64_t, bool>> syncs_;
  // Reused by every append: padding and fragment headers, and the gather
  // list over them and the caller's payload.
  std::vector<uint8_t> frame_buf_;
  std::vector<std::span<const uint8_t>> gather_;
  std::vector<uint8_t> read_buf_;  // reused by every read-back
  std::string encode_buf_;         // reused for small records
};

}  // namespace xdisk
