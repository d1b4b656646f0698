// The link layer's timing decisions as plain code: when a link pings, when it
// is dropped for silence or a handshake that takes too long, and how long a
// connector waits before its next attempt. No libuv and no clock: the caller
// passes the time it read (loop time, in ms), so unit tests decide timeouts
// without waiting ([link_timing]).
//
// Link and LinkTable read uv_now() once per timer callback and ask these.
#pragma once

#include <cstdint>
#include <string>

namespace xdisk {

// What a link's periodic timer should do now.
struct LivenessInput {
  uint64_t now_ms = 0;
  uint64_t started_ms = 0;  // the link's TCP connection was established
  uint64_t last_rx_ms = 0;  // the last bytes arrived (reset when reading resumes)
  uint64_t last_tx_ms = 0;  // the last frame went out
  // Still in the RSA exchange, the TLS handshake, or the LNK_CONN exchange of
  // an encrypted link: the handshake timeout applies. (A plaintext link in
  // the LNK_CONN exchange has only the silence timeout.)
  bool handshaking = false;
  // Handshake done or LNK_CONN exchange under way: silence and pings apply.
  bool exchanging = false;
  // We stopped reading (backpressure): our own pause is not the peer's
  // silence, so it never drops the link; the pings go on.
  bool read_paused = false;
  uint64_t ping_interval_ms = 1000;
  uint64_t dead_timeout_ms = 10000;
};

enum class LivenessVerdict {
  kNothing,
  kPing,               // send LNK_PING (one-way), then note last_tx
  kSilent,             // drop: nothing received for dead_timeout_ms
  kHandshakeTimedOut,  // drop: the handshake took dead_timeout_ms
};

LivenessVerdict CheckLiveness(const LivenessInput& in);

// Reconnect backoff of one connector: 100 ms doubling to 5 s, each delay
// scaled by a jitter factor in [0.75, 1.25] the caller draws (a fleet of
// importers must not reconnect in lockstep), capped at kHurryMs while I/O
// waits for a path (the peer may be back; the backoff keeps growing
// underneath).
class ReconnectBackoff {
 public:
  static constexpr uint64_t kMinMs = 100;
  static constexpr uint64_t kMaxMs = 5000;
  static constexpr uint64_t kHurryMs = 250;

  // The delay before the next attempt; doubles the base for the one after.
  uint64_t NextDelay(double jitter, bool io_waiting);
  // A link came up: the next failure starts from kMinMs again.
  void Reset() { base_ms_ = kMinMs; }
  uint64_t base_ms() const { return base_ms_; }

 private:
  uint64_t base_ms_ = kMinMs;
};

}  // namespace xdisk
