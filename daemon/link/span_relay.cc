#include "daemon/link/span_relay.h"

namespace xdisk {

using namespace dmsg;

SpanRelay::NodeKey SpanRelay::KeyOf(const LnkSpan& info) {
  return NodeKey{info.peer_type, info.peer_id, info.peer_label, info.pfs_label, info.pfs_id};
}

bool SpanRelay::Admits(const LinkView& view, const LnkSpan& info) const {
  if (info.dist >= kMaxDist) return false;  // the copy would carry dist > 16
  if (info.peer_type >= 64 || !((view.peer_mask >> info.peer_type) & 1)) return false;
  if (view.peer_type == kPeerClient) {
    // Clients never see each other; a client naming a peer_id sees only
    // that peer's spans.
    if (info.peer_type == kPeerClient) return false;
    if (!IsNil(view.peer_id) && view.peer_id != info.peer_id) return false;
  }
  return true;
}

uint64_t SpanRelay::BestFor(uint64_t link, const LinkView& view, const NodeKey& node) const {
  if (local_nodes_.count(node)) return 0;
  auto n = nodes_.find(node);
  if (n == nodes_.end()) return 0;
  for (const Rank& r : n->second.link_bests) {
    const Span& s = spans_.at(r.id);
    if (s.link == link) continue;  // split horizon; the next entry is another link's
    // The filters other than dist are the same for every span of the node,
    // and the spans after this one have no lower dist.
    return Admits(view, s.info) ? r.id : 0;
  }
  return 0;
}

void SpanRelay::ReconcileOn(uint64_t link, const LinkView& view, const NodeKey& node,
                            std::vector<Change>* out) {
  const uint64_t want = BestFor(link, view, node);
  auto key = std::make_pair(link, node);
  auto it = relayed_.find(key);
  const uint64_t have = it == relayed_.end() ? 0 : it->second;
  if (want == have) return;
  if (want != 0) {
    LnkSpan copy = spans_.at(want).info;
    copy.dist += 1;
    copy.rnss += rnss_constant_;  // wraps, as in libdmsg
    out->push_back(Change{Change::Kind::kAdvertise, link, want, std::move(copy)});
    relayed_[key] = want;
  } else {
    relayed_.erase(key);
  }
  // The old copy goes after its successor is out.
  if (have != 0) out->push_back(Change{Change::Kind::kWithdraw, link, have, {}});
}

void SpanRelay::Reconcile(const NodeKey& node, std::vector<Change>* out) {
  for (auto& [link, view] : links_) ReconcileOn(link, view, node, out);
}

std::vector<SpanRelay::Change> SpanRelay::AddLink(uint64_t link, const LinkView& view) {
  std::vector<Change> out;
  links_[link] = view;
  for (auto& [node, spans] : nodes_) ReconcileOn(link, view, node, &out);
  return out;
}

std::vector<SpanRelay::Change> SpanRelay::RemoveLink(uint64_t link) {
  std::vector<Change> out;
  links_.erase(link);
  for (auto it = relayed_.begin(); it != relayed_.end();) {
    it = it->first.first == link ? relayed_.erase(it) : std::next(it);
  }
  // Spans still recorded for the link (a caller that did not remove them):
  // drop them now, which re-advertises their nodes elsewhere.
  std::vector<uint64_t> stale;
  for (auto& [id, s] : spans_)
    if (s.link == link) stale.push_back(id);
  for (uint64_t id : stale) {
    std::vector<Change> more = RemoveSpan(id);
    out.insert(out.end(), more.begin(), more.end());
  }
  return out;
}

bool SpanRelay::AddSpan(uint64_t span, uint64_t from_link, const LnkSpan& info,
                        std::vector<Change>* out) {
  if (spans_.count(span)) return true;
  size_t& taken = spans_of_link_[from_link];
  if (taken >= kMaxSpansPerLink) return false;
  ++taken;
  NodeKey node = KeyOf(info);
  spans_[span] = Span{from_link, info, node};
  NodeSpans& n = nodes_[node];
  std::set<Rank>& mine = n.by_link[from_link];
  const Rank rank = RankOf(span, info);
  if (mine.empty() || rank < *mine.begin()) {
    if (!mine.empty()) n.link_bests.erase(*mine.begin());
    n.link_bests.insert(rank);
  }
  mine.insert(rank);
  Reconcile(node, out);
  return true;
}

std::vector<SpanRelay::Change> SpanRelay::RemoveSpan(uint64_t span) {
  std::vector<Change> out;
  auto it = spans_.find(span);
  if (it == spans_.end()) return out;
  NodeKey node = it->second.node;
  const uint64_t link = it->second.link;
  const Rank rank = RankOf(span, it->second.info);
  spans_.erase(it);
  if (auto t = spans_of_link_.find(link); t != spans_of_link_.end() && --t->second == 0)
    spans_of_link_.erase(t);
  auto n = nodes_.find(node);
  auto mine = n->second.by_link.find(link);
  const bool was_best = *mine->second.begin() == rank;
  mine->second.erase(rank);
  if (was_best) {
    n->second.link_bests.erase(rank);
    if (!mine->second.empty()) n->second.link_bests.insert(*mine->second.begin());
  }
  if (mine->second.empty()) n->second.by_link.erase(mine);
  if (n->second.by_link.empty()) nodes_.erase(n);
  Reconcile(node, &out);
  return out;
}

std::vector<SpanRelay::Change> SpanRelay::AddLocalNode(const LnkSpan& info) {
  std::vector<Change> out;
  NodeKey node = KeyOf(info);
  ++local_nodes_[node];
  Reconcile(node, &out);
  return out;
}

std::vector<SpanRelay::Change> SpanRelay::RemoveLocalNode(const LnkSpan& info) {
  std::vector<Change> out;
  NodeKey node = KeyOf(info);
  auto it = local_nodes_.find(node);
  if (it == local_nodes_.end()) return out;
  if (--it->second == 0) local_nodes_.erase(it);
  Reconcile(node, &out);
  return out;
}

std::vector<SpanRelay::Relayed> SpanRelay::relayed() const {
  std::vector<Relayed> out;
  for (auto& [key, source] : relayed_) {
    const Span& s = spans_.at(source);
    out.push_back(
        Relayed{key.first, source, s.link, s.info.dist + 1, s.info.pfs_label, s.info.peer_label});
  }
  return out;
}

}  // namespace xdisk
