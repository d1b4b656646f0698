#include "daemon/link/transactions.h"

#include <algorithm>

namespace xdisk {

using namespace dmsg;

namespace {
constexpr size_t kMaxGhosts = 1 << 16;

std::string Describe(const Header& h) {
  char buf[96];
  snprintf(buf, sizeof buf, " (msgid %#llx circuit %#llx)",
           static_cast<unsigned long long>(h.msgid), static_cast<unsigned long long>(h.circuit));
  return ": " + CommandName(h.cmd) + buf;
}
}  // namespace

Transaction* TransactionTable::FindLocal(uint64_t msgid) const {
  auto it = local_.find(msgid);
  return it == local_.end() ? nullptr : it->second.get();
}

Transaction* TransactionTable::FindRemote(uint64_t msgid) const {
  auto it = remote_.find(msgid);
  return it == remote_.end() ? nullptr : it->second.get();
}

TransactionTable::RxResult TransactionTable::Receive(const Header& h) {
  const uint32_t cmd = h.cmd;
  const bool create = cmd & kFlagCreate, del = cmd & kFlagDelete, reply = cmd & kFlagReply;
  const bool abort = cmd & kFlagAbort, revtrans = cmd & kFlagRevTrans;

  if (!create && !del) {
    // Mid-stream or one-way. A msgid of 0 (DragonFly's one-way form) or an
    // unknown msgid is handled as one-way; ABORT on nothing live is dropped.
    if (h.msgid == 0) return {Verdict::kOneWay};
    Transaction* t = revtrans ? FindLocal(h.msgid) : FindRemote(h.msgid);
    if (t == nullptr) {
      if (abort) return {Verdict::kIgnore, nullptr, "ABORT for a finished transaction"};
      return {Verdict::kOneWay};
    }
    if (t->rx_delete)
      return {Verdict::kProtocolError, nullptr, "message after DELETE" + Describe(h)};
    return {Verdict::kDeliver, t};
  }

  if (create && !reply) {
    // The peer opens a transaction (table R). The msgid names its own state,
    // so REVTRANS makes no sense here.
    if (revtrans) return {Verdict::kProtocolError, nullptr, "CREATE with REVTRANS" + Describe(h)};
    if (h.msgid == 0)
      return {Verdict::kProtocolError, nullptr, "CREATE with msgid 0" + Describe(h)};
    if (FindRemote(h.msgid) != nullptr) {
      return {Verdict::kProtocolError, nullptr, "duplicate CREATE" + Describe(h)};
    }
    Transaction* parent = nullptr;
    if (h.circuit != 0) {
      parent = (cmd & kFlagRevCirc) ? FindLocal(h.circuit) : FindRemote(h.circuit);
      // A CREATE under a parent that is gone races its teardown; libdmsg drops
      // it silently (E2+), and answering could itself trip the peer.
      if (parent == nullptr || parent->dying || parent->rx_delete) {
        return {Verdict::kIgnore, nullptr, "CREATE under a closed or unknown parent" + Describe(h)};
      }
    }
    ghost_remote_.erase(h.msgid);
    auto t = std::make_unique<Transaction>();
    t->msgid = h.msgid;
    t->ours = false;
    t->parent = parent;
    t->cmd = BaseCmd(cmd);
    t->rx_create = true;
    t->rx_delete = del;
    Transaction* raw = t.get();
    if (parent) parent->children.push_back(raw);
    remote_.emplace(h.msgid, std::move(t));
    return {Verdict::kNew, raw};
  }

  // Replies travel on transactions we opened; everything else on the peer's.
  if (reply && !revtrans) {
    return {Verdict::kProtocolError, nullptr, "REPLY without REVTRANS" + Describe(h)};
  }
  Transaction* t = revtrans ? FindLocal(h.msgid) : FindRemote(h.msgid);
  if (t == nullptr) {
    auto& ghosts = revtrans ? ghost_local_ : ghost_remote_;
    if (ghosts.count(h.msgid)) {
      if (del) ghosts.erase(h.msgid);
      return {Verdict::kIgnore, nullptr, "late message on a locally terminated transaction"};
    }
    if (abort) return {Verdict::kIgnore, nullptr, "ABORT for an unknown transaction"};
    return {Verdict::kProtocolError, nullptr, "unknown transaction" + Describe(h)};
  }
  if (t->rx_delete) {
    if (abort) return {Verdict::kIgnore, nullptr, "ABORT after DELETE"};
    return {Verdict::kProtocolError, nullptr, "message after DELETE" + Describe(h)};
  }
  if (create) {
    // REPLY|CREATE: the first message of the peer's side of our transaction.
    if (t->rx_create)
      return {Verdict::kProtocolError, nullptr, "duplicate reply CREATE" + Describe(h)};
    t->rx_create = true;
  } else if (!t->rx_create) {
    // DELETE without CREATE on a transaction whose peer side never opened.
    if (abort) return {Verdict::kIgnore, nullptr, "ABORT|DELETE before CREATE"};
    return {Verdict::kProtocolError, nullptr, "DELETE before CREATE" + Describe(h)};
  }
  if (del) t->rx_delete = true;
  return {Verdict::kDeliver, t};
}

Transaction* TransactionTable::OpenLocal(uint32_t base_cmd, Transaction* parent) {
  auto t = std::make_unique<Transaction>();
  // Monotonic ids are never reused, which also makes ghost entries safe.
  t->msgid = next_msgid_++;
  t->ours = true;
  t->parent = parent;
  t->cmd = BaseCmd(base_cmd);
  Transaction* raw = t.get();
  if (parent) parent->children.push_back(raw);
  local_.emplace(raw->msgid, std::move(t));
  return raw;
}

bool TransactionTable::PrepareSend(Transaction* t, uint32_t flags, Header* h) {
  if (t->tx_delete) return false;
  uint32_t f = flags & (kFlagDelete | kFlagAbort);
  if (!t->tx_create) f |= kFlagCreate;
  if (!t->ours) f |= kFlagReply | kFlagRevTrans;
  if (t->parent && !t->parent->ours) f |= kFlagRevCirc;
  t->tx_create = true;
  if (f & kFlagDelete) t->tx_delete = true;
  if (t->dying) return false;
  h->msgid = t->msgid;
  h->circuit = t->parent ? t->parent->msgid : 0;
  h->cmd = (h->cmd & kBaseCmdMask) | f;
  return true;
}

Frame TransactionTable::SynthesizeLostLink(Transaction* t) {
  Frame f;
  uint32_t cmd = kLnkError | kFlagDelete | kFlagAbort;
  if (!t->rx_create) cmd |= kFlagCreate;
  // As if sent by the peer: replies on our transactions, REVTRANS/REVCIRC
  // naming what we opened.
  if (t->ours) cmd |= kFlagReply | kFlagRevTrans;
  if (t->parent && t->parent->ours) cmd |= kFlagRevCirc;
  f.hdr.cmd = cmd;
  f.hdr.msgid = t->msgid;
  f.hdr.circuit = t->parent ? t->parent->msgid : 0;
  f.hdr.error = kErrLostLink;
  t->rx_create = true;
  t->rx_delete = true;
  t->rx_delete_synthesized = true;
  t->dying = true;
  return f;
}

std::vector<Transaction*> TransactionTable::SubtreePostOrder(Transaction* root) const {
  std::vector<Transaction*> out;
  // Iterative post-order: children first so that upper layers see their I/O
  // fail before the open or span that carried it.
  std::vector<std::pair<Transaction*, size_t>> stack;
  auto push_roots = [&](auto& table) {
    for (auto& [id, t] : table)
      if (t->parent == nullptr) stack.emplace_back(t.get(), 0);
  };
  if (root) {
    stack.emplace_back(root, 0);
  } else {
    push_roots(local_);
    push_roots(remote_);
  }
  while (!stack.empty()) {
    auto& [t, i] = stack.back();
    if (i < t->children.size()) {
      Transaction* c = t->children[i++];
      stack.emplace_back(c, 0);
    } else {
      out.push_back(t);
      stack.pop_back();
    }
  }
  return out;
}

void TransactionTable::Unlink(Transaction* t) {
  if (t->parent) {
    auto& v = t->parent->children;
    v.erase(std::remove(v.begin(), v.end(), t), v.end());
  }
  for (Transaction* c : t->children) c->parent = nullptr;
}

bool TransactionTable::MaybeFree(Transaction* t) {
  if (!(t->tx_delete && t->rx_delete)) return false;
  Unlink(t);
  auto& table = t->ours ? local_ : remote_;
  uint64_t id = t->msgid;
  bool ours = t->ours;
  // A dying transaction's rx_delete was synthesised: the peer's real DELETE
  // may still come. Remember the id so it is dropped, not fatal.
  if (t->rx_delete_synthesized) {
    auto& ghosts = ours ? ghost_local_ : ghost_remote_;
    if (ghost_order_.size() >= kMaxGhosts) {
      // Evict the oldest: a peer that owes that many DELETEs is not coming
      // back for the first ones.
      auto [old_ours, old_id] = ghost_order_.front();
      ghost_order_.pop_front();
      (old_ours ? ghost_local_ : ghost_remote_).erase(old_id);
    }
    if (ghosts.insert(id).second) ghost_order_.emplace_back(ours, id);
  }
  table.erase(id);
  return true;
}

void TransactionTable::Clear() {
  local_.clear();
  remote_.clear();
  ghost_local_.clear();
  ghost_remote_.clear();
  ghost_order_.clear();
}

}  // namespace xdisk
