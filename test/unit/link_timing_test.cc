// The link layer's timing decisions (daemon/link/link_timing.h) with times as
// plain numbers: pings, the silence timeout, the handshake timeout and the
// reconnect backoff, each decided without waiting for a clock.
#include "daemon/link/link_timing.h"

#include <catch2/catch.hpp>

using namespace xdisk;

namespace {
LivenessInput UpLink(uint64_t now, uint64_t last_rx, uint64_t last_tx) {
  LivenessInput in;
  in.exchanging = true;
  in.now_ms = now;
  in.started_ms = 0;
  in.last_rx_ms = last_rx;
  in.last_tx_ms = last_tx;
  in.ping_interval_ms = 1000;
  in.dead_timeout_ms = 10000;
  return in;
}
}  // namespace

TEST_CASE("a quiet link pings once per interval and is dropped after the silence timeout",
          "[link_timing]") {
  // Heard from the peer 500 ms ago: nothing to do.
  CHECK(CheckLiveness(UpLink(10500, 10000, 10000)) == LivenessVerdict::kNothing);
  // 1 s of silence both ways: ping.
  CHECK(CheckLiveness(UpLink(11000, 10000, 10000)) == LivenessVerdict::kPing);
  // We pinged 200 ms ago: not again yet, although the peer is still quiet.
  CHECK(CheckLiveness(UpLink(11200, 10000, 11000)) == LivenessVerdict::kNothing);
  CHECK(CheckLiveness(UpLink(12000, 10000, 11000)) == LivenessVerdict::kPing);
  // The peer talks all the time but we sent nothing for 1 s: ping, or the
  // peer, hearing nothing from us, drops the link (a relay sending us data
  // we have nothing to answer yet).
  CHECK(CheckLiveness(UpLink(11000, 10990, 10000)) == LivenessVerdict::kPing);
  CHECK(CheckLiveness(UpLink(11000, 10990, 10100)) == LivenessVerdict::kNothing);
  // One millisecond short of the silence timeout, then at it.
  CHECK(CheckLiveness(UpLink(19999, 10000, 19500)) == LivenessVerdict::kNothing);
  CHECK(CheckLiveness(UpLink(20000, 10000, 19500)) == LivenessVerdict::kSilent);
}

TEST_CASE("our own paused reading never drops the link, and the pings go on", "[link_timing]") {
  LivenessInput in = UpLink(60000, 10000, 10000);
  in.read_paused = true;
  CHECK(CheckLiveness(in) == LivenessVerdict::kPing);
  in.last_tx_ms = 59900;
  CHECK(CheckLiveness(in) == LivenessVerdict::kNothing);
  in.read_paused = false;
  CHECK(CheckLiveness(in) == LivenessVerdict::kSilent);
}

TEST_CASE("the handshake has a time limit, counted from the connection", "[link_timing]") {
  LivenessInput in;
  in.handshaking = true;
  in.started_ms = 5000;
  in.dead_timeout_ms = 10000;
  // A handshake that trickles bytes in still times out: last_rx does not count.
  in.last_rx_ms = 14999;
  in.now_ms = 14999;
  CHECK(CheckLiveness(in) == LivenessVerdict::kNothing);
  in.now_ms = 15000;
  CHECK(CheckLiveness(in) == LivenessVerdict::kHandshakeTimedOut);
  // A link neither handshaking nor exchanging (connecting, closing) is left alone.
  LivenessInput idle;
  idle.now_ms = 1000000;
  CHECK(CheckLiveness(idle) == LivenessVerdict::kNothing);
}

TEST_CASE("reconnect backoff doubles to 5 s with jitter, hurries while I/O waits, and resets",
          "[link_timing]") {
  ReconnectBackoff b;
  CHECK(b.NextDelay(1.0, false) == 100);
  CHECK(b.NextDelay(1.0, false) == 200);
  CHECK(b.NextDelay(1.0, false) == 400);
  for (int i = 0; i < 10; ++i) b.NextDelay(1.0, false);
  CHECK(b.base_ms() == ReconnectBackoff::kMaxMs);
  CHECK(b.NextDelay(1.0, false) == 5000);
  // Jitter scales the delay within [0.75, 1.25], also when asked for more.
  CHECK(b.NextDelay(0.75, false) == 3750);
  CHECK(b.NextDelay(1.25, false) == 6250);
  CHECK(b.NextDelay(9.0, false) == 6250);
  // I/O waiting for a path: at most kHurryMs, while the base keeps its place.
  CHECK(b.NextDelay(1.0, true) == ReconnectBackoff::kHurryMs);
  CHECK(b.base_ms() == ReconnectBackoff::kMaxMs);
  // Below the hurry cap the shorter delay stands.
  b.Reset();
  CHECK(b.NextDelay(1.0, true) == 100);
  CHECK(b.NextDelay(1.0, false) == 200);
}
