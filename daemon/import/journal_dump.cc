// Journal::Dump (the contract is in journal.h): every record of every
// journal under a directory, for `xdisk-fuse --journal-dump`. It reads
// through the same scan as replay, with header checks off, so that it
// shows what replay would refuse.
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <string>

#include "daemon/import/journal.h"
#include "daemon/import/journal_files.h"
#include "daemon/import/journal_replay.h"

namespace xdisk {
namespace {

using namespace journal_files;
using namespace journal_replay;

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

}  // namespace xdisk
