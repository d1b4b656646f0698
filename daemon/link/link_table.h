// LinkTable: owns every Link, the listening sockets and the outgoing
// connectors, and applies the peer policy before a link may speak.
//
// Listeners accept, check the peer's numeric address against PeerPolicy and
// either start a Link or close the socket with a log line. A `.pub` peer
// gets its keys loaded (daemon/link/link_keys.h) and an encrypted Link; a
// handshake that fails is logged here, once per peer address and reason
// until a link to that address comes up, since peers retry every few
// seconds. Connectors resolve
// their host, check the policy for the resolved address, connect, and after
// any failure or loss reconnect forever with exponential backoff (0.1 s
// doubling to a 5 s cap, +-25% jitter; reset once a link came up). While
// I/O waits for a path (the `io_waiting` predicate of SetHurry), no retry
// is more than kHurryRetryMs away, so that I/O resumes within a second of
// the peer's return; idle connectors keep their backoff.
//
// Link events are forwarded to `upper` (the SpanRegistry); the table itself
// handles OnLinkClosed by deleting the Link.
//
// Threading: loop thread only. Shutdown() closes everything gracefully and
// calls `done` once every handle owned by the table is closed; the table may
// be destroyed after that.
#pragma once

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "daemon/base/options.h"
#include "daemon/base/uv_handle.h"
#include "daemon/link/link.h"
#include "daemon/link/link_timing.h"
#include "daemon/link/peer_policy.h"

namespace xdisk {

class LinkTable : public LinkObserver {
 public:
  LinkTable(uv_loop_t* loop, const LinkConfig& config, const PeerPolicy* policy,
            LinkObserver* upper);
  ~LinkTable() override;
  LinkTable(const LinkTable&) = delete;
  LinkTable& operator=(const LinkTable&) = delete;

  // Binds and listens. Fails (naming the address) if the address cannot be
  // bound; nothing is left open then.
  Status Listen(const HostPort& addr);
  // Keeps a link to `addr` forever (until Disconnect or Shutdown).
  void Connect(const HostPort& addr);
  // Stops the connector for `addr` and closes its link. Returns false if
  // there is no such connector.
  bool Disconnect(const HostPort& addr);

  void Shutdown(std::function<void()> done);

  // While `io_waiting()` is true, retries are at most kHurryRetryMs apart.
  // Hurry() applies that at once to connectors already waiting longer (call
  // it when I/O starts waiting). The predicate is called on the loop thread
  // and must stay callable until Shutdown.
  static constexpr uint64_t kHurryRetryMs = ReconnectBackoff::kHurryMs;
  void SetHurry(std::function<bool()> io_waiting) { io_waiting_ = std::move(io_waiting); }
  void Hurry();

  // The connect targets, for xdiskctl: those with a link show as links too.
  struct ConnectTarget {
    HostPort addr;
    // "retrying" (waiting for the next attempt), "resolving", "connecting"
    // or "up" (its link is connecting or up).
    std::string state;
    uint64_t next_retry_ms = 0;  // loop time of the next attempt; 0 if none waits
    std::string last_error;      // why the last attempt or link failed; "" if none
    bool has_link = false;
  };
  std::vector<ConnectTarget> connect_targets() const;

  // The last refusal of each recently refused peer address, for xdiskctl
  // links: a link (or connection) turned away by the peer policy or its
  // handshake, or dropped on a record that did not authenticate. Kept for
  // kRefusalShownMs after the last one, also once a link to the address
  // is up again (a peer whose links keep dropping on bad tags reconnects
  // every time); at most kMaxRefusalsShown addresses (the oldest goes).
  struct Refusal {
    std::string host;       // the peer's numeric address, without port
    std::string direction;  // "in" or "out"
    // "unknown peer", "key mismatch", "wrong modulus size", "bad tag",
    // "policy mismatch" (one side .pub or .tls13, the other not) or
    // "bad handshake" (anything else: malformed, truncated, timed out).
    std::string kind;
    std::string reason;  // the logged reason of the last one
    uint64_t at_ms = 0;  // loop time of the last one
    uint64_t count = 0;  // how many since the address was first kept
  };
  static constexpr size_t kMaxRefusalsShown = 256;
  static constexpr uint64_t kRefusalShownMs = 3600 * 1000;
  std::vector<Refusal> refusals() const;
  // The kind of a refusal reason (see Refusal::kind).
  static std::string RefusalKind(const std::string& reason);

  std::vector<Link*> links() const;
  // The actual bound port of the n-th listener (for --listen ...:0 in tests).
  int listen_port(size_t n) const;

  // LinkObserver
  void OnLinkUp(Link& link) override;
  TransactionHandler* OnTopLevelCreate(Link& link, Transaction& t, const dmsg::Frame& f) override;
  void OnLinkDown(Link& link, const std::string& reason) override;
  void OnLinkClosed(Link& link) override;

 private:
  struct Listener;
  struct Connector;
  static void OnConnection(uv_stream_t* server, int status);
  static void OnResolved(uv_getaddrinfo_t* req, int status, struct addrinfo* res);
  static void OnConnected(uv_connect_t* req, int status);
  static void OnBackoffTimer(uv_timer_t* t);
  static void OnHandleClosed(void* table);

  void StartResolve(Connector* c);
  void ScheduleRetry(Connector* c, const std::string& why);
  void CloseConnector(Connector* c);
  void MaybeShutdownDone();
  static std::string PeerHost(const Link& link);

  uv_loop_t* loop_;
  LinkConfig config_;
  const PeerPolicy* policy_;
  LinkObserver* upper_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::unique_ptr<Connector>> connectors_;
  std::map<Link*, std::unique_ptr<Link>> links_;
  std::map<Link*, Connector*> link_connector_;
  // The handshake refusals logged per peer host, until a link to it is up.
  std::map<std::string, std::set<std::string>> refusals_;
  std::map<std::string, Refusal> recent_refusals_;  // by host
  void NoteRefusal(const std::string& host, const char* direction, const std::string& reason);
  int closing_handles_ = 0;
  bool shutting_down_ = false;
  std::function<void()> shutdown_done_;
  std::function<bool()> io_waiting_;
};

}  // namespace xdisk
