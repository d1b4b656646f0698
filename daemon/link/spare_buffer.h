// SpareBuffer: a byte buffer that a link lends out for one write at a time
// and gets back afterwards, so that its capacity serves the next write
// (megabytes allocated and freed per write would be page-faulted in every
// time), but that gives memory back once a burst is over.
//
// Rules (the reasons are in spare_buffer.cc):
//   - Take() returns an empty vector with the capacity kept so far; Give()
//     takes a used one back (its size() is what that use needed) and keeps
//     whichever of the two has the larger capacity.
//   - Shrinking while busy: after every kWindow uses, a capacity above
//     kKeepBytes and more than 4x the largest need of that window drops
//     to that need.
//   - Shrinking when idle: Trim() (the owner calls it once the link has
//     been quiet for a while) drops a capacity above kKeepBytes to nothing.
//
// Not thread-safe; one per link and purpose (the loop thread only).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace xdisk {

class SpareBuffer {
 public:
  static constexpr size_t kKeepBytes = 256 * 1024;
  static constexpr unsigned kWindow = 64;

  std::vector<uint8_t> Take();
  // `need`: the most this use held at once (a buffer that was cleared on
  // the way no longer shows it in size()).
  void Give(std::vector<uint8_t> used, size_t need);
  void Give(std::vector<uint8_t> used) {
    size_t need = used.size();
    Give(std::move(used), need);
  }
  void Trim();
  // The capacity kept for the next Take() (0 while lent out).
  size_t capacity() const { return spare_.capacity(); }

 private:
  std::vector<uint8_t> spare_;
  size_t window_peak_ = 0;  // the largest need of the current window
  unsigned window_uses_ = 0;
};

}  // namespace xdisk
