// RangeIndex: which pending journal record owns each byte of a disk, for
// read-your-writes (Journal::Covered, CoveredRanges, Overlay).
//
// The index is a set of non-overlapping pieces [start, end) of the disk,
// each owned by one record: its seq and whether it is a trim (zeros) or a
// write (data at start - the record's offset). Insert() carves the new
// range out of whatever is there, so the newest insert wins every byte it
// covers; Remove() takes away only the pieces that `seq` still owns, so
// retiring an older record never uncovers a newer one.
//
// Pure: no I/O, no clock. Not thread-safe (the journal's loop thread owns
// it). Each operation is O(log n + pieces touched).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

namespace xdisk {

class RangeIndex {
 public:
  // One piece of the index, clipped to the range a lookup asked for.
  struct Piece {
    uint64_t start = 0;  // disk offset of the first byte
    uint64_t end = 0;    // one past the last byte
    uint64_t seq = 0;    // the owning record
    bool trim = false;   // a trim (zeros) rather than a write
  };

  // Makes `seq` own [start, end), splitting or dropping the pieces there:
  // the latest Insert() wins, whatever its seq (the journal inserts in seq
  // order, so that is the newest record). An empty range (start >= end)
  // changes nothing.
  void Insert(uint64_t start, uint64_t end, uint64_t seq, bool trim);
  // Drops the pieces within [start, end) that `seq` still owns (a record's
  // pieces never reach outside its own range). Pieces of other seqs stay.
  void Remove(uint64_t start, uint64_t end, uint64_t seq);

  // Lookups of [offset, offset+length). A range reaching past 2^64 is cut
  // at 2^64 - 1; length 0 finds nothing.
  // Covered(): how many of its bytes some piece covers.
  uint64_t Covered(uint64_t offset, uint64_t length) const;
  // The covered parts as [start, end) ranges, ascending, with adjacent
  // pieces (of any seqs) merged into one range.
  std::vector<std::pair<uint64_t, uint64_t>> CoveredRanges(uint64_t offset, uint64_t length) const;
  // The pieces that overlap it, clipped to it, ascending.
  std::vector<Piece> Pieces(uint64_t offset, uint64_t length) const;

  bool empty() const { return pieces_.empty(); }
  size_t size() const { return pieces_.size(); }  // pieces held

 private:
  struct Extent {
    uint64_t end = 0;
    uint64_t seq = 0;
    bool trim = false;
  };
  using Map = std::map<uint64_t, Extent>;  // by start offset, non-overlapping
  // The first piece that ends after `offset` (it may start before it).
  Map::const_iterator FirstEndingAfter(uint64_t offset) const;

  Map pieces_;
};

}  // namespace xdisk
