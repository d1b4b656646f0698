#include "daemon/link/span_registry.h"

#include <algorithm>

#include "daemon/base/log.h"
#include "daemon/link/relay.h"

namespace xdisk {

using namespace dmsg;

bool SpanRegistry::Admits(const Link& link, uint8_t peer_type) {
  // §6.3 type filter: bit N of the peer's mask asks for spans of type N.
  return peer_type < 64 && ((link.peer_conn().peer_mask >> peer_type) & 1);
}

void SpanRegistry::SetRelay(Relay* relay) {
  relay_ = relay;
  AddObserver(relay);
}

uint64_t SpanRegistry::AddLocalSpan(const LnkSpan& info, TransactionHandler* service) {
  uint64_t id = next_id_++;
  LocalSpan& s = local_[id];
  s.id = id;
  s.info = info;
  s.service = service;
  for (Link* l : links_) Advertise(s, *l);
  if (relay_) relay_->OnLocalSpanAdded(info);
  return id;
}

void SpanRegistry::Advertise(LocalSpan& s, Link& link) {
  if (!link.up() || !Admits(link, s.info.peer_type) || s.open_on.count(&link)) return;
  std::vector<uint8_t> ext = s.info.Encode();
  Transaction* t = link.Open(kLnkSpan, nullptr, this, ext);
  if (t == nullptr) return;
  s.open_on[&link] = t;
  tags_[t] = SpanTag{true, s.id};
  XLOG(kInfo, link.name(), "advertising span '%s' (%s, %llu bytes)", s.info.pfs_label.c_str(),
       s.info.peer_label.c_str(), static_cast<unsigned long long>(s.info.media_bytes));
}

void SpanRegistry::RemoveLocalSpan(uint64_t id) {
  auto it = local_.find(id);
  if (it == local_.end()) return;
  // Withdraw on every link. The transactions stay in the link's table until
  // the peer answers our DELETE; OnFreed then drops the tags.
  auto open_on = it->second.open_on;
  const LnkSpan info = it->second.info;
  local_.erase(it);
  if (relay_) relay_->OnLocalSpanRemoved(info);
  for (auto& [link, t] : open_on) {
    tags_.erase(t);
    // The peer treats everything stacked under the span as gone once our
    // DELETE arrives (§5.3); end it here first so that no late reply (an I/O
    // finishing after this) reaches the peer for a transaction it dropped.
    link->TerminateChildren(t);
    link->Reply(t, 0, true);
  }
}

void SpanRegistry::RemoveAllLocalSpans() {
  std::vector<uint64_t> ids;
  for (auto& [id, s] : local_) ids.push_back(id);
  for (uint64_t id : ids) RemoveLocalSpan(id);
}

void SpanRegistry::OnLinkUp(Link& link) {
  links_.push_back(&link);
  for (auto& [id, s] : local_) Advertise(s, link);
  if (relay_) relay_->OnLinkUp(link);
}

TransactionHandler* SpanRegistry::OnTopLevelCreate(Link& link, Transaction& t, const Frame& f) {
  (void)link, (void)t;
  if (BaseCmd(f.hdr.cmd) == kLnkSpan) return this;
  return nullptr;
}

void SpanRegistry::OnLinkDown(Link& link, const std::string&) {
  // Every span transaction was terminated (LOSTLINK) before this call.
  links_.erase(std::remove(links_.begin(), links_.end(), &link), links_.end());
  for (auto& [id, s] : local_) s.open_on.erase(&link);
  if (relay_) relay_->OnLinkDown(link);
}

void SpanRegistry::OnMessage(Link& link, Transaction& t, Frame& f) {
  const uint32_t cmd = f.hdr.cmd;
  if (t.ours) {
    // One of our spans: the peer acknowledges, refuses, or closes it.
    if ((cmd & kFlagCreate) && f.hdr.error != 0 && f.hdr.error != kErrLostLink) {
      XLOG(kWarning, link.name(), "peer refused our span: %s", ErrorName(f.hdr.error).c_str());
    }
    if (cmd & kFlagDelete) {
      auto tag = tags_.find(&t);
      if (tag != tags_.end()) {
        auto it = local_.find(tag->second.id);
        if (it != local_.end()) it->second.open_on.erase(&link);
        if (f.hdr.error != kErrLostLink)
          XLOG(kInfo, link.name(), "peer closed our span (error %s)",
               ErrorName(f.hdr.error).c_str());
      }
    }
    return;
  }

  if (cmd & kFlagCreate) {
    RemoteSpan rs;
    rs.id = next_id_++;
    rs.link = &link;
    rs.txn = &t;
    rs.info = LnkSpan::Decode(f.ext_span());
    link.Reply(&t, 0, false);
    tags_[&t] = SpanTag{false, rs.id};
    auto [it, inserted] = remote_.emplace(rs.id, rs);
    XLOG(kInfo, link.name(), "span '%s' from '%s': type %u dist %u, %llu bytes, blksize %u",
         rs.info.pfs_label.c_str(), rs.info.peer_label.c_str(), rs.info.peer_type, rs.info.dist,
         static_cast<unsigned long long>(rs.info.media_bytes), rs.info.blksize);
    for (SpanObserver* o : observers_) o->OnSpanAdded(it->second);
  }
  if (cmd & kFlagDelete) {
    auto tag = tags_.find(&t);
    if (tag == tags_.end()) return;
    auto it = remote_.find(tag->second.id);
    tags_.erase(tag);
    if (it == remote_.end()) return;
    std::string why = f.hdr.error == kErrLostLink ? "link lost" : "withdrawn by peer";
    XLOG(kInfo, link.name(), "span '%s' removed: %s", it->second.info.pfs_label.c_str(),
         why.c_str());
    RemoteSpan gone = it->second;
    remote_.erase(it);
    for (SpanObserver* o : observers_) o->OnSpanRemoved(gone, why);
  }
}

TransactionHandler* SpanRegistry::OnChildCreate(Link& link, Transaction& parent, Transaction& child,
                                                const Frame& f) {
  auto tag = tags_.find(&parent);
  if (tag == tags_.end() || !tag->second.local) return nullptr;
  auto it = local_.find(tag->second.id);
  if (it == local_.end() || it->second.service == nullptr) return nullptr;
  return it->second.service->OnChildCreate(link, parent, child, f);
}

void SpanRegistry::OnFreed(Link& link, Transaction& t) {
  auto tag = tags_.find(&t);
  if (tag == tags_.end()) return;
  if (tag->second.local) {
    auto it = local_.find(tag->second.id);
    if (it != local_.end()) it->second.open_on.erase(&link);
  } else {
    // A span freed without a DELETE reaching OnMessage cannot happen (the
    // link always delivers one), but never leave a dangling RemoteSpan.
    auto it = remote_.find(tag->second.id);
    if (it != remote_.end()) {
      RemoteSpan gone = it->second;
      remote_.erase(it);
      for (SpanObserver* o : observers_) o->OnSpanRemoved(gone, "freed");
    }
  }
  tags_.erase(tag);
}

}  // namespace xdisk
