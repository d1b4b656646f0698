// Journal replay (the contract is in journal_replay.h).
#include "daemon/import/journal_replay.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "daemon/import/journal_files.h"
#include "daemon/import/journal_record.h"
#include "proto/journal.pb.h"
#include "proto/journal_log.h"

namespace xdisk::journal_replay {
namespace {

namespace jpb = ::xdisk::journal;
using namespace journal_files;
using journal_record::kFormatVersion;
using journal_record::kMaxRecordBytes;
using journal_record::kMaxSeq;

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

}  // namespace

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

std::string Describe(const JournalDiskHeader& h) {
  return "serial " + h.serial + " size " + std::to_string(h.size) + " blksize " +
         std::to_string(h.blksize);
}

bool SameDisk(const JournalDiskHeader& a, const JournalDiskHeader& b) {
  return a.serial == b.serial && a.size == b.size && a.blksize == b.blksize;
}

Status ReplayPending(const Scan& scan, const JournalDiskHeader& header, bool strict,
                     const std::string& disk_dir, Replayed* out) {
  for (const ScannedRecord& r : scan.records) {
    if (r.kind == RecKind::kHeader || r.kind == RecKind::kRetire || r.seq <= scan.watermark)
      continue;
    if (r.kind != RecKind::kFlush && r.disk_offset + r.length > header.size) {
      // Well-formed but outside this disk: sending it could only fail.
      const std::string reason = std::string(KindName(r.kind)) + " at " +
                                 std::to_string(r.disk_offset) + "+" + std::to_string(r.length) +
                                 " beyond the disk's end " + std::to_string(header.size);
      if (strict)
        return Status::Corruption(
            "journal: " + At(disk_dir + "/" + SegmentName(r.segment), r.offset) + ": " + reason);
      out->damage.push_back(JournalDamage{r.segment, r.offset, r.framed_length, reason});
      out->keep_segments.push_back(r.segment);
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
    out->pending.push_back(p);
  }
  return Status::Ok();
}

}  // namespace xdisk::journal_replay

namespace xdisk {

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
      s.append(" ").append(journal_files::SegmentName(d.segment)).append(" offset ");
      s.append(std::to_string(d.offset)).append(" +").append(std::to_string(d.bytes));
      s.append(" (").append(d.reason).append(")");
      if (i + 1 < shown) s += ";";
    }
    if (damage.size() > shown) s += " and " + std::to_string(damage.size() - shown) + " more";
  }
  return s;
}

}  // namespace xdisk
