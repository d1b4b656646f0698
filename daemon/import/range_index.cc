// RangeIndex (the contract is in range_index.h).
#include "daemon/import/range_index.h"

#include <algorithm>
#include <cstdint>
#include <iterator>

namespace xdisk {
namespace {

// The end of [offset, offset+length), saturated at UINT64_MAX.
uint64_t EndOf(uint64_t offset, uint64_t length) {
  return length > UINT64_MAX - offset ? UINT64_MAX : offset + length;
}

}  // namespace

void RangeIndex::Insert(uint64_t start, uint64_t end, uint64_t seq, bool trim) {
  if (start >= end) return;
  auto it = pieces_.lower_bound(start);
  if (it != pieces_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > start) {
      // A piece that starts before `start` and reaches into the new range:
      // keep its head, and its tail if it also reaches past `end`.
      const Extent old = prev->second;
      prev->second.end = start;
      if (old.end > end) pieces_.emplace(end, Extent{old.end, old.seq, old.trim});
    }
  }
  while (it != pieces_.end() && it->first < end) {
    if (it->second.end > end) {
      const Extent tail = it->second;
      pieces_.erase(it);
      pieces_.emplace(end, tail);
      break;
    }
    it = pieces_.erase(it);
  }
  pieces_.emplace(start, Extent{end, seq, trim});
}

void RangeIndex::Remove(uint64_t start, uint64_t end, uint64_t seq) {
  if (start >= end) return;
  auto it = pieces_.upper_bound(start);
  if (it != pieces_.begin() && std::prev(it)->second.end > start) --it;
  while (it != pieces_.end() && it->first < end) {
    if (it->second.seq == seq) {
      it = pieces_.erase(it);
    } else {
      ++it;
    }
  }
}

RangeIndex::Map::const_iterator RangeIndex::FirstEndingAfter(uint64_t offset) const {
  auto it = pieces_.upper_bound(offset);
  if (it != pieces_.begin() && std::prev(it)->second.end > offset) --it;
  return it;
}

uint64_t RangeIndex::Covered(uint64_t offset, uint64_t length) const {
  if (length == 0) return 0;
  const uint64_t end = EndOf(offset, length);
  uint64_t covered = 0;
  for (auto it = FirstEndingAfter(offset); it != pieces_.end() && it->first < end; ++it)
    covered += std::min(it->second.end, end) - std::max(it->first, offset);
  return covered;
}

std::vector<std::pair<uint64_t, uint64_t>> RangeIndex::CoveredRanges(uint64_t offset,
                                                                     uint64_t length) const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  if (length == 0) return out;
  const uint64_t end = EndOf(offset, length);
  for (auto it = FirstEndingAfter(offset); it != pieces_.end() && it->first < end; ++it) {
    const uint64_t s = std::max(it->first, offset);
    const uint64_t e = std::min(it->second.end, end);
    if (!out.empty() && out.back().second == s)
      out.back().second = e;
    else
      out.emplace_back(s, e);
  }
  return out;
}

std::vector<RangeIndex::Piece> RangeIndex::Pieces(uint64_t offset, uint64_t length) const {
  std::vector<Piece> out;
  if (length == 0) return out;
  const uint64_t end = EndOf(offset, length);
  for (auto it = FirstEndingAfter(offset); it != pieces_.end() && it->first < end; ++it)
    out.push_back(Piece{std::max(it->first, offset), std::min(it->second.end, end), it->second.seq,
                        it->second.trim});
  return out;
}

}  // namespace xdisk
