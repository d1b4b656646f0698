#include "daemon/link/link_timing.h"

#include <algorithm>

namespace xdisk {

LivenessVerdict CheckLiveness(const LivenessInput& in) {
  if (in.handshaking) {
    return in.now_ms - in.started_ms >= in.dead_timeout_ms ? LivenessVerdict::kHandshakeTimedOut
                                                           : LivenessVerdict::kNothing;
  }
  if (!in.exchanging) return LivenessVerdict::kNothing;
  const uint64_t silent = in.now_ms - in.last_rx_ms;
  if (!in.read_paused && silent >= in.dead_timeout_ms) return LivenessVerdict::kSilent;
  // Ping when we sent nothing for an interval, whether or not the peer
  // talks: its silence timeout counts what it hears from us, and anything
  // we send shows we are alive, a ping just as well as data. A peer sending
  // us data steadily while we have nothing to answer (our replies wait on a
  // slow disk or a relay's full queue) would otherwise hear nothing from us
  // and drop the link, its own pings being answered only after the data
  // queued before them (docs/design.md "Relay").
  if (in.now_ms - in.last_tx_ms >= in.ping_interval_ms) return LivenessVerdict::kPing;
  return LivenessVerdict::kNothing;
}

uint64_t ReconnectBackoff::NextDelay(double jitter, bool io_waiting) {
  jitter = std::clamp(jitter, 0.75, 1.25);
  uint64_t delay = static_cast<uint64_t>(static_cast<double>(base_ms_) * jitter);
  base_ms_ = std::min(base_ms_ * 2, kMaxMs);
  if (io_waiting) delay = std::min(delay, kHurryMs);
  return delay;
}

}  // namespace xdisk
