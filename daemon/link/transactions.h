// The per-link transaction tables of dmsg (spec §5): table L holds the
// transactions we opened, table R those the peer opened. TransactionTable is
// pure bookkeeping (no sockets, no loop) so the state rules can be tested
// directly; Link (daemon/link/link.h) drives it and dispatches to handlers.
//
// State of one transaction, per direction: CREATE sent/received, DELETE
// sent/received. It is freed once DELETE went both ways. Transactions form a
// tree through `parent` (stacking, §5.3). See docs/link-states.md.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "proto/dmsg.h"

namespace xdisk {

class Link;
struct Transaction;

// Receives the messages of the transactions it handles. Handlers are
// long-lived module objects (the span registry, the exporter, an imported
// disk); per-transaction state hangs off Transaction::user.
//
// All calls happen on the loop thread, from inside Link's receive path or its
// link-loss path. A handler may send on the link from inside any callback.
class TransactionHandler {
 public:
  virtual ~TransactionHandler() = default;

  // A message arrived on `t` and the state has been updated (t.rx_delete is
  // already true for a DELETE). The handler may take f.aux (move it out):
  // nothing reads the frame after this returns. Synthesised LOSTLINK terminations (link loss,
  // parent deleted) arrive here too, as LNK_ERROR|DELETE with error 0x21 and
  // ABORT set. If the message closed the peer's side and the handler did not
  // close ours nor set t.deferred, the link closes it after this returns
  // (LNK_ERROR|DELETE).
  virtual void OnMessage(Link& link, Transaction& t, dmsg::Frame& f) = 0;

  // The peer opened `child` under `parent` (which this handler handles).
  // Return the handler for the child, or nullptr to have the link answer
  // LNK_ERROR|REPLY|CREATE|DELETE with DMSG_ERR_NOSUPP. The chosen handler
  // then gets OnMessage() for the CREATE frame itself.
  virtual TransactionHandler* OnChildCreate(Link& link, Transaction& parent, Transaction& child,
                                            const dmsg::Frame& f) {
    (void)link, (void)parent, (void)child, (void)f;
    return nullptr;
  }

  // `t` is about to be freed: drop every pointer to it.
  virtual void OnFreed(Link& link, Transaction& t) { (void)link, (void)t; }
};

struct Transaction {
  uint64_t msgid = 0;
  bool ours = false;  // in table L (we opened it)
  Transaction* parent = nullptr;
  uint32_t cmd = 0;  // base command of the opening CREATE
  bool tx_create = false, tx_delete = false;
  bool rx_create = false, rx_delete = false;
  // Terminated locally (link lost or parent deleted): anything a handler
  // sends on it is discarded, as DragonFly's kernel does (§5.3).
  bool dying = false;
  // rx_delete was synthesised (LOSTLINK): the peer's real DELETE may still come.
  bool rx_delete_synthesized = false;
  std::vector<Transaction*> children;
  TransactionHandler* handler = nullptr;
  void* user = nullptr;  // the handler's per-transaction state
  // Set by a handler that will answer later (disk I/O in flight): the link
  // then does not close our side when the peer's DELETE has arrived.
  bool deferred = false;
  // Non-zero while the link is delivering to this transaction's handler:
  // freeing is deferred until the delivery returns.
  uint32_t busy = 0;
};

class TransactionTable {
 public:
  enum class Verdict {
    kOneWay,         // not part of a transaction: handle as a one-way message
    kNew,            // the peer opened a new transaction: `txn` is the new R entry
    kDeliver,        // a message on an existing transaction `txn`
    kIgnore,         // drop this message silently (allowed by §5.4), log at debug
    kProtocolError,  // a daemon-assertion case: drop the link, log `reason`
  };
  struct RxResult {
    RxResult(Verdict v, Transaction* t = nullptr, std::string r = {})
        : verdict(v), txn(t), reason(std::move(r)) {}
    Verdict verdict;
    Transaction* txn;
    std::string reason;
  };

  TransactionTable() = default;
  TransactionTable(const TransactionTable&) = delete;
  TransactionTable& operator=(const TransactionTable&) = delete;

  // Validates the transaction fields of a received header against §5.4 and
  // updates the receive state (rx_create/rx_delete). On kNew, the R entry
  // exists with its parent linked. Does not free anything: call MaybeFree()
  // after the handler ran.
  RxResult Receive(const dmsg::Header& h);

  // Opens a new transaction in table L under `parent` (nullptr = top level).
  Transaction* OpenLocal(uint32_t base_cmd, Transaction* parent);

  // Fills msgid, circuit and the direction/CREATE/REPLY flags for a message
  // on `t`, and records tx_create/tx_delete. `flags` may carry DELETE and
  // ABORT. Returns false when the message must be discarded: `t` is dying or
  // its sending side is already closed.
  bool PrepareSend(Transaction* t, uint32_t flags, dmsg::Header* h);

  // Builds the LOSTLINK termination the peer would have sent on `t` (§5.7),
  // marks t as dying and rx_delete. REQUIRES: !t->rx_delete.
  dmsg::Frame SynthesizeLostLink(Transaction* t);

  // All live transactions under `root` (nullptr = all), children before
  // their parents. Used for LOSTLINK synthesis.
  std::vector<Transaction*> SubtreePostOrder(Transaction* root) const;

  // Frees `t` if DELETE went both ways. Children must be gone already (a
  // parent's DELETE terminates them first). Returns true if freed; `t` is then
  // invalid. Remembers a dying transaction's msgid if the peer still owes its
  // DELETE, so that the late reply is dropped instead of killing the link.
  bool MaybeFree(Transaction* t);

  // Frees everything (after link loss handling).
  void Clear();

  size_t size() const { return local_.size() + remote_.size(); }
  Transaction* FindLocal(uint64_t msgid) const;
  Transaction* FindRemote(uint64_t msgid) const;

 private:
  void Unlink(Transaction* t);
  std::unordered_map<uint64_t, std::unique_ptr<Transaction>> local_;   // L
  std::unordered_map<uint64_t, std::unique_ptr<Transaction>> remote_;  // R
  // Msgids of transactions we terminated locally whose peer side had not
  // sent DELETE yet; their late messages are dropped, not fatal.
  std::unordered_set<uint64_t> ghost_local_, ghost_remote_;
  std::deque<std::pair<bool, uint64_t>> ghost_order_;  // oldest first, for eviction
  uint64_t next_msgid_ = 1;
};

}  // namespace xdisk
