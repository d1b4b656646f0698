// LatencyHistogram: request latencies in power-of-two microsecond buckets,
// cheap enough to record on every completion. Percentile() returns the
// upper bound of the bucket that holds the requested rank, so it is exact
// to within a factor of two, which is what an operator's "p99" needs.
#pragma once

#include <array>
#include <bit>
#include <cstdint>

namespace xdisk {

class LatencyHistogram {
 public:
  static constexpr int kBuckets = 40;  // up to 2^39 us, about six days

  void Record(uint64_t micros) {
    int b = micros == 0 ? 0 : std::bit_width(micros);
    if (b >= kBuckets) b = kBuckets - 1;
    ++buckets_[b];
    ++count_;
    sum_us_ += micros;
  }
  uint64_t count() const { return count_; }
  uint64_t mean_us() const { return count_ == 0 ? 0 : sum_us_ / count_; }
  // p in (0, 100]. 0 when nothing was recorded.
  uint64_t Percentile(double p) const {
    if (count_ == 0) return 0;
    uint64_t rank = static_cast<uint64_t>(p / 100.0 * static_cast<double>(count_));
    if (rank == 0) rank = 1;
    uint64_t seen = 0;
    for (int b = 0; b < kBuckets; ++b) {
      seen += buckets_[b];
      if (seen >= rank) return b == 0 ? 0 : (uint64_t{1} << b) - 1;
    }
    return (uint64_t{1} << (kBuckets - 1)) - 1;
  }

 private:
  std::array<uint64_t, kBuckets> buckets_{};
  uint64_t count_ = 0;
  uint64_t sum_us_ = 0;
};

}  // namespace xdisk
