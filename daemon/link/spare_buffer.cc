#include "daemon/link/spare_buffer.h"

#include <algorithm>
#include <utility>

namespace xdisk {

std::vector<uint8_t> SpareBuffer::Take() {
  std::vector<uint8_t> b;
  b.swap(spare_);
  b.clear();
  return b;
}

void SpareBuffer::Give(std::vector<uint8_t> used, size_t need) {
  window_peak_ = std::max(window_peak_, need);
  if (used.capacity() > spare_.capacity()) spare_.swap(used);
  spare_.clear();
  if (++window_uses_ < kWindow) return;
  // A burst of 1 MiB writes at QD8 grows the buffer to ~8 MiB; a link that
  // then carries 4 KiB writes for good would keep it forever. A whole
  // window of small needs is the sign; a margin of 4x keeps a link whose
  // writes merely vary from reallocating back and forth.
  if (spare_.capacity() > kKeepBytes && spare_.capacity() > 4 * window_peak_) {
    std::vector<uint8_t> smaller;
    smaller.reserve(window_peak_);
    spare_.swap(smaller);
  }
  window_peak_ = 0;
  window_uses_ = 0;
}

void SpareBuffer::Trim() {
  // An idle link needs none of it; kKeepBytes and less is not worth a new
  // allocation on the next write.
  if (spare_.capacity() > kKeepBytes) std::vector<uint8_t>().swap(spare_);
  window_peak_ = 0;
  window_uses_ = 0;
}

}  // namespace xdisk
