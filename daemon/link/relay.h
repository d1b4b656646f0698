// Relay: makes the daemon a node of the dmsg mesh, as DragonFly's hammer2
// service is (docs/dmsg-protocol.md §6.3, §5.3, §5.7; docs/design.md
// "Relay").
//
// Spans: every span received on one link is offered to the others through
// SpanRelay (daemon/link/span_relay.h), which decides what goes where; this
// class opens the relayed copies (LNK_SPAN transactions of ours) and closes
// them (DELETE, after ending what was stacked under them) as told.
//
// Transactions: a transaction the peer opens under one of our relayed
// copies is mirrored by one we open under the source span, on the source's
// link; deeper transactions (BLK_READ under BLK_OPEN) are mirrored under
// the mirror of their parent. The two halves form a Pair. Every message on
// one half is sent on the other with the same base command, DELETE, ABORT,
// error, extended header bytes and pass-through fields; the aux data is
// moved, not copied (Link::SendRelayed). Each link keeps its own msgids and
// circuits, so the two ends never see each other's ids. A LOSTLINK the link
// synthesises on one half (link loss, a parent ended) is passed on as a
// real LNK_ERROR|DELETE|ABORT, error 0x21, on the other half, children
// before parents, since the link terminates them in that order. A message
// that cannot be passed on (the other half is gone or its link closing)
// ends its own half with LOSTLINK.
//
// Backpressure and memory: after passing a message to link X, if X's write
// queue holds more than kHighWaterBytes, the link the message came from
// stops reading (Link::kPauseRelay) until X's queue is at most
// kLowWaterBytes (Link::NotifyWhenDrained, which notices every way a queue
// drains). A pause cannot last forever: if X's peer takes no byte from us
// for the link timeout (--link-timeout, 10 s) while links wait for X, X is
// dropped (a ring of relays could otherwise wait on each other for ever;
// see docs/design.md "Relay"). Since a paused link decodes no further frame, X's queue
// exceeds the high-water mark by at most one message (<= 1 MiB of aux plus
// a header) per link feeding it; a paused link buffers at most one socket
// read (256 KiB) plus one partial frame. So relayed data in memory stays
// below about (kHighWaterBytes + links x 1.3 MiB) per outgoing link.
//
// Bounds on what one peer can make us do (docs/design.md "Relay"):
//   - spans: SpanRelay takes at most kMaxSpansPerLink spans of a link; the
//     rest are not relayed (logged once per link, counted);
//   - flapping: received spans are handed to SpanRelay once per loop turn,
//     after the turn's reads; a span opened and withdrawn within one turn
//     is never relayed at all, so a peer flapping a span as fast as it can
//     costs one table update per node and turn, not one per message;
//   - transactions: at most kMaxTxnsPerLink relayed transactions opened by
//     one link's peer at a time, and at most kMaxDepth levels below a
//     relayed span; beyond either the CREATE is answered
//     LNK_ERROR|DELETE with DMSG_ERR_CANTCIRC (logged once per link).
//
// Threading: loop thread only. Lifetime: owned by the daemon, registered
// with the SpanRegistry, which calls OnLinkUp/OnLinkDown and the local span
// hooks; must outlive every link (transactions name it as their handler).
#pragma once

#include <uv.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "daemon/base/uv_handle.h"
#include "daemon/link/span_registry.h"
#include "daemon/link/span_relay.h"

namespace xdisk {

class Relay : public SpanObserver, public TransactionHandler {
 public:
  static constexpr size_t kHighWaterBytes = 8u << 20;
  // Close below the high mark: a relay paused behind a slow far end reads
  // again after every 2 MiB the far end takes, so that a relay feeding
  // this one (which sees our pause as a peer taking nothing) sees
  // progress often enough not to drop its link (see OnDrain).
  static constexpr size_t kLowWaterBytes = 6u << 20;
  // An importer keeps at most a few hundred requests in flight per path;
  // 8192 is far above any honest peer and bounds the Pairs one link holds
  // (about 200 bytes each, plus both links' transaction entries).
  static constexpr size_t kMaxTxnsPerLink = 8192;
  // Span -> BLK_OPEN -> BLK_READ is depth 2; DragonFly nests no deeper.
  static constexpr int kMaxDepth = 8;

  // `rnss_constant`: added to the rnss of every relayed span; random per
  // process and non-zero (RandomRnss()). `loop` runs the once-per-turn
  // span update (a uv_check_t, made on first use and closed by Shutdown()).
  Relay(uv_loop_t* loop, uint32_t rnss_constant);
  ~Relay() override;
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;
  static uint32_t RandomRnss();

  // From the SpanRegistry.
  void OnLinkUp(Link& link);
  void OnLinkDown(Link& link);
  void OnLocalSpanAdded(const dmsg::LnkSpan& info);
  void OnLocalSpanRemoved(const dmsg::LnkSpan& info);

  // Withdraws every relayed copy and relays nothing more (shutdown);
  // closes the relay's handle (the loop must run once more before the
  // Relay is destroyed).
  void Shutdown();

  // SpanObserver: received spans.
  void OnSpanAdded(const RemoteSpan& span) override;
  void OnSpanRemoved(const RemoteSpan& span, const std::string& why) override;

  // TransactionHandler: our relayed copies and both halves of every pair.
  void OnMessage(Link& link, Transaction& t, dmsg::Frame& f) override;
  TransactionHandler* OnChildCreate(Link& link, Transaction& parent, Transaction& child,
                                    const dmsg::Frame& f) override;
  void OnFreed(Link& link, Transaction& t) override;

  // For xdiskctl. Counters are per link, for what the relay sent on it:
  // transactions it opened there and aux bytes it passed on there.
  struct Counters {
    uint64_t txns = 0;
    uint64_t bytes = 0;
  };
  Counters counters(const Link* link) const;
  struct RelayedSpan {
    std::string to;    // the link's peer the copy goes to
    std::string from;  // the link's peer the source came from
    uint32_t dist;     // as sent
    std::string serial, label;
  };
  std::vector<RelayedSpan> relayed() const;

 private:
  struct Pair {
    Link* a;  // the side that opened the transaction
    Transaction* ta;
    Link* b;                // the side we open its mirror on
    Transaction* b_parent;  // where to open it; valid only until the CREATE is passed on
    Transaction* tb = nullptr;
    bool opened = false;
    int depth = 1;         // levels below the relayed span
    uint32_t refuse = 0;   // non-zero: the CREATE is answered with this error
    bool counted = false;  // counts in txns_of_[a]
  };
  // A received span, waiting for the turn's end (see "flapping" above).
  struct PendingSpan {
    bool add;
    uint64_t id;
    uint64_t link;
    dmsg::LnkSpan info;  // add only
  };
  void QueueSpan(PendingSpan p);
  // Hands the queued span events to the table and carries the changes out.
  void FlushSpans();
  static void OnCheck(uv_check_t* h);
  void LogRefusal(Link& link, const char* what);
  void Apply(const std::vector<SpanRelay::Change>& changes);
  void Advertise(const SpanRelay::Change& c);
  void Withdraw(Link* link, uint64_t source);
  // After passing a message from `from` to `to`: pause `from` if `to` is full.
  void Throttle(Link& from, Link& to);
  void OnDrain(Link& to, Link::DrainEvent event);
  // Resumes the links paused for `to` that wait for nothing else.
  void ReleaseWaiters(Link& to);
  static uint64_t Id(const Link* l) { return reinterpret_cast<uintptr_t>(l); }

  uv_loop_t* loop_;
  UvHandle<uv_check_t> check_;
  std::vector<PendingSpan> pending_;
  std::map<uint64_t, size_t> pending_add_;  // span id -> its add in pending_
  std::map<const Link*, size_t> txns_of_;   // relayed transactions the link's peer opened
  std::set<const Link*> refusal_logged_;    // links whose peer was refused something
  SpanRelay table_;
  bool shut_down_ = false;
  std::map<uint64_t, Link*> links_;                            // up links by Id()
  std::map<uint64_t, RemoteSpan> sources_;                     // received spans by registry id
  std::map<std::pair<Link*, uint64_t>, Transaction*> copies_;  // (link, source) -> our span
  std::map<Transaction*, std::pair<Link*, uint64_t>> copy_of_;
  std::map<const Link*, Counters> counters_;
  std::map<Link*, std::set<Link*>> paused_for_;  // target -> links paused for it
  std::map<Link*, std::set<Link*>> paused_by_;   // paused link -> targets it waits for
};

}  // namespace xdisk
