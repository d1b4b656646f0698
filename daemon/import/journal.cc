// Journal: opening (lock, scan, adopt what replay keeps), appends,
// retirement and segment deletion, group commit and read-back. The
// contract is in journal.h; the byte layout, the rules and the guarantees
// are in docs/journal-format.md. Beside it: journal_files.cc (system
// calls), journal_record.cc (the write record's head), journal_replay.cc
// (scan and replay), journal_dump.cc (--journal-dump) and range_index.cc
// (the read-your-writes index).
#include "daemon/import/journal.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "daemon/import/journal_files.h"
#include "daemon/import/journal_record.h"
#include "daemon/import/journal_replay.h"
#include "proto/journal.pb.h"
#include "proto/journal_log.h"

namespace xdisk {
namespace {

namespace jpb = ::xdisk::journal;
using namespace journal_files;
using namespace journal_record;
using namespace journal_replay;

// Reads back the record at rec.loc from the segment open as `fd` and checks
// that it is the write it should be. `scratch` holds the framed bytes.
Status ReadWriteRecord(int fd, const std::string& path, const JournalPending& rec,
                       std::vector<uint8_t>* scratch, jpb::JournalRecord* msg) {
  const JournalLocation& loc = rec.loc;
  const std::string where = "journal: " + At(path, loc.offset);
  if (rec.kind != JournalRecordKind::kWrite)
    return Status::InvalidArgument(where + ": record " + std::to_string(rec.seq) +
                                   " is not a write");
  if (loc.framed_length == 0 ||
      loc.framed_length > journal_log::AppendedBytes(loc.offset, kMaxRecordBytes))
    return Status::Corruption(where + ": implausible record length " +
                              std::to_string(loc.framed_length));
  scratch->resize(loc.framed_length);
  if (Status st = PreadAll(fd, *scratch, path, loc.offset); !st.ok()) return st;
  journal_log::Reader reader(*scratch, loc.offset, kMaxRecordBytes);
  journal_log::Record r;
  journal_log::Damage d;
  const auto outcome = reader.Next(&r, &d);
  if (outcome == journal_log::Reader::Outcome::kDamage)
    return Status::Corruption(where + ": " + d.reason);
  if (outcome != journal_log::Reader::Outcome::kRecord || r.offset != loc.offset ||
      r.framed_length != loc.framed_length)
    return Status::Corruption(where + ": no complete record there");
  if (!msg->ParseFromArray(r.payload.data(), static_cast<int>(r.payload.size())))
    return Status::Corruption(where + ": unparseable record");
  if (msg->seq() != rec.seq || msg->body_case() != jpb::JournalRecord::kWrite ||
      msg->write().offset() != rec.offset || msg->write().data().size() != rec.length)
    return Status::Corruption(where + ": not the write with seq " + std::to_string(rec.seq));
  return Status::Ok();
}

}  // namespace

// ---- Journal ----

struct Journal::Segment {
  Segment() = default;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment() {
    if (fd >= 0) close(fd);
  }
  uint64_t number = 0;
  std::string path;
  int fd = -1;  // read-only for older segments, read-write for the current one
  uint64_t size = 0;
  // Highest seq of a data record that may be in it: it can be deleted once
  // the watermark reaches this.
  uint64_t last_seq = 0;
  bool dirty = false;  // written since the last PrepareSync()
  // Blocks allocated ahead of `size` (FALLOC_FL_KEEP_SIZE): writing into
  // them skips the file system's delayed allocation on every page.
  uint64_t preallocated = 0;
  bool preallocate = true;  // false once the file system refused
};

namespace {
// Blocks are allocated this far ahead of the records; at most this much
// lies allocated past a segment's end, until it is deleted.
constexpr uint64_t kPreallocateBytes = 8u << 20;
}  // namespace

void Journal::Preallocate(Segment& seg, uint64_t end) {
  // Without it, each journal write into a new file costs the file system's
  // delayed allocation and reservation per page: on ext4 the page-cache
  // copy ran at 4.2 GB/s into a new file and at 5.6 GB/s into preallocated
  // blocks. KEEP_SIZE leaves the file's size, and so replay, unchanged.
  // Best effort: a file system without it, or short of space, just writes.
  // Never past the segment's roll size (small segments under a small
  // --journal-max stay small), and a failed call gives back what it got.
  if (!seg.preallocate || end <= seg.preallocated) return;
  const uint64_t limit = std::max(end, config_.segment_bytes);
  const uint64_t want =
      std::min(std::max(end, seg.preallocated + kPreallocateBytes), limit) - seg.preallocated;
  const auto at = static_cast<off_t>(seg.preallocated);
  if (fallocate(seg.fd, FALLOC_FL_KEEP_SIZE, at, static_cast<off_t>(want)) != 0) {
    seg.preallocate = false;
    if (static_cast<uint64_t>(at) >= seg.size)
      (void)fallocate(seg.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at,
                      static_cast<off_t>(want));
    return;
  }
  seg.preallocated += want;
}

Journal::Journal(JournalConfig config, JournalDiskHeader header, std::string disk_dir)
    : config_(std::move(config)), header_(std::move(header)), disk_dir_(std::move(disk_dir)) {}

Journal::~Journal() {
  segments_.clear();
  if (dir_fd_ >= 0) close(dir_fd_);
}

Result<std::unique_ptr<Journal>> Journal::Open(const JournalConfig& config,
                                               const JournalDiskHeader& header,
                                               ReplayReport* report) {
  return OpenDisk(config, header.serial, &header, report);
}

Result<std::unique_ptr<Journal>> Journal::OpenExisting(const JournalConfig& config,
                                                       const std::string& serial,
                                                       ReplayReport* report) {
  return OpenDisk(config, serial, nullptr, report);
}

Result<std::unique_ptr<Journal>> Journal::OpenDisk(const JournalConfig& config,
                                                   const std::string& serial,
                                                   const JournalDiskHeader* expected,
                                                   ReplayReport* report) {
  if (!ValidSerial(serial))
    return Status::InvalidArgument("journal: serial '" + serial + "' cannot name a directory");
  const std::string disk_dir = config.dir + "/" + serial;
  if (expected != nullptr) {
    if (Status st = MakeDirs(disk_dir); !st.ok()) return st;
  } else {
    struct stat st;
    if (stat(disk_dir.c_str(), &st) != 0) {
      if (errno == ENOENT) return Status::NotFound("journal: no journal " + disk_dir);
      return Status::FromErrno(errno, "journal: " + disk_dir);
    }
  }

  // Two writers on one journal would interleave records and delete each
  // other's segments. The lock is taken before reading and goes with the
  // directory descriptor, which the Journal keeps.
  int dir_fd = open(disk_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return Status::FromErrno(errno, "journal: opening " + disk_dir);
  std::unique_ptr<int, void (*)(int*)> dir_guard(&dir_fd, [](int* fd) {
    if (*fd >= 0) close(*fd);
  });
  if (flock(dir_fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      return Status::Unavailable("journal: " + disk_dir + " is in use by another journal");
    return Status::FromErrno(errno, "journal: locking " + disk_dir);
  }

  Scan scan;
  ScanOptions opts;
  opts.strict = config.strict;
  opts.expected = expected;
  if (Status st = ScanDisk(disk_dir, opts, &scan); !st.ok()) return st;

  JournalDiskHeader header;
  if (expected != nullptr) {
    header = *expected;
  } else {
    if (scan.segments.empty()) return Status::NotFound("journal: " + disk_dir + " has no segments");
    if (scan.headers.empty())
      return Status::Corruption("journal: " + disk_dir + " has no readable disk header");
    header = scan.headers.back().disk;  // the newest label
    if (header.serial != serial)
      return Status::InvalidArgument("journal: " + disk_dir + " holds a journal of " +
                                     Describe(header));
  }

  std::unique_ptr<Journal> j(new Journal(config, header, disk_dir));
  j->dir_fd_ = dir_fd;
  dir_fd = -1;  // the Journal closes it now

  const uint64_t last = std::max(scan.max_seq, scan.watermark);
  j->retired_seq_ = scan.watermark;
  j->next_seq_ = last + 1;
  // What replay read is durable only once synced: it may sit in the page
  // cache of a daemon that was killed. The replayed segments count as
  // written, so the next group commit covers them.
  j->durable_seq_ = scan.watermark;
  for (const ScannedSegment& s : scan.segments) {
    auto seg = std::make_unique<Segment>();
    seg->number = s.number;
    seg->path = s.path;
    seg->size = s.size;
    // The seqs of the records lost to damage are unknown; keeping the
    // segment until everything read at this open is retired keeps the
    // evidence for an operator, for a bounded time.
    seg->last_seq = s.damaged ? last : s.max_seq;
    seg->fd = open(s.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    seg->dirty = true;  // fdatasync works on a read-only descriptor
    if (seg->fd < 0) return Status::FromErrno(errno, "journal: opening " + s.path);
    j->bytes_on_disk_ += s.size;
    j->segments_.emplace(s.number, std::move(seg));
  }

  ReplayReport rep;
  rep.segments = scan.segments.size();
  rep.records = scan.records.size();
  rep.damage = std::move(scan.damage);
  if (!scan.segments.empty()) {
    rep.torn_bytes = scan.segments.back().torn_bytes;
    rep.torn_tail = rep.torn_bytes > 0;
  }
  Replayed replayed;
  if (Status st = ReplayPending(scan, header, config.strict, disk_dir, &replayed); !st.ok())
    return st;
  rep.damage.insert(rep.damage.end(), replayed.damage.begin(), replayed.damage.end());
  for (uint64_t n : replayed.keep_segments) j->segments_[n]->last_seq = last;
  for (const JournalPending& p : replayed.pending) {
    j->pending_.push_back(p);
    if (p.kind == JournalRecordKind::kWrite) j->pending_bytes_ += p.length;
    if (p.kind != JournalRecordKind::kFlush)
      j->index_.Insert(p.offset, p.offset + p.length, p.seq, p.kind == JournalRecordKind::kTrim);
  }
  rep.pending = j->pending_.size();
  rep.pending_bytes = j->pending_bytes_;

  // New records always go to a new segment: appending after a torn tail
  // would turn it into damage in the middle of a segment. The new segment
  // starts with the watermark, so the old ones can go once retired. It is
  // not synced here: a crash before the next group commit at worst brings
  // back retired records, which are then resent in order (see
  // docs/journal-format.md, "Crash windows").
  // Without a new segment the journal takes no appends (StartSegment set
  // failed_), but what it replayed is still sent and retired, and the
  // files go once nothing is pending. (Failing the open would be no
  // safer: the records would stay for a later start to resend over
  // whatever was written meanwhile. ImportedDisk holds new writes until
  // the files are gone.)
  (void)j->StartSegment();
  // Unsynced records written before a reboot: a power loss may have kept
  // an old record of a segment and lost a newer overlapping one (and the
  // retire record after them). Resending them could undo acknowledged
  // writes, and none of them was acknowledged on the journal's word, so
  // they go.
  {
    const std::string boot = CurrentBootId();
    std::map<uint64_t, bool> stale;  // segment -> unsynced, from another boot
    for (const ScannedSegment& s : scan.segments)
      stale[s.number] = !s.synced && !s.boot_id.empty() && !boot.empty() && s.boot_id != boot;
    bool any = false;
    for (const JournalPending& p : j->pending_) any |= stale[p.loc.segment];
    if (any) {
      rep.stale_dropped = j->pending_.size();
      if (Status st = j->Retire(j->last_seq()); !st.ok()) return st;
      rep.pending = 0;
      rep.pending_bytes = 0;
    }
  }
  (void)j->DeleteRetiredSegments();  // failures are retried at the next Retire()
  if (report != nullptr) *report = std::move(rep);
  return j;
}

bool Journal::MayHoldRecords(const std::string& dir, const std::string& serial) {
  if (!ValidSerial(serial)) return false;  // no such directory can exist
  auto segments = ListSegments(dir + "/" + serial);
  if (!segments.ok()) return segments.status().errno_value() != ENOENT;
  return !segments->empty();
}

Result<std::vector<std::string>> Journal::ListDisks(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return out;
    return Status::FromErrno(errno, "journal: listing " + dir);
  }
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (!ValidSerial(name)) continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, 0) == 0 && S_ISDIR(st.st_mode)) out.push_back(name);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

Status Journal::StartSegment() {
  const uint64_t number = segments_.empty() ? 1 : segments_.rbegin()->first + 1;
  auto seg = std::make_unique<Segment>();
  seg->number = number;
  seg->path = disk_dir_ + "/" + SegmentName(number);
  seg->fd = open(seg->path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (seg->fd < 0) {
    Status st = Status::FromErrno(errno, "journal: creating " + seg->path);
    failed_ = true;
    failure_ = st.message();
    return st;
  }
  segments_.emplace(number, std::move(seg));
  dir_dirty_ = true;

  // Not encode_buf_: a roll happens in the middle of appending the record
  // that is waiting there.
  jpb::JournalRecord rec;
  jpb::DiskHeader* h = rec.mutable_header();
  h->set_serial(header_.serial);
  h->set_size(header_.size);
  h->set_blksize(header_.blksize);
  h->set_label(header_.label);
  h->set_version(kFormatVersion);
  // Only unsynced segments need their boot: Open() distrusts them after
  // a reboot.
  if (!config_.synced) h->set_boot_id(CurrentBootId());
  h->set_synced(config_.synced);
  std::string encoded = rec.SerializeAsString();
  std::span<const uint8_t> piece[1] = {Bytes(encoded)};
  if (Status st = AppendPayload(piece, false, false, nullptr); !st.ok()) return st;
  rec.Clear();
  rec.mutable_retire()->set_upto(retired_seq_);
  encoded = rec.SerializeAsString();
  piece[0] = Bytes(encoded);
  return AppendPayload(piece, false, false, nullptr);
}

Status Journal::AppendPayload(std::span<const std::span<const uint8_t>> pieces, bool may_roll,
                              bool even_if_failed, JournalLocation* loc) {
  if (failed_ && !even_if_failed)
    return Status::FromErrno(EIO,
                             "journal " + disk_dir_ + " is off after an error (" + failure_ + ")");
  if (segments_.empty() ||
      (may_roll && segments_.rbegin()->second->size >= config_.segment_bytes)) {
    if (!may_roll) return Status::FromErrno(EIO, "journal " + disk_dir_ + " has no segment");
    if (Status st = StartSegment(); !st.ok()) return st;
  }
  Segment& seg = *segments_.rbegin()->second;
  uint64_t total = 0;
  for (const auto& p : pieces) total += p.size();
  const size_t n = journal_log::AppendedBytes(seg.size, total);
  Preallocate(seg, seg.size + n);
  // The payload goes from the caller's buffers to the file with one
  // writev: no copy in between (1 MiB writes made that copy a tenth of
  // the importer's CPU time).
  const journal_log::Framed framed =
      journal_log::GatherRecord(seg.size, pieces, &frame_buf_, &gather_);
  Status st = PwritevAll(seg.fd, gather_, seg.path, seg.size);
  if (!st.ok()) {
    // Cut the segment back to its last complete record (shrinking needs no
    // space), so that a later replay sees a clean end rather than a partial
    // record followed by best-effort retire records, which would read as
    // damage in the middle.
    // If even that fails, the partial record stays and replay reports it.
    const bool cut = ftruncate(seg.fd, static_cast<off_t>(seg.size)) == 0;
    (void)cut;
    if (!failed_) {
      failed_ = true;
      failure_ = st.message();
    }
    return st;
  }
  seg.size += n;
  bytes_on_disk_ += n;
  seg.dirty = true;
  if (loc != nullptr) *loc = JournalLocation{seg.number, framed.offset, framed.framed_length};
  return Status::Ok();
}

Result<uint64_t> Journal::AppendData(JournalRecordKind kind, uint64_t offset, uint64_t length,
                                     std::span<const std::span<const uint8_t>> payload) {
  const uint64_t seq = next_seq_;
  JournalLocation loc;
  if (Status st = AppendPayload(payload, true, false, &loc); !st.ok()) return st;
  ++next_seq_;
  pending_.push_back(JournalPending{seq, kind, offset, length, loc});
  segments_.rbegin()->second->last_seq = seq;
  if (kind == JournalRecordKind::kWrite) pending_bytes_ += length;
  if (kind != JournalRecordKind::kFlush)
    index_.Insert(offset, offset + length, seq, kind == JournalRecordKind::kTrim);
  return seq;
}

Result<uint64_t> Journal::AppendWrite(uint64_t offset, std::span<const uint8_t> data) {
  if (data.size() > kMaxWriteBytes)
    return Status::InvalidArgument("journal: write of " + std::to_string(data.size()) +
                                   " bytes is over the record limit");
  if (offset > header_.size || data.size() > header_.size - offset)
    return Status::InvalidArgument("journal: write at " + std::to_string(offset) + "+" +
                                   std::to_string(data.size()) + " beyond the disk's end " +
                                   std::to_string(header_.size));
  uint8_t prefix[kWritePrefixMax];
  const size_t n = EncodeWritePrefix(next_seq_, offset, data.size(), prefix);
  const std::span<const uint8_t> pieces[2] = {std::span<const uint8_t>(prefix, n), data};
  return AppendData(JournalRecordKind::kWrite, offset, data.size(), pieces);
}

Result<uint64_t> Journal::AppendTrim(uint64_t offset, uint64_t length) {
  if (offset > header_.size || length > header_.size - offset)
    return Status::InvalidArgument("journal: trim at " + std::to_string(offset) + "+" +
                                   std::to_string(length) + " beyond the disk's end " +
                                   std::to_string(header_.size));
  jpb::JournalRecord rec;
  rec.set_seq(next_seq_);
  rec.mutable_trim()->set_offset(offset);
  rec.mutable_trim()->set_length(length);
  rec.SerializeToString(&encode_buf_);
  const std::span<const uint8_t> piece[1] = {Bytes(encode_buf_)};
  return AppendData(JournalRecordKind::kTrim, offset, length, piece);
}

Result<uint64_t> Journal::AppendFlush() {
  jpb::JournalRecord rec;
  rec.set_seq(next_seq_);
  rec.mutable_flush();
  rec.SerializeToString(&encode_buf_);
  const std::span<const uint8_t> piece[1] = {Bytes(encode_buf_)};
  return AppendData(JournalRecordKind::kFlush, 0, 0, piece);
}

Status Journal::Retire(uint64_t upto) {
  upto = std::min(upto, last_seq());
  if (upto <= retired_seq_) return Status::Ok();
  Status result;
  jpb::JournalRecord rec;
  rec.mutable_retire()->set_upto(upto);
  rec.SerializeToString(&encode_buf_);
  const std::span<const uint8_t> piece[1] = {Bytes(encode_buf_)};
  const bool was_failed = failed_;
  Status st = AppendPayload(piece, !was_failed, true, nullptr);
  if (!st.ok() && !was_failed) result = st;

  // Whether or not the record made it to disk, the caller is done with
  // these records. If it did not, a replay brings them back as pending
  // and they are resent, in order, before everything newer: harmless.
  retired_seq_ = upto;
  while (!pending_.empty() && pending_.front().seq <= upto) {
    const JournalPending& p = pending_.front();
    if (p.kind != JournalRecordKind::kFlush) index_.Remove(p.offset, p.offset + p.length, p.seq);
    if (p.kind == JournalRecordKind::kWrite) pending_bytes_ -= p.length;
    pending_.pop_front();
  }
  Status del = DeleteRetiredSegments();
  if (result.ok() && !del.ok()) result = del;
  return result;
}

void Journal::Fail(const std::string& why) {
  if (failed_) return;
  failed_ = true;
  failure_ = why;
}

Status Journal::DeleteIfDrained() {
  if (!failed_ || !pending_.empty()) return Status::Ok();
  return DeleteRetiredSegments();
}

Status Journal::DeleteRetiredSegments() {
  const uint64_t current = segments_.empty() ? 0 : segments_.rbegin()->first;
  // A journal that failed takes no more appends, so its current segment
  // is no different from the others; once nothing is pending it all goes,
  // and a later start finds no stale records to resend.
  const bool everything = failed_ && pending_.empty();
  // Segments go at once, whether or not the retire record made it to the
  // file (Retire() explains why that is harmless).
  Status result;
  for (auto it = segments_.begin(); it != segments_.end();) {
    Segment& seg = *it->second;
    if (!everything && (it->first == current || seg.last_seq > retired_seq_)) {
      ++it;
      continue;
    }
    if (unlink(seg.path.c_str()) != 0 && errno != ENOENT) {
      if (result.ok()) result = Status::FromErrno(errno, "journal: deleting " + seg.path);
      ++it;
      continue;
    }
    bytes_on_disk_ -= seg.size;
    dir_dirty_ = true;
    it = segments_.erase(it);
  }
  // A failed journal that is gone lets unjournaled writes through (see
  // ImportedDisk::GateClosed): its deletions must survive a power loss
  // first, or a restart could replay its records over those writes.
  if (everything && result.ok() && segments_.empty() && dir_dirty_ && dir_fd_ >= 0) {
    if (fsync(dir_fd_) != 0) {
      result = Status::FromErrno(errno, "journal: syncing " + disk_dir_);
    } else {
      dir_dirty_ = false;
    }
  }
  return result;
}

Status Journal::RemoveIfEmpty() {
  if (!pending_.empty()) return Status::Ok();
  Status result;
  for (auto& [number, seg] : segments_) {
    if (unlink(seg->path.c_str()) != 0 && errno != ENOENT && result.ok())
      result = Status::FromErrno(errno, "journal: deleting " + seg->path);
  }
  segments_.clear();
  bytes_on_disk_ = 0;
  if (dir_fd_ >= 0) close(dir_fd_);
  dir_fd_ = -1;
  dir_dirty_ = false;
  if (result.ok() && rmdir(disk_dir_.c_str()) != 0 && errno != ENOENT)
    result = Status::FromErrno(errno, "journal: removing " + disk_dir_);
  failed_ = true;
  failure_ = "the journal was removed";
  return result;
}

Journal::SyncBatch Journal::PrepareSync() {
  SyncBatch batch;
  batch.upto_seq = last_seq();
  for (auto& [number, seg] : segments_) {
    if (!seg->dirty) continue;
    const int fd = fcntl(seg->fd, F_DUPFD_CLOEXEC, 0);
    // A descriptor that cannot be duplicated (EMFILE) goes in as -1: the
    // batch's RunSync fails, and the segment stays dirty.
    batch.fds.push_back(fd);
    if (fd >= 0) seg->dirty = false;
  }
  if (dir_dirty_) {
    const int fd = dir_fd_ >= 0 ? fcntl(dir_fd_, F_DUPFD_CLOEXEC, 0) : -1;
    if (fd >= 0) {
      batch.dir_fd = fd;
      dir_dirty_ = false;
    } else {
      batch.fds.push_back(-1);
    }
  }
  syncs_.emplace_back(batch.upto_seq, false);
  return batch;
}

Status Journal::RunSync(SyncBatch* batch) {
  Status result;
  auto sync_one = [&result](int fd, bool dir) {
    if (fd < 0) {
      if (result.ok())
        result = Status::FromErrno(EMFILE, "journal sync: a descriptor could not be duplicated");
      return;
    }
    int rc;
    do {
      rc = dir ? fsync(fd) : fdatasync(fd);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0 && result.ok())
      result = Status::FromErrno(
          errno, dir ? "journal sync: fsync of the directory" : "journal sync: fdatasync");
    close(fd);
  };
  for (int fd : batch->fds) sync_one(fd, false);
  batch->fds.clear();
  if (batch->dir_fd >= 0) sync_one(batch->dir_fd, true);
  batch->dir_fd = -1;
  return result;
}

void Journal::SyncDone(const SyncBatch& batch) {
  // Batches can finish out of order; a batch only proves durability up to
  // its upto_seq if every batch prepared before it also finished (an
  // earlier batch may hold the only sync of an older segment). A batch is
  // known here only by its upto_seq, and batches with the same upto_seq
  // are adjacent in syncs_; marking the *last* unfinished one keeps the
  // finished ones a suffix of that run, so the run is popped only once all
  // of its batches are done, whichever finished first.
  for (auto it = syncs_.rbegin(); it != syncs_.rend(); ++it) {
    if (!it->second && it->first == batch.upto_seq) {
      it->second = true;
      break;
    }
  }
  while (!syncs_.empty() && syncs_.front().second) {
    durable_seq_ = std::max(durable_seq_, syncs_.front().first);
    syncs_.pop_front();
  }
}

const JournalPending* Journal::FindPending(uint64_t seq) const {
  auto it = std::lower_bound(pending_.begin(), pending_.end(), seq,
                             [](const JournalPending& p, uint64_t s) { return p.seq < s; });
  return it != pending_.end() && it->seq == seq ? &*it : nullptr;
}

Result<std::vector<uint8_t>> Journal::ReadWriteData(const JournalPending& rec) {
  auto it = segments_.find(rec.loc.segment);
  if (it == segments_.end())
    return Status::NotFound("journal: record " + std::to_string(rec.seq) + ": segment " +
                            SegmentName(rec.loc.segment) + " is gone");
  jpb::JournalRecord msg;
  if (Status st = ReadWriteRecord(it->second->fd, it->second->path, rec, &read_buf_, &msg);
      !st.ok())
    return st;
  const std::string& d = msg.write().data();
  return std::vector<uint8_t>(d.begin(), d.end());
}

uint64_t Journal::Covered(uint64_t offset, uint64_t length) const {
  return index_.Covered(offset, length);
}

std::vector<std::pair<uint64_t, uint64_t>> Journal::CoveredRanges(uint64_t offset,
                                                                  uint64_t length) const {
  return index_.CoveredRanges(offset, length);
}

Status Journal::Overlay(uint64_t offset, std::span<uint8_t> buf) {
  if (buf.empty()) return Status::Ok();
  if (buf.size() > UINT64_MAX - offset)
    return Status::InvalidArgument("journal: read at " + std::to_string(offset) + " wraps around");
  // Pieces of one record are usually adjacent: its data is read once.
  const JournalPending* loaded = nullptr;
  jpb::JournalRecord msg;
  for (const RangeIndex::Piece& piece : index_.Pieces(offset, buf.size())) {
    const uint64_t s = piece.start;
    const uint64_t e = piece.end;
    uint8_t* dst = buf.data() + (s - offset);
    if (piece.trim) {
      std::memset(dst, 0, e - s);
      continue;
    }
    const JournalPending* rec = FindPending(piece.seq);
    if (rec == nullptr)
      return Status::Corruption("journal: index names seq " + std::to_string(piece.seq) +
                                ", which is not pending");
    if (rec != loaded) {
      auto seg = segments_.find(rec->loc.segment);
      if (seg == segments_.end())
        return Status::NotFound("journal: segment " + SegmentName(rec->loc.segment) + " is gone");
      if (Status st = ReadWriteRecord(seg->second->fd, seg->second->path, *rec, &read_buf_, &msg);
          !st.ok())
        return st;
      loaded = rec;
    }
    const std::string& data = msg.write().data();
    const uint64_t from = s - rec->offset;
    if (s < rec->offset || from > data.size() || e - s > data.size() - from)
      return Status::Corruption("journal: write " + std::to_string(rec->seq) +
                                " does not cover its index piece");
    std::memcpy(dst, data.data() + from, e - s);
  }
  return Status::Ok();
}

}  // namespace xdisk
