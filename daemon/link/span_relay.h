// SpanRelay: the decisions of the span relay (docs/dmsg-protocol.md §6.3
// "How the daemon relays a SPAN"), as plain bookkeeping with no links, no
// loop and no sockets, so that every rule is unit tested
// (test/unit/span_relay_test.cc). daemon/link/relay.h carries the decisions out
// on real links and relays the transactions opened on relayed spans.
//
// Model. Links and received spans are named by the caller's ids (any
// uint64_t, unique while they live). Each received span belongs to one
// node: cluster key (peer_type, peer_id, peer_label) plus node key
// (pfs_label, pfs_id). For every (up link, node) the table keeps at most one
// relayed copy: the best span of the node by (dist, rnss, span id) among
// those the rules admit for that link:
//   - split horizon: a span received on the link is never relayed to it;
//   - loop limit: a span whose dist + 1 would exceed kMaxDist is never
//     relayed (libdmsg relays a received dist 16 as 17; we stop one hop
//     earlier, so that no span we send carries a dist above 16);
//   - type filter: (1 << peer_type) & link.peer_mask;
//   - clients apart: a CLIENT span never goes to a CLIENT link;
//   - peer_id filter: a CLIENT link with a non-nil peer_id gets only the
//     spans with that peer_id;
//   - a node we export ourselves (AddLocalNode) is never relayed: our own
//     span (dist 0) already goes on every link, and a copy coming back to us
//     round a ring must not be passed on.
// The relayed copy is the source span with dist + 1 and rnss + the
// per-process constant (wrapping).
//
// Every mutating call returns the changes to make on the links, in order:
// new copies are advertised before the ones they replace are withdrawn, so
// that an importer downstream sees its next path before the old one goes.
// A withdrawal names the link and the source span whose copy goes.
//
// Bounds: at most kMaxSpansPerLink received spans of one link are taken
// (AddSpan refuses the rest, until some go); finding the best span of a
// node for a link is logarithmic in the node's spans, whatever their
// number and however many share one link.
//
// Threading: none (the caller's loop thread).
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "proto/dmsg.h"

namespace xdisk {

class SpanRelay {
 public:
  // The largest dist a relayed copy may carry.
  static constexpr uint32_t kMaxDist = 16;
  // Received spans taken per link. DragonFly's mesh carries one span per
  // exported disk and per PFS; 4096 leaves room for large hosts and for
  // what they relay, and bounds what one peer can make us keep and pass
  // on (docs/design.md "Relay").
  static constexpr size_t kMaxSpansPerLink = 4096;

  // What the table needs of a link: the peer's LNK_CONN.
  struct LinkView {
    uint8_t peer_type = 0;
    uint64_t peer_mask = 0;
    dmsg::Uuid peer_id{};
  };

  struct Change {
    enum class Kind { kAdvertise, kWithdraw };
    Kind kind;
    uint64_t link;
    uint64_t source;     // the received span the copy stands for
    dmsg::LnkSpan info;  // kAdvertise: the copy to send (dist and rnss rewritten)
  };

  // One relayed copy, for xdiskctl.
  struct Relayed {
    uint64_t link;
    uint64_t source;
    uint64_t source_link;
    uint32_t dist;  // as sent
    std::string pfs_label;
    std::string peer_label;
  };

  // `rnss_constant` is added to the rnss of every relayed copy; the
  // caller picks it at random once per process (never 0).
  explicit SpanRelay(uint32_t rnss_constant) : rnss_constant_(rnss_constant) {}

  // A link finished its LNK_CONN exchange: it gets the best copy of every
  // node its peer_mask admits.
  std::vector<Change> AddLink(uint64_t link, const LinkView& view);
  // The link is gone. Its copies went with it (no withdrawals for it are
  // returned). REQUIRES: the spans received on it were removed first
  // (RemoveSpan), as the link's loss terminates them before it reports down.
  std::vector<Change> RemoveLink(uint64_t link);

  // A span was received on `from_link` (which need not be an AddLink'ed
  // link: spans may arrive before our side calls the link up). Returns
  // false, taking nothing, if `from_link` has kMaxSpansPerLink spans
  // already (a later RemoveSpan of it is then a no-op).
  bool AddSpan(uint64_t span, uint64_t from_link, const dmsg::LnkSpan& info,
               std::vector<Change>* out);
  // The same, for tests: the changes, empty if refused.
  std::vector<Change> AddSpan(uint64_t span, uint64_t from_link, const dmsg::LnkSpan& info) {
    std::vector<Change> out;
    AddSpan(span, from_link, info, &out);
    return out;
  }
  // The span was withdrawn or its link lost: its copies are withdrawn and
  // the next best of its node advertised in their place.
  std::vector<Change> RemoveSpan(uint64_t span);

  // We export this node ourselves: copies of it are withdrawn and no more
  // are made until RemoveLocalNode. Counted: two local spans of one node
  // need two RemoveLocalNode calls.
  std::vector<Change> AddLocalNode(const dmsg::LnkSpan& info);
  std::vector<Change> RemoveLocalNode(const dmsg::LnkSpan& info);

  // The copies relayed now, by link then node.
  std::vector<Relayed> relayed() const;
  size_t span_count() const { return spans_.size(); }

 private:
  struct NodeKey {
    uint8_t peer_type;
    dmsg::Uuid peer_id;
    std::string peer_label;
    std::string pfs_label;
    dmsg::Uuid pfs_id;
    auto operator<=>(const NodeKey&) const = default;
  };
  struct Span {
    uint64_t link;
    dmsg::LnkSpan info;
    NodeKey node;
  };
  // The order of preference: lower dist, then lower rnss, then lower id.
  struct Rank {
    uint32_t dist;
    uint32_t rnss;
    uint64_t id;
    auto operator<=>(const Rank&) const = default;
  };
  // A node's spans by link, and the best of each link in one ordered set:
  // the best span for a link is the first of `link_bests` not from that
  // link (split horizon skips at most one entry), and whether the rules
  // admit it depends only on its dist (the other filters are the node's),
  // so no other need be looked at.
  struct NodeSpans {
    std::map<uint64_t, std::set<Rank>> by_link;
    std::set<Rank> link_bests;
  };
  static Rank RankOf(uint64_t id, const dmsg::LnkSpan& info) {
    return Rank{info.dist, info.rnss, id};
  }
  static NodeKey KeyOf(const dmsg::LnkSpan& info);
  // The span to relay to `link` for `node`, or 0.
  uint64_t BestFor(uint64_t link, const LinkView& view, const NodeKey& node) const;
  bool Admits(const LinkView& view, const dmsg::LnkSpan& info) const;
  // Brings the copies of `node` on every link in line with BestFor.
  void Reconcile(const NodeKey& node, std::vector<Change>* out);
  void ReconcileOn(uint64_t link, const LinkView& view, const NodeKey& node,
                   std::vector<Change>* out);

  uint32_t rnss_constant_;
  std::map<uint64_t, LinkView> links_;
  std::map<uint64_t, Span> spans_;
  std::map<NodeKey, NodeSpans> nodes_;
  std::map<uint64_t, size_t> spans_of_link_;  // received spans taken, by link
  std::map<NodeKey, int> local_nodes_;
  // (link, node) -> the source span relayed there.
  std::map<std::pair<uint64_t, NodeKey>, uint64_t> relayed_;
};

}  // namespace xdisk
