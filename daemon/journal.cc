// Journal: segment files, replay, the read-your-writes index and group
// commit. The contract is in journal.h; the byte layout, the rules and the
// guarantees are in docs/journal-format.md.
#include "daemon/journal.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <optional>

#include "proto/journal.pb.h"
#include "proto/journal_log.h"

namespace xdisk {
namespace {

namespace jpb = ::xdisk::journal;

constexpr uint32_t kFormatVersion = 1;
constexpr uint64_t kMaxRecordBytes = journal_log::kDefaultMaxRecordBytes;
// Seqs and watermarks above this in a file are damage: next_seq_ = max + 1
// must never overflow, whatever a hostile file says.
constexpr uint64_t kMaxSeq = 1ull << 62;

// This boot's id, "" if unknown.
std::string CurrentBootId() {
  static const std::string id = [] {
    char buf[64] = {};
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::string();
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    std::string s(buf, n > 0 ? static_cast<size_t>(n) : 0);
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
  }();
  return id;
}

std::string SegmentName(uint64_t number) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%06llu.log", static_cast<unsigned long long>(number));
  return buf;
}

// Accepts only the canonical name of a number (what SegmentName() makes),
// so that "1.log" and "000001.log" can never both be segment 1.
bool ParseSegmentName(const char* name, uint64_t* number) {
  size_t digits = 0;
  while (name[digits] >= '0' && name[digits] <= '9') ++digits;
  if (digits < 6 || digits > 15 || std::strcmp(name + digits, ".log") != 0) return false;
  uint64_t n = 0;
  for (size_t i = 0; i < digits; ++i) n = n * 10 + static_cast<uint64_t>(name[i] - '0');
  if (SegmentName(n) != name) return false;
  *number = n;
  return true;
}

// A serial becomes a directory name, and serials come from remote peers.
bool ValidSerial(const std::string& s) {
  return !s.empty() && s.size() <= 255 && s != "." && s != ".." &&
         s.find('/') == std::string::npos && s.find('\0') == std::string::npos;
}

std::string Describe(const JournalDiskHeader& h) {
  return "serial " + h.serial + " size " + std::to_string(h.size) + " blksize " +
         std::to_string(h.blksize);
}

bool SameDisk(const JournalDiskHeader& a, const JournalDiskHeader& b) {
  return a.serial == b.serial && a.size == b.size && a.blksize == b.blksize;
}

std::string At(const std::string& path, uint64_t offset) {
  return path + " offset " + std::to_string(offset);
}

// mkdir -p; a directory it creates is made durable in its parent.
Status MakeDirs(const std::string& path) {
  if (path.empty()) return Status::InvalidArgument("journal: empty directory name");
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    const std::string prefix = path.substr(0, pos);
    if (mkdir(prefix.c_str(), 0700) == 0) {
      const size_t slash = prefix.find_last_of('/');
      const std::string parent = slash == std::string::npos ? "."
                                 : slash == 0               ? "/"
                                                            : prefix.substr(0, slash);
      const int fd = open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
      }
    } else if (errno != EEXIST) {
      return Status::FromErrno(errno, "journal: creating " + prefix);
    }
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return Status::FromErrno(errno, "journal: " + path);
  if (!S_ISDIR(st.st_mode))
    return Status::InvalidArgument("journal: " + path + " is not a directory");
  return Status::Ok();
}

// Writes a gather list completely at file offset `at` (IOV_MAX entries
// per call at most).
Status PwritevAll(int fd, std::span<const std::span<const uint8_t>> pieces, const std::string& path,
                  uint64_t at) {
  std::vector<iovec> iov;
  iov.reserve(pieces.size());
  for (const auto& p : pieces)
    if (!p.empty()) iov.push_back(iovec{const_cast<uint8_t*>(p.data()), p.size()});
  size_t first = 0;
  uint64_t done = 0;
  while (first < iov.size()) {
    const int count = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    const ssize_t w = pwritev(fd, iov.data() + first, count, static_cast<off_t>(at + done));
    if (w < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "journal: writing " + At(path, at + done));
    }
    if (w == 0) return Status::FromErrno(ENOSPC, "journal: writing " + At(path, at + done));
    done += static_cast<uint64_t>(w);
    // Skip what was written, partly written entries included.
    size_t left = static_cast<size_t>(w);
    while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (left > 0) {
      iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
  return Status::Ok();
}

// Reads exactly buf.size() bytes at `at`; Corruption if the file is shorter.
Status PreadAll(int fd, std::span<uint8_t> buf, const std::string& path, uint64_t at) {
  size_t done = 0;
  while (done < buf.size()) {
    const ssize_t r =
        pread(fd, buf.data() + done, buf.size() - done, static_cast<off_t>(at + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "journal: reading " + At(path, at + done));
    }
    if (r == 0) return Status::Corruption("journal: " + At(path, at) + ": record cut short");
    done += static_cast<size_t>(r);
  }
  return Status::Ok();
}

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

// The protobuf encoding of JournalRecord{seq, write{offset, data}} up to the
// first data byte. Writes are the hot path: encoding this prefix by hand
// lets the data go from the caller's buffer straight into the framed output
// (one copy) instead of through a message and a serialized string. The
// bytes are exactly what SerializeToString() makes (fields in number order,
// proto3 zero values omitted); journal_test checks that.
constexpr size_t kWritePrefixMax = 4 * (1 + 10);
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

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

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

// ---- Scanning: reading every record of a journal directory ----
//
// Open() and Dump() share this. It reads; it never changes anything.

enum class RecKind { kHeader, kRetire, kWrite, kTrim, kFlush };

struct ScannedRecord {
  uint64_t segment = 0;
  uint64_t offset = 0;
  uint64_t framed_length = 0;
  RecKind kind = RecKind::kFlush;
  uint64_t seq = 0;
  uint64_t disk_offset = 0;  // write, trim
  uint64_t length = 0;       // write, trim
  uint64_t upto = 0;         // retire
  size_t header = 0;         // header: index into Scan::headers
};

struct ScannedHeader {
  JournalDiskHeader disk;
  uint32_t version = 0;
};

struct ScannedSegment {
  std::string boot_id;  // from its first disk header
  bool synced = false;
  bool have_header = false;
  uint64_t number = 0;
  std::string path;
  uint64_t size = 0;
  uint64_t max_seq = 0;  // highest data seq read from it
  bool damaged = false;
  uint64_t torn_bytes = 0;
};

struct Scan {
  std::vector<ScannedSegment> segments;
  std::vector<ScannedRecord> records;
  std::vector<ScannedHeader> headers;
  std::vector<JournalDamage> damage;
  uint64_t watermark = 0;  // highest retire record
  uint64_t max_seq = 0;    // highest data seq
};

struct ScanOptions {
  bool strict = false;
  // Refuse header records that disagree with `expected` (or, without it,
  // with the first header read) or that have an unknown format version.
  bool check_headers = true;
  const JournalDiskHeader* expected = nullptr;
};

// An open, mapped segment file. Mapping (rather than reading into memory)
// keeps replay of a large or hostile file from allocating its size.
struct MappedSegment {
  int fd = -1;
  void* addr = nullptr;
  size_t size = 0;
  ~MappedSegment() {
    if (addr != nullptr) munmap(addr, size);
    if (fd >= 0) close(fd);
  }
  std::span<const uint8_t> bytes() const {
    return {static_cast<const uint8_t*>(addr), addr ? size : 0};
  }
};

Status MapSegment(const std::string& path, MappedSegment* m) {
  // O_NONBLOCK: a FIFO planted under a segment's name must not hang replay.
  m->fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (m->fd < 0) return Status::FromErrno(errno, "journal: opening " + path);
  struct stat st;
  if (fstat(m->fd, &st) != 0) return Status::FromErrno(errno, "journal: " + path);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument("journal: " + path + " is not a file");
  m->size = static_cast<size_t>(st.st_size);
  if (m->size == 0) return Status::Ok();
  void* p = mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, m->fd, 0);
  if (p == MAP_FAILED) return Status::FromErrno(errno, "journal: mapping " + path);
  m->addr = p;
  return Status::Ok();
}

Result<std::vector<uint64_t>> ListSegments(const std::string& disk_dir) {
  DIR* d = opendir(disk_dir.c_str());
  if (d == nullptr) return Status::FromErrno(errno, "journal: listing " + disk_dir);
  std::vector<uint64_t> numbers;
  while (const dirent* e = readdir(d)) {
    uint64_t n = 0;
    if (ParseSegmentName(e->d_name, &n)) numbers.push_back(n);
  }
  closedir(d);
  std::sort(numbers.begin(), numbers.end());
  return numbers;
}

Status ScanSegment(const ScanOptions& opts, ScannedSegment* seg, Scan* scan,
                   uint64_t* last_data_seq, std::optional<JournalDiskHeader>* reference) {
  MappedSegment m;
  if (Status st = MapSegment(seg->path, &m); !st.ok()) return st;
  seg->size = m.size;

  auto damage = [&](uint64_t offset, uint64_t bytes, std::string reason) -> Status {
    seg->damaged = true;
    if (opts.strict)
      return Status::Corruption("journal: " + At(seg->path, offset) + ": " + reason + " (" +
                                std::to_string(bytes) + " bytes)");
    scan->damage.push_back(JournalDamage{seg->number, offset, bytes, std::move(reason)});
    return Status::Ok();
  };

  journal_log::Reader reader(m.bytes(), 0, kMaxRecordBytes);
  jpb::JournalRecord msg;
  for (;;) {
    journal_log::Record rec;
    journal_log::Damage dmg;
    const auto outcome = reader.Next(&rec, &dmg);
    if (outcome == journal_log::Reader::Outcome::kEnd) break;
    if (outcome == journal_log::Reader::Outcome::kDamage) {
      if (Status st = damage(dmg.offset, dmg.bytes, std::move(dmg.reason)); !st.ok()) return st;
      continue;
    }
    // A record that frames correctly but does not parse, or says something
    // impossible, is damage like a bad checksum: it is dropped and reported.
    auto bad = [&](std::string reason) {
      return damage(rec.offset, rec.framed_length, std::move(reason));
    };
    if (!msg.ParseFromArray(rec.payload.data(), static_cast<int>(rec.payload.size()))) {
      if (Status st = bad("unparseable record"); !st.ok()) return st;
      continue;
    }
    ScannedRecord r;
    r.segment = seg->number;
    r.offset = rec.offset;
    r.framed_length = rec.framed_length;
    r.seq = msg.seq();
    std::string problem;
    switch (msg.body_case()) {
      case jpb::JournalRecord::kHeader: {
        const auto& h = msg.header();
        ScannedHeader sh{JournalDiskHeader{h.serial(), h.size(), h.blksize(), h.label()},
                         h.version()};
        if (opts.check_headers) {
          if (sh.version != kFormatVersion)
            return Status::InvalidArgument("journal: " + At(seg->path, rec.offset) +
                                           ": format version " + std::to_string(sh.version) +
                                           ", this program reads version " +
                                           std::to_string(kFormatVersion));
          if (!reference->has_value()) *reference = sh.disk;
          if (!SameDisk(**reference, sh.disk))
            return Status::InvalidArgument("journal: " + At(seg->path, rec.offset) + " is for " +
                                           Describe(sh.disk) + ", not " + Describe(**reference));
        }
        if (!seg->have_header) {
          seg->have_header = true;
          seg->boot_id = h.boot_id();
          seg->synced = h.synced();
        }
        r.kind = RecKind::kHeader;
        r.header = scan->headers.size();
        scan->headers.push_back(std::move(sh));
        break;
      }
      case jpb::JournalRecord::kRetire:
        r.kind = RecKind::kRetire;
        r.upto = msg.retire().upto();
        if (r.upto > kMaxSeq) problem = "implausible retire watermark " + std::to_string(r.upto);
        break;
      case jpb::JournalRecord::kWrite:
        r.kind = RecKind::kWrite;
        r.disk_offset = msg.write().offset();
        r.length = msg.write().data().size();
        break;
      case jpb::JournalRecord::kTrim:
        r.kind = RecKind::kTrim;
        r.disk_offset = msg.trim().offset();
        r.length = msg.trim().length();
        break;
      case jpb::JournalRecord::kFlush:
        r.kind = RecKind::kFlush;
        break;
      default:
        problem = "record without a body";
        break;
    }
    const bool data =
        r.kind == RecKind::kWrite || r.kind == RecKind::kTrim || r.kind == RecKind::kFlush;
    if (problem.empty() && data) {
      if (r.seq == 0 || r.seq > kMaxSeq) {
        problem = "implausible seq " + std::to_string(r.seq);
      } else if (r.seq <= *last_data_seq) {
        problem = "seq " + std::to_string(r.seq) + " out of order (after " +
                  std::to_string(*last_data_seq) + ")";
      } else if (r.disk_offset + r.length < r.disk_offset) {
        problem = "range " + std::to_string(r.disk_offset) + "+" + std::to_string(r.length) +
                  " wraps around";
      }
    }
    if (!problem.empty()) {
      if (Status st = bad(std::move(problem)); !st.ok()) return st;
      continue;
    }
    if (data) {
      *last_data_seq = r.seq;
      seg->max_seq = r.seq;
      scan->max_seq = std::max(scan->max_seq, r.seq);
    }
    if (r.kind == RecKind::kRetire) scan->watermark = std::max(scan->watermark, r.upto);
    scan->records.push_back(r);
  }
  seg->torn_bytes = reader.torn_bytes();
  return Status::Ok();
}

Status ScanDisk(const std::string& disk_dir, const ScanOptions& opts, Scan* scan) {
  auto numbers = ListSegments(disk_dir);
  if (!numbers.ok()) return numbers.status();
  uint64_t last_data_seq = 0;
  std::optional<JournalDiskHeader> reference;
  if (opts.expected != nullptr) reference = *opts.expected;
  for (uint64_t n : *numbers) {
    ScannedSegment seg;
    seg.number = n;
    seg.path = disk_dir + "/" + SegmentName(n);
    Status st = ScanSegment(opts, &seg, scan, &last_data_seq, &reference);
    if (!st.ok()) return st;
    scan->segments.push_back(std::move(seg));
  }
  return Status::Ok();
}

const char* KindName(RecKind k) {
  switch (k) {
    case RecKind::kHeader:
      return "header";
    case RecKind::kRetire:
      return "retire";
    case RecKind::kWrite:
      return "write";
    case RecKind::kTrim:
      return "trim";
    case RecKind::kFlush:
      return "flush";
  }
  return "?";
}

Status DumpDisk(const std::string& disk_dir, std::string* out) {
  Scan scan;
  ScanOptions opts;
  opts.check_headers = false;
  if (Status st = ScanDisk(disk_dir, opts, &scan); !st.ok()) return st;
  *out += "journal " + disk_dir + "\n";
  char line[512];
  uint64_t pending = 0, pending_bytes = 0, bytes = 0;
  for (const ScannedRecord& r : scan.records) {
    const std::string seg = SegmentName(r.segment);
    std::snprintf(line, sizeof line, "  %s @%llu +%llu seq=%llu %s", seg.c_str(),
                  static_cast<unsigned long long>(r.offset),
                  static_cast<unsigned long long>(r.framed_length),
                  static_cast<unsigned long long>(r.seq), KindName(r.kind));
    *out += line;
    switch (r.kind) {
      case RecKind::kHeader: {
        const ScannedHeader& h = scan.headers[r.header];
        *out += " serial=" + h.disk.serial + " size=" + std::to_string(h.disk.size) +
                " blksize=" + std::to_string(h.disk.blksize) + " label=\"" + h.disk.label +
                "\" version=" + std::to_string(h.version);
        break;
      }
      case RecKind::kRetire:
        *out += " upto=" + std::to_string(r.upto);
        break;
      case RecKind::kWrite:
      case RecKind::kTrim:
        *out += " offset=" + std::to_string(r.disk_offset) + " length=" + std::to_string(r.length);
        [[fallthrough]];
      case RecKind::kFlush: {
        const bool is_pending = r.seq > scan.watermark;
        *out += is_pending ? " pending" : " retired";
        if (is_pending) {
          ++pending;
          if (r.kind == RecKind::kWrite) pending_bytes += r.length;
        }
        break;
      }
    }
    *out += "\n";
  }
  for (const JournalDamage& d : scan.damage)
    *out += "  damage: " + SegmentName(d.segment) + " @" + std::to_string(d.offset) + " +" +
            std::to_string(d.bytes) + ": " + d.reason + "\n";
  for (const ScannedSegment& s : scan.segments) {
    bytes += s.size;
    if (s.torn_bytes > 0)
      *out += "  torn tail: " + SegmentName(s.number) + ", " + std::to_string(s.torn_bytes) +
              " bytes after the last complete record\n";
  }
  const std::string disk = scan.headers.empty() ? std::string("(no readable header)")
                                                : Describe(scan.headers.back().disk);
  *out += "disk " + disk + ": " + std::to_string(scan.segments.size()) + " segments (" +
          std::to_string(bytes) + " bytes), " + std::to_string(scan.records.size()) + " records, " +
          std::to_string(pending) + " pending (" + std::to_string(pending_bytes) +
          " bytes of writes), retired up to " + std::to_string(scan.watermark) + ", last seq " +
          std::to_string(std::max(scan.max_seq, scan.watermark)) + ", " +
          std::to_string(scan.damage.size()) + " damaged regions\n";
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

std::string ReplayReport::ToString() const {
  std::string s = "journal replay: " + std::to_string(segments) + " segments, " +
                  std::to_string(records) + " records, " + std::to_string(pending) + " pending (" +
                  std::to_string(pending_bytes) + " bytes of writes)";
  if (torn_tail) s += ", torn tail of " + std::to_string(torn_bytes) + " bytes";
  if (stale_dropped > 0) {
    s.append(", ").append(std::to_string(stale_dropped));
    s.append(
        " unsynced records from before a reboot dropped (they may be older than what the "
        "remote has)");
  }
  if (!damage.empty()) {
    uint64_t dropped = 0;
    for (const JournalDamage& d : damage) dropped += d.bytes;
    s += ", " + std::to_string(damage.size()) + " damaged regions (" + std::to_string(dropped) +
         " bytes dropped):";
    const size_t shown = std::min<size_t>(damage.size(), 3);
    for (size_t i = 0; i < shown; ++i) {
      const JournalDamage& d = damage[i];
      // Appended piece by piece: gcc 12 at -O3 reports a false -Wrestrict
      // for `" " + std::string` here.
      s.append(" ").append(SegmentName(d.segment)).append(" offset ");
      s.append(std::to_string(d.offset)).append(" +").append(std::to_string(d.bytes));
      s.append(" (").append(d.reason).append(")");
      if (i + 1 < shown) s += ";";
    }
    if (damage.size() > shown) s += " and " + std::to_string(damage.size() - shown) + " more";
  }
  return s;
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
  for (const ScannedRecord& r : scan.records) {
    if (r.kind == RecKind::kHeader || r.kind == RecKind::kRetire || r.seq <= scan.watermark)
      continue;
    if (r.kind != RecKind::kFlush && r.disk_offset + r.length > header.size) {
      // Well-formed but outside this disk: sending it could only fail.
      const std::string reason = std::string(KindName(r.kind)) + " at " +
                                 std::to_string(r.disk_offset) + "+" + std::to_string(r.length) +
                                 " beyond the disk's end " + std::to_string(header.size);
      if (config.strict)
        return Status::Corruption(
            "journal: " + At(disk_dir + "/" + SegmentName(r.segment), r.offset) + ": " + reason);
      rep.damage.push_back(JournalDamage{r.segment, r.offset, r.framed_length, reason});
      j->segments_[r.segment]->last_seq = last;
      continue;
    }
    JournalPending p;
    p.seq = r.seq;
    p.kind = r.kind == RecKind::kWrite  ? JournalRecordKind::kWrite
             : r.kind == RecKind::kTrim ? JournalRecordKind::kTrim
                                        : JournalRecordKind::kFlush;
    p.offset = r.kind == RecKind::kFlush ? 0 : r.disk_offset;
    p.length = r.kind == RecKind::kFlush ? 0 : r.length;
    p.loc = JournalLocation{r.segment, r.offset, r.framed_length};
    j->pending_.push_back(p);
    if (p.kind == JournalRecordKind::kWrite) j->pending_bytes_ += p.length;
    if (p.kind != JournalRecordKind::kFlush)
      j->IndexInsert(p.offset, p.offset + p.length, p.seq, p.kind == JournalRecordKind::kTrim);
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

Status Journal::Dump(const std::string& dir, std::string* out) {
  out->clear();
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::NotFound("journal dump: no directory " + dir);
    return Status::FromErrno(errno, "journal dump: " + dir);
  }
  if (!S_ISDIR(st.st_mode))
    return Status::InvalidArgument("journal dump: " + dir + " is not a directory");
  auto segments = ListSegments(dir);
  if (!segments.ok()) return segments.status();
  if (!segments->empty()) return DumpDisk(dir, out);
  auto disks = ListDisks(dir);
  if (!disks.ok()) return disks.status();
  if (disks->empty()) {
    *out += "no journals in " + dir + "\n";
    return Status::Ok();
  }
  for (const std::string& serial : *disks) {
    if (Status s = DumpDisk(dir + "/" + serial, out); !s.ok())
      *out += "journal " + dir + "/" + serial + ": " + s.ToString() + "\n";
  }
  return Status::Ok();
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
    IndexInsert(offset, offset + length, seq, kind == JournalRecordKind::kTrim);
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
    if (p.kind != JournalRecordKind::kFlush) IndexRemove(p.offset, p.offset + p.length, p.seq);
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

// ---- The read-your-writes index ----
//
// index_ maps start -> {end, seq, trim}; pieces never overlap. A new record
// carves its range out of whatever is there (newest wins), so every piece
// belongs to the newest pending record covering it. Retiring a record
// removes only the pieces it still owns: a newer record's pieces stay.

void Journal::IndexInsert(uint64_t start, uint64_t end, uint64_t seq, bool trim) {
  if (start >= end) return;
  auto it = index_.lower_bound(start);
  if (it != index_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > start) {
      // A piece that starts before `start` and reaches into the new range:
      // keep its head, and its tail if it also reaches past `end`.
      const Extent old = prev->second;
      prev->second.end = start;
      if (old.end > end) index_.emplace(end, Extent{old.end, old.seq, old.trim});
    }
  }
  while (it != index_.end() && it->first < end) {
    if (it->second.end > end) {
      const Extent tail = it->second;
      index_.erase(it);
      index_.emplace(end, tail);
      break;
    }
    it = index_.erase(it);
  }
  index_.emplace(start, Extent{end, seq, trim});
}

void Journal::IndexRemove(uint64_t start, uint64_t end, uint64_t seq) {
  if (start >= end) return;
  auto it = index_.upper_bound(start);
  if (it != index_.begin() && std::prev(it)->second.end > start) --it;
  while (it != index_.end() && it->first < end) {
    if (it->second.seq == seq) {
      it = index_.erase(it);
    } else {
      ++it;
    }
  }
}

uint64_t Journal::Covered(uint64_t offset, uint64_t length) const {
  if (length == 0) return 0;
  const uint64_t end = length > UINT64_MAX - offset ? UINT64_MAX : offset + length;
  auto it = index_.upper_bound(offset);
  if (it != index_.begin() && std::prev(it)->second.end > offset) --it;
  uint64_t covered = 0;
  for (; it != index_.end() && it->first < end; ++it)
    covered += std::min(it->second.end, end) - std::max(it->first, offset);
  return covered;
}

std::vector<std::pair<uint64_t, uint64_t>> Journal::CoveredRanges(uint64_t offset,
                                                                  uint64_t length) const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  if (length == 0) return out;
  const uint64_t end = length > UINT64_MAX - offset ? UINT64_MAX : offset + length;
  auto it = index_.upper_bound(offset);
  if (it != index_.begin() && std::prev(it)->second.end > offset) --it;
  for (; it != index_.end() && it->first < end; ++it) {
    const uint64_t s = std::max(it->first, offset);
    const uint64_t e = std::min(it->second.end, end);
    if (!out.empty() && out.back().second == s)
      out.back().second = e;
    else
      out.emplace_back(s, e);
  }
  return out;
}

Status Journal::Overlay(uint64_t offset, std::span<uint8_t> buf) {
  if (buf.empty()) return Status::Ok();
  if (buf.size() > UINT64_MAX - offset)
    return Status::InvalidArgument("journal: read at " + std::to_string(offset) + " wraps around");
  const uint64_t end = offset + buf.size();
  auto it = index_.upper_bound(offset);
  if (it != index_.begin() && std::prev(it)->second.end > offset) --it;
  // Pieces of one record are usually adjacent: its data is read once.
  const JournalPending* loaded = nullptr;
  jpb::JournalRecord msg;
  for (; it != index_.end() && it->first < end; ++it) {
    const uint64_t s = std::max(it->first, offset);
    const uint64_t e = std::min(it->second.end, end);
    uint8_t* dst = buf.data() + (s - offset);
    if (it->second.trim) {
      std::memset(dst, 0, e - s);
      continue;
    }
    const JournalPending* rec = FindPending(it->second.seq);
    if (rec == nullptr)
      return Status::Corruption("journal: index names seq " + std::to_string(it->second.seq) +
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
