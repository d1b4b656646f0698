// RangeIndex (daemon/import/range_index.h): which record owns each byte, newest
// insert wins, removal only of what a record still owns, and the lookups,
// checked case by case and against a byte-array model.
#include "daemon/import/range_index.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

using namespace xdisk;

namespace {

using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;

// The whole index as (start, end, seq, trim) pieces.
std::vector<RangeIndex::Piece> All(const RangeIndex& index) {
  return index.Pieces(0, UINT64_MAX);
}

bool Same(const std::vector<RangeIndex::Piece>& got, const std::vector<RangeIndex::Piece>& want) {
  if (got.size() != want.size()) return false;
  for (size_t i = 0; i < got.size(); ++i) {
    const RangeIndex::Piece& g = got[i];
    const RangeIndex::Piece& w = want[i];
    if (g.start != w.start || g.end != w.end || g.seq != w.seq || g.trim != w.trim) return false;
  }
  return true;
}

std::string Show(const std::vector<RangeIndex::Piece>& pieces) {
  std::string s;
  // Appended piece by piece: gcc 12 at -O3 reports a false -Wrestrict for
  // `"[" + std::string`.
  for (const auto& p : pieces) {
    s.append("[").append(std::to_string(p.start)).append(",").append(std::to_string(p.end));
    s.append(")=").append(std::to_string(p.seq)).append(p.trim ? "t " : " ");
  }
  return s;
}

// Every lookup of [offset, offset+length) finds nothing.
bool FindsNothing(const RangeIndex& index, uint64_t offset, uint64_t length) {
  return index.Covered(offset, length) == 0 && index.CoveredRanges(offset, length).empty() &&
         index.Pieces(offset, length).empty();
}

#define CHECK_PIECES(index, ...)                                     \
  do {                                                               \
    const auto got_ = All(index);                                    \
    INFO("index: " << Show(got_));                                   \
    CHECK(Same(got_, std::vector<RangeIndex::Piece>{__VA_ARGS__})); \
  } while (0)

}  // namespace

TEST_CASE("an empty index covers nothing", "[range_index]") {
  RangeIndex index;
  CHECK(index.empty());
  CHECK(FindsNothing(index, 0, 1000));
}

TEST_CASE("a zero-length insert, remove or lookup changes and finds nothing", "[range_index]") {
  RangeIndex index;
  index.Insert(100, 100, 1, false);
  CHECK(index.empty());
  index.Insert(200, 100, 1, false);  // start after end
  CHECK(index.empty());
  index.Insert(0, 1000, 2, false);
  index.Remove(500, 500, 2);
  CHECK_PIECES(index, {0, 1000, 2, false});
  CHECK(FindsNothing(index, 500, 0));
}

TEST_CASE("a newer record splits an older one it lies inside", "[range_index]") {
  RangeIndex index;
  index.Insert(0, 1000, 1, false);
  index.Insert(400, 600, 2, true);
  CHECK_PIECES(index, {0, 400, 1, false}, {400, 600, 2, true}, {600, 1000, 1, false});
  CHECK(index.Covered(0, 1000) == 1000);
  // Removing the older record leaves the newer one's piece alone.
  index.Remove(0, 1000, 1);
  CHECK_PIECES(index, {400, 600, 2, true});
}

TEST_CASE("a newer record covers older ones whole and cuts the ends it overlaps",
          "[range_index]") {
  RangeIndex index;
  index.Insert(0, 100, 1, false);
  index.Insert(150, 200, 2, false);
  index.Insert(250, 400, 3, true);
  index.Insert(50, 300, 4, false);
  CHECK_PIECES(index, {0, 50, 1, false}, {50, 300, 4, false}, {300, 400, 3, true});
  // The same range again: the newest wins it all.
  index.Insert(50, 300, 5, true);
  CHECK_PIECES(index, {0, 50, 1, false}, {50, 300, 5, true}, {300, 400, 3, true});
  // A range exactly over several pieces replaces them all.
  index.Insert(0, 400, 6, false);
  CHECK_PIECES(index, {0, 400, 6, false});
}

TEST_CASE("removing a superseded record uncovers nothing of the newer one", "[range_index]") {
  RangeIndex index;
  index.Insert(0, 100, 1, false);
  index.Insert(0, 100, 2, false);  // supersedes seq 1 completely
  index.Remove(0, 100, 1);
  CHECK_PIECES(index, {0, 100, 2, false});
  index.Remove(0, 100, 2);
  CHECK(index.empty());
}

TEST_CASE("removing a record takes only the pieces it still owns", "[range_index]") {
  RangeIndex index;
  index.Insert(0, 300, 1, false);
  index.Insert(100, 200, 2, false);
  // seq 1 owns [0,100) and [200,300); both go, seq 2's middle stays.
  index.Remove(0, 300, 1);
  CHECK_PIECES(index, {100, 200, 2, false});
  // A seq that owns nothing there removes nothing.
  index.Remove(0, 300, 7);
  CHECK_PIECES(index, {100, 200, 2, false});
}

TEST_CASE("lookups clip pieces to the range asked for", "[range_index]") {
  RangeIndex index;
  index.Insert(100, 200, 1, false);
  index.Insert(300, 400, 2, true);
  CHECK(index.Covered(150, 200) == 50 + 50);
  CHECK(index.CoveredRanges(150, 200) == Ranges{{150, 200}, {300, 350}});
  const auto pieces = index.Pieces(150, 200);
  CHECK(Same(pieces, {{150, 200, 1, false}, {300, 350, 2, true}}));
  // Just before, just after and between the pieces.
  CHECK(index.Covered(0, 100) == 0);
  CHECK(index.Covered(400, 100) == 0);
  CHECK(index.Covered(200, 100) == 0);
  CHECK(index.Covered(199, 2) == 1);
}

TEST_CASE("CoveredRanges merges adjacent pieces, also of different records", "[range_index]") {
  RangeIndex index;
  index.Insert(0, 100, 1, false);
  index.Insert(100, 200, 2, true);
  index.Insert(200, 300, 3, false);
  index.Insert(400, 500, 4, false);
  CHECK(index.size() == 4);
  CHECK(index.CoveredRanges(0, 1000) == Ranges{{0, 300}, {400, 500}});
  CHECK(index.CoveredRanges(50, 400) == Ranges{{50, 300}, {400, 450}});
  // Pieces stay separate: each keeps its owner.
  CHECK(index.Pieces(0, 1000).size() == 4);
}

TEST_CASE("ranges at the end of the disk and of the offset space", "[range_index]") {
  const uint64_t disk = 1 << 20;
  RangeIndex index;
  index.Insert(disk - 512, disk, 1, false);
  CHECK(index.Covered(disk - 512, 512) == 512);
  CHECK(index.Covered(disk - 1, 1) == 1);
  CHECK(index.Covered(disk, 512) == 0);
  // A lookup reaching past 2^64 is cut there instead of wrapping to 0.
  CHECK(index.Covered(disk - 512, UINT64_MAX) == 512);
  CHECK(index.CoveredRanges(disk - 512, UINT64_MAX) == Ranges{{disk - 512, disk}});
  index.Insert(UINT64_MAX - 10, UINT64_MAX, 2, true);
  CHECK(index.Covered(UINT64_MAX - 20, 100) == 10);
  CHECK(index.CoveredRanges(0, UINT64_MAX) ==
        Ranges{{disk - 512, disk}, {UINT64_MAX - 10, UINT64_MAX}});
}

TEST_CASE("a randomized model: each byte belongs to the last insert covering it, until that "
          "record is removed",
          "[range_index]") {
  constexpr uint64_t kSize = 2048;
  std::mt19937_64 rng(20261206);
  struct Rec {
    uint64_t start, end, seq;
    bool trim;
  };
  for (int round = 0; round < 40; ++round) {
    RangeIndex index;
    // The model: the owner of every byte, seq 0 for none.
    std::vector<uint64_t> owner(kSize, 0);
    std::vector<bool> trimmed(kSize, false);
    std::vector<Rec> live;  // in seq order
    uint64_t next_seq = 1;
    for (int step = 0; step < 150; ++step) {
      if (live.empty() || rng() % 3 != 0) {
        const uint64_t start = rng() % kSize;
        const uint64_t end = start + rng() % std::min<uint64_t>(kSize - start + 1, 600);
        const Rec r{start, end, next_seq++, rng() % 4 == 0};
        index.Insert(r.start, r.end, r.seq, r.trim);
        for (uint64_t b = r.start; b < r.end; ++b) {
          owner[b] = r.seq;
          trimmed[b] = r.trim;
        }
        live.push_back(r);
      } else {
        // Mostly the oldest record (the journal retires a prefix),
        // sometimes any one.
        const size_t i = rng() % 4 == 0 ? rng() % live.size() : 0;
        const Rec r = live[i];
        index.Remove(r.start, r.end, r.seq);
        for (uint64_t b = r.start; b < r.end; ++b)
          if (owner[b] == r.seq) owner[b] = 0;
        live.erase(live.begin() + static_cast<long>(i));
      }
      // Look at a random range against the model.
      const uint64_t offset = rng() % kSize;
      const uint64_t length = rng() % (kSize - offset + 1);
      uint64_t covered = 0;
      Ranges ranges;
      for (uint64_t b = offset; b < offset + length; ++b) {
        if (owner[b] == 0) continue;
        ++covered;
        if (!ranges.empty() && ranges.back().second == b)
          ++ranges.back().second;
        else
          ranges.emplace_back(b, b + 1);
      }
      INFO("round " << round << " step " << step << " range " << offset << "+" << length);
      REQUIRE(index.Covered(offset, length) == covered);
      REQUIRE(index.CoveredRanges(offset, length) == ranges);
      uint64_t at = offset;
      for (const RangeIndex::Piece& p : index.Pieces(offset, length)) {
        REQUIRE(p.start >= at);
        REQUIRE(p.start < p.end);
        REQUIRE(p.end <= offset + length);
        for (uint64_t b = at; b < p.start; ++b) REQUIRE(owner[b] == 0);
        for (uint64_t b = p.start; b < p.end; ++b) {
          REQUIRE(owner[b] == p.seq);
          REQUIRE(trimmed[b] == p.trim);
        }
        at = p.end;
      }
      for (uint64_t b = at; b < offset + length; ++b) REQUIRE(owner[b] == 0);
    }
  }
}
