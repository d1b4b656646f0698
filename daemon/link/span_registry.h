// SpanRegistry: the LNK_SPAN bookkeeping of the daemon (spec §6.3, §6.4).
//
// Received spans: every LNK_SPAN a peer opens is acknowledged
// (LNK_ERROR|REPLY|CREATE), recorded as a RemoteSpan and published to the
// observers; when it is withdrawn (DELETE) or its link is lost (LOSTLINK,
// synthesised by the link) the observers hear OnSpanRemoved. Spans with the
// same serial (pfs_label) from two links are two RemoteSpans with distinct
// ids: two paths to one disk, kept distinguishable.
//
// Our spans: AddLocalSpan() advertises a span on every link whose LNK_CONN
// exchange is complete and whose peer_mask admits the span's peer_type, now
// and on every link that comes up later. Transactions the peer stacks under
// one of our spans (BLK_OPEN, BLK_READ, ...) are handed to that span's
// service handler. RemoveLocalSpan() withdraws it with DELETE everywhere.
//
// Threading: loop thread only. The registry must outlive every link.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "daemon/link/link.h"
#include "proto/dmsg.h"

namespace xdisk {

class Relay;

struct RemoteSpan {
  uint64_t id = 0;       // registry-unique, never reused
  Link* link = nullptr;  // valid until OnSpanRemoved returns
  Transaction* txn = nullptr;
  dmsg::LnkSpan info;
};

class SpanObserver {
 public:
  virtual ~SpanObserver() = default;
  virtual void OnSpanAdded(const RemoteSpan& span) = 0;
  // The span is gone (withdrawn or link lost). Transactions stacked under it
  // have already been terminated with LOSTLINK.
  virtual void OnSpanRemoved(const RemoteSpan& span, const std::string& why) = 0;
};

class SpanRegistry : public LinkObserver, public TransactionHandler {
 public:
  SpanRegistry() = default;
  SpanRegistry(const SpanRegistry&) = delete;
  SpanRegistry& operator=(const SpanRegistry&) = delete;

  // Observers are called in registration order; they must outlive the registry.
  void AddObserver(SpanObserver* o) { observers_.push_back(o); }
  // The span relay (daemon/link/relay.h), if relaying is on: told of links going
  // up and down and of our own spans, and registered as an observer. Must
  // outlive the registry's links.
  void SetRelay(Relay* relay);

  // Advertises `info` on every admitted link. `service` gets the
  // transactions stacked under it (OnChildCreate) and must outlive the span.
  // Returns the local span id.
  uint64_t AddLocalSpan(const dmsg::LnkSpan& info, TransactionHandler* service);
  // Withdraws the span (DELETE on every link).
  void RemoveLocalSpan(uint64_t id);
  // Withdraws every local span (shutdown).
  void RemoveAllLocalSpans();

  const std::map<uint64_t, RemoteSpan>& remote_spans() const { return remote_; }

  // LinkObserver (LinkTable forwards these).
  void OnLinkUp(Link& link) override;
  TransactionHandler* OnTopLevelCreate(Link& link, Transaction& t, const dmsg::Frame& f) override;
  void OnLinkDown(Link& link, const std::string& reason) override;
  void OnLinkClosed(Link&) override {}

  // TransactionHandler, for received spans and for our own.
  void OnMessage(Link& link, Transaction& t, dmsg::Frame& f) override;
  TransactionHandler* OnChildCreate(Link& link, Transaction& parent, Transaction& child,
                                    const dmsg::Frame& f) override;
  void OnFreed(Link& link, Transaction& t) override;

  void AddLink(Link* link) { links_.push_back(link); }

 private:
  struct LocalSpan {
    uint64_t id;
    dmsg::LnkSpan info;
    TransactionHandler* service;
    std::map<Link*, Transaction*> open_on;  // our span transaction per link
  };
  // Transaction::user of a span transaction points at one of these.
  struct SpanTag {
    bool local;
    uint64_t id;
  };
  void Advertise(LocalSpan& s, Link& link);
  static bool Admits(const Link& link, uint8_t peer_type);

  std::vector<SpanObserver*> observers_;
  Relay* relay_ = nullptr;
  std::map<uint64_t, RemoteSpan> remote_;
  std::map<uint64_t, LocalSpan> local_;
  std::map<Transaction*, SpanTag> tags_;
  std::vector<Link*> links_;  // links that are up
  uint64_t next_id_ = 1;
};

}  // namespace xdisk
