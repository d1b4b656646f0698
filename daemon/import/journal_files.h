// Journal files: the system-call side of the journal (daemon/import/journal.h).
// Segment names, creating directories, whole reads and writes at an
// offset, mapping a segment for replay, listing a disk's segments, and the
// boot id that unsynced segments carry. No record format here: that is in
// journal_record.h and proto/journal_log.h.
//
// Every error is a Status whose message names the file (and offset).
// Functions only; none keeps state except CurrentBootId()'s cached value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "proto/status.h"

namespace xdisk::journal_files {

// This boot's id (/proc/sys/kernel/random/boot_id), "" if unknown. Read
// once per process.
std::string CurrentBootId();

// "000001.log" for segment 1: at least six digits, the only name
// ListSegments() takes for that number.
std::string SegmentName(uint64_t number);

// Whether a serial (which comes from a remote peer) can name a directory:
// not empty, not "." or "..", no '/' or NUL, at most 255 bytes.
bool ValidSerial(const std::string& s);

// "PATH offset N", for messages.
std::string At(const std::string& path, uint64_t offset);

// mkdir -p with mode 0700; a directory it creates is made durable in its
// parent (fsync). InvalidArgument if `path` is empty or not a directory.
Status MakeDirs(const std::string& path);

// Writes the concatenation of `pieces` at file offset `at`, retrying short
// writes and EINTR. A write that makes no progress is ENOSPC. On failure
// part of it may be in the file.
Status PwritevAll(int fd, std::span<const std::span<const uint8_t>> pieces, const std::string& path,
                  uint64_t at);

// Reads exactly buf.size() bytes at `at`; Corruption if the file is shorter.
Status PreadAll(int fd, std::span<uint8_t> buf, const std::string& path, uint64_t at);

// An open, mapped segment file. Mapping (rather than reading into memory)
// keeps replay of a large or hostile file from allocating its size.
// The destructor unmaps and closes what MapSegment() opened.
struct MappedSegment {
  MappedSegment() = default;
  MappedSegment(const MappedSegment&) = delete;
  MappedSegment& operator=(const MappedSegment&) = delete;
  ~MappedSegment();
  int fd = -1;
  void* addr = nullptr;
  size_t size = 0;
  std::span<const uint8_t> bytes() const {
    return {static_cast<const uint8_t*>(addr), addr ? size : 0};
  }
};

// Opens and maps `path` read-only into *m (an empty file maps nothing).
// Refuses a symlink and anything but a regular file, without blocking on
// a FIFO. On error *m holds what it opened; its destructor releases it.
Status MapSegment(const std::string& path, MappedSegment* m);

// The numbers of the segment files in `disk_dir`, ascending. Other names
// are ignored.
Result<std::vector<uint64_t>> ListSegments(const std::string& disk_dir);

}  // namespace xdisk::journal_files
