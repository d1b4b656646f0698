#include "daemon/link/relay.h"

#include <cstdio>
#include <random>

#include "daemon/base/log.h"

namespace xdisk {

using namespace dmsg;

Relay::Relay(uv_loop_t* loop, uint32_t rnss_constant) : loop_(loop), table_(rnss_constant) {}

Relay::~Relay() = default;

uint32_t Relay::RandomRnss() {
  std::random_device rd;
  uint32_t r = 0;
  while (r == 0) r = rd();
  return r;
}

void Relay::OnLinkUp(Link& link) {
  if (shut_down_) return;
  FlushSpans();
  links_[Id(&link)] = &link;
  const LnkConn& c = link.peer_conn();
  Apply(table_.AddLink(Id(&link), SpanRelay::LinkView{c.peer_type, c.peer_mask, c.peer_id}));
}

void Relay::OnLinkDown(Link& link) {
  // The link terminated every transaction on it first: our copies there and
  // its received spans (OnSpanRemoved) are gone already; their removal may
  // still be queued.
  FlushSpans();
  links_.erase(Id(&link));
  counters_.erase(&link);
  txns_of_.erase(&link);
  refusal_logged_.erase(&link);
  for (auto it = copies_.begin(); it != copies_.end();) {
    if (it->first.first == &link) {
      copy_of_.erase(it->second);
      it = copies_.erase(it);
    } else {
      ++it;
    }
  }
  // Links paused for this one read again; this one waits for nothing.
  ReleaseWaiters(link);
  if (auto it = paused_by_.find(&link); it != paused_by_.end()) {
    for (Link* target : it->second) paused_for_[target].erase(&link);
    paused_by_.erase(it);
  }
  // While shutting down nothing is advertised any more, not even the next
  // best copy of a span that went with this link.
  std::vector<SpanRelay::Change> changes = table_.RemoveLink(Id(&link));
  if (!shut_down_) Apply(changes);
}

void Relay::OnLocalSpanAdded(const LnkSpan& info) {
  if (shut_down_) return;
  FlushSpans();
  Apply(table_.AddLocalNode(info));
}

void Relay::OnLocalSpanRemoved(const LnkSpan& info) {
  if (shut_down_) return;
  FlushSpans();
  Apply(table_.RemoveLocalNode(info));
}

void Relay::Shutdown() {
  shut_down_ = true;
  pending_.clear();
  pending_add_.clear();
  check_.Close();
  auto copies = copies_;
  for (auto& [key, t] : copies) Withdraw(key.first, key.second);
}

void Relay::OnSpanAdded(const RemoteSpan& span) {
  if (shut_down_) return;
  sources_[span.id] = span;
  QueueSpan(PendingSpan{true, span.id, Id(span.link), span.info});
}

void Relay::OnSpanRemoved(const RemoteSpan& span, const std::string&) {
  // At once: a child opened under a copy must not reach the source's
  // transaction, which goes now.
  sources_.erase(span.id);
  if (shut_down_) return;
  if (auto it = pending_add_.find(span.id); it != pending_add_.end()) {
    // Opened and withdrawn within one turn: the table never hears of it.
    pending_[it->second].id = 0;
    pending_add_.erase(it);
    return;
  }
  QueueSpan(PendingSpan{false, span.id, Id(span.link), {}});
}

void Relay::QueueSpan(PendingSpan p) {
  if (p.add) pending_add_[p.id] = pending_.size();
  pending_.push_back(std::move(p));
  if (shut_down_) return;
  if (!check_.is_open() && check_.Open(uv_check_init, loop_) == 0) check_.get()->data = this;
  if (check_.is_open()) uv_check_start(check_.get(), OnCheck);
}

void Relay::OnCheck(uv_check_t* h) {
  uv_check_stop(h);
  static_cast<Relay*>(h->data)->FlushSpans();
}

void Relay::FlushSpans() {
  if (pending_.empty()) return;
  std::vector<PendingSpan> events = std::move(pending_);
  pending_.clear();
  pending_add_.clear();
  std::vector<SpanRelay::Change> changes;
  for (PendingSpan& e : events) {
    if (e.id == 0) continue;  // cancelled
    changes.clear();
    if (!e.add) {
      changes = table_.RemoveSpan(e.id);
    } else if (!table_.AddSpan(e.id, e.link, e.info, &changes)) {
      auto src = sources_.find(e.id);
      if (src != sources_.end()) {
        LogRefusal(*src->second.link, "spans beyond the relay's limit of 4096 per link");
        sources_.erase(src);
      }
      continue;
    }
    Apply(changes);
  }
}

void Relay::LogRefusal(Link& link, const char* what) {
  // Once per link: a flooding peer must not flood the log too.
  if (!refusal_logged_.insert(&link).second) return;
  XLOG(kWarning, link.name(), "relay: refusing %s (logged once per link)", what);
}

void Relay::Apply(const std::vector<SpanRelay::Change>& changes) {
  for (const SpanRelay::Change& c : changes) {
    if (c.kind == SpanRelay::Change::Kind::kAdvertise) {
      Advertise(c);
    } else {
      auto l = links_.find(c.link);
      if (l != links_.end()) Withdraw(l->second, c.source);
    }
  }
}

void Relay::Advertise(const SpanRelay::Change& c) {
  auto l = links_.find(c.link);
  auto src = sources_.find(c.source);
  if (l == links_.end() || src == sources_.end()) return;
  Link* link = l->second;
  // The source's bytes, only dist and rnss rewritten: reserved fields and
  // a non-block span's media union pass as received.
  std::vector<uint8_t> ext = c.info.received.empty()
                                 ? c.info.Encode()
                                 : LnkSpan::Relayed(c.info.received, c.info.dist, c.info.rnss);
  // A link that is closing refuses (nullptr); the table forgets it when
  // the link reports down.
  Transaction* t = link->Open(kLnkSpan, nullptr, this, ext);
  if (t == nullptr) return;
  copies_[{link, c.source}] = t;
  copy_of_[t] = {link, c.source};
  XLOG(kInfo, link->name(), "relaying span '%s' from %s, dist %u", c.info.pfs_label.c_str(),
       src->second.link->peer().c_str(), c.info.dist);
}

void Relay::Withdraw(Link* link, uint64_t source) {
  auto it = copies_.find({link, source});
  if (it == copies_.end()) return;
  Transaction* t = it->second;
  copies_.erase(it);
  copy_of_.erase(t);
  XLOG(kInfo, link->name(), "withdrawing relayed span (source %llu)",
       static_cast<unsigned long long>(source));
  // As with our own spans: what hangs under the copy ends here first
  // (its other halves get LOSTLINK), then the DELETE goes out.
  link->TerminateChildren(t);
  link->Reply(t, 0, true);
}

TransactionHandler* Relay::OnChildCreate(Link& link, Transaction& parent, Transaction& child,
                                         const Frame&) {
  Link* b = nullptr;
  Transaction* b_parent = nullptr;
  if (auto c = copy_of_.find(&parent); c != copy_of_.end()) {
    auto src = sources_.find(c->second.second);
    if (src != sources_.end()) {
      b = src->second.link;
      b_parent = src->second.txn;
    }
  } else if (auto* p = static_cast<Pair*>(parent.user); p != nullptr) {
    if (&parent == p->ta) {
      b = p->b;
      b_parent = p->tb;
    } else {
      b = p->a;
      b_parent = p->ta;
    }
  }
  int depth = 1;
  if (auto* p = static_cast<Pair*>(parent.user); p != nullptr) depth = p->depth + 1;
  // Without a far side the CREATE is answered LOSTLINK in OnMessage.
  auto* pair = new Pair{&link, &child, b, b_parent};
  pair->depth = depth;
  size_t& open = txns_of_[&link];
  if (open >= kMaxTxnsPerLink) {
    pair->refuse = kErrCantCirc;
    LogRefusal(link, "transactions beyond the relay's limit of 8192 open per link");
  } else if (depth > kMaxDepth) {
    pair->refuse = kErrCantCirc;
    LogRefusal(link, "transactions nested deeper than the relay's limit of 8 levels");
  } else {
    ++open;
    pair->counted = true;
  }
  child.user = pair;
  child.deferred = true;  // its side closes when the far side's does
  return this;
}

void Relay::OnMessage(Link& link, Transaction& t, Frame& f) {
  if (auto c = copy_of_.find(&t); c != copy_of_.end()) {
    // One of our copies: the peer acknowledges it or closes it. A closed
    // copy is not offered again; the link answers the DELETE.
    if (f.hdr.cmd & kFlagDelete) {
      copies_.erase(c->second);
      copy_of_.erase(c);
    }
    return;
  }
  auto* p = static_cast<Pair*>(t.user);
  if (p == nullptr) return;
  const bool from_a = &t == p->ta;
  Link* to = from_a ? p->b : p->a;
  const size_t aux = f.aux.size();
  bool passed = false;
  Transaction* other = nullptr;
  if (from_a && !p->opened && p->refuse != 0) {
    p->opened = true;
    if (!t.tx_delete && !t.dying) link.Reply(&t, p->refuse, true);
    return;
  }
  if (from_a && !p->opened) {
    p->opened = true;
    if (to != nullptr && p->b_parent != nullptr) p->tb = to->OpenRelayed(p->b_parent, this, f);
    p->b_parent = nullptr;
    if (p->tb != nullptr) {
      p->tb->user = p;
      p->tb->deferred = true;
      ++counters_[to].txns;
      passed = true;
      other = p->tb;
    }
  } else {
    other = from_a ? p->tb : p->ta;
    if (other != nullptr) passed = to->SendRelayed(other, f);
  }
  if (passed) {
    counters_[to].bytes += aux;
    Throttle(link, *to);
    return;
  }
  // Nowhere to pass it: this half ends (the far one is gone or closing).
  if (!t.tx_delete && !t.dying) link.Reply(&t, kErrLostLink, true);
}

void Relay::OnFreed(Link&, Transaction& t) {
  if (auto c = copy_of_.find(&t); c != copy_of_.end()) {
    copies_.erase(c->second);
    copy_of_.erase(c);
    return;
  }
  auto* p = static_cast<Pair*>(t.user);
  if (p == nullptr) return;
  t.user = nullptr;
  if (p->ta == &t) {
    p->ta = nullptr;
    if (p->counted) {
      auto n = txns_of_.find(p->a);
      if (n != txns_of_.end() && n->second > 0) --n->second;
    }
  }
  if (p->tb == &t) p->tb = nullptr;
  // The pair goes with its last half; a half never opened counts as gone.
  if (p->ta == nullptr && (p->tb == nullptr)) delete p;
}

void Relay::Throttle(Link& from, Link& to) {
  if (&from == &to || to.write_queue_bytes() <= kHighWaterBytes) return;
  if (paused_for_[&to].insert(&from).second) {
    paused_by_[&from].insert(&to);
    from.SetReadPaused(true, Link::kPauseRelay);
  }
  if (!to.drain_watched())
    to.NotifyWhenDrained(kLowWaterBytes, [this](Link& l, Link::DrainEvent e) { OnDrain(l, e); });
}

void Relay::OnDrain(Link& to, Link::DrainEvent event) {
  if (event == Link::DrainEvent::kDrained) {
    ReleaseWaiters(to);
    return;
  }
  // The peer took nothing from us for a whole link timeout while links
  // waited for it. Waiting longer could be forever: in a ring, relays can
  // each wait for the next to read (docs/design.md "Relay"). Dropping the
  // link ends what crossed it (LOSTLINK both ways, importers resend on
  // another path) and resumes the waiters from OnLinkDown.
  auto it = paused_for_.find(&to);
  const size_t waiting = it == paused_for_.end() ? 0 : it->second.size();
  char why[160];
  snprintf(why, sizeof why,
           "relay: the peer took no data for the link timeout while %zu bytes were queued "
           "for it and %zu link(s) paused for it",
           to.write_queue_bytes(), waiting);
  to.Close(why);
}

void Relay::ReleaseWaiters(Link& to) {
  auto it = paused_for_.find(&to);
  if (it == paused_for_.end()) return;
  std::set<Link*> waiting = std::move(it->second);
  paused_for_.erase(it);
  for (Link* w : waiting) {
    auto& targets = paused_by_[w];
    targets.erase(&to);
    if (targets.empty()) {
      paused_by_.erase(w);
      w->SetReadPaused(false, Link::kPauseRelay);
    }
  }
}

Relay::Counters Relay::counters(const Link* link) const {
  auto it = counters_.find(link);
  return it == counters_.end() ? Counters{} : it->second;
}

std::vector<Relay::RelayedSpan> Relay::relayed() const {
  std::vector<RelayedSpan> out;
  for (const SpanRelay::Relayed& r : table_.relayed()) {
    auto to = links_.find(r.link);
    auto from = links_.find(r.source_link);
    if (to == links_.end() || !copies_.count({to->second, r.source})) continue;
    out.push_back(RelayedSpan{to->second->peer(), from == links_.end() ? "?" : from->second->peer(),
                              r.dist, r.pfs_label, r.peer_label});
  }
  return out;
}

}  // namespace xdisk
