#include "daemon/link/link_table.h"

#include <netdb.h>

#include <cstring>
#include <random>

#include "daemon/base/log.h"

namespace xdisk {

struct LinkTable::Listener {
  LinkTable* table;
  UvHandle<uv_tcp_t> tcp;
  std::string name;
};

struct LinkTable::Connector {
  LinkTable* table;
  HostPort addr;
  UvHandle<uv_timer_t> timer;
  uv_getaddrinfo_t resolve;
  uv_connect_t connect;
  Link* link = nullptr;
  bool resolving = false;
  bool closed = false;
  ReconnectBackoff backoff;
  std::string last_error;    // logged once per distinct error, not every retry
  std::string shown_error;   // the last failure, for connect_targets()
  uint64_t retry_at_ms = 0;  // loop time the timer fires; 0 when it does not run
};

LinkTable::LinkTable(uv_loop_t* loop, const LinkConfig& config, const PeerPolicy* policy,
                     LinkObserver* upper)
    : loop_(loop), config_(config), policy_(policy), upper_(upper) {}

LinkTable::~LinkTable() = default;

std::vector<Link*> LinkTable::links() const {
  std::vector<Link*> out;
  for (auto& [p, l] : links_) out.push_back(p);
  return out;
}

int LinkTable::listen_port(size_t n) const {
  if (n >= listeners_.size() || !listeners_[n]->tcp.is_open()) return -1;
  sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getsockname(listeners_[n]->tcp.get(), reinterpret_cast<sockaddr*>(&ss), &len) < 0)
    return -1;
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

// ---- listening ----

Status LinkTable::Listen(const HostPort& addr) {
  sockaddr_storage ss{};
  if (uv_ip4_addr(addr.host.c_str(), addr.port, reinterpret_cast<sockaddr_in*>(&ss)) != 0 &&
      uv_ip6_addr(addr.host.c_str(), addr.port, reinterpret_cast<sockaddr_in6*>(&ss)) != 0) {
    return Status::InvalidArgument("--listen " + addr.ToString() +
                                   ": not an IPv4 or IPv6 address literal");
  }
  auto l = std::make_unique<Listener>();
  l->table = this;
  l->name = "listen " + addr.ToString();
  l->tcp.Open(uv_tcp_init, loop_);
  l->tcp.get()->data = l.get();
  int rc = uv_tcp_bind(l->tcp.get(), reinterpret_cast<sockaddr*>(&ss), 0);
  if (rc == 0) rc = uv_listen(l->tcp.stream(), 128, OnConnection);
  if (rc < 0) {
    // Counted, so that a shutdown waits for it.
    ++closing_handles_;
    l->tcp.Close(OnHandleClosed, this);
    Listener* raw = l.get();
    listeners_.push_back(std::move(l));
    (void)raw;
    return Status::FromErrno(-rc, "--listen " + addr.ToString());
  }
  XLOG(kInfo, l->name, "listening");
  listeners_.push_back(std::move(l));
  return Status::Ok();
}

void LinkTable::OnConnection(uv_stream_t* server, int status) {
  auto* l = static_cast<Listener*>(server->data);
  LinkTable* self = l->table;
  if (status < 0) {
    XLOG(kWarning, l->name, "accept failed: %s", uv_strerror(status));
    return;
  }
  auto link =
      std::make_unique<Link>(self->loop_, self, self->config_, Link::Direction::kIncoming, "?");
  if (link->Init() < 0) return;
  Link* raw = link.get();
  self->links_[raw] = std::move(link);
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(raw->tcp())) < 0) {
    raw->Close("accept failed");
    return;
  }
  sockaddr_storage ss{};
  int len = sizeof ss;
  uv_tcp_getpeername(raw->tcp(), reinterpret_cast<sockaddr*>(&ss), &len);
  const std::string peer = SockaddrToString(reinterpret_cast<sockaddr*>(&ss));
  const std::string host = NumericHost(reinterpret_cast<sockaddr*>(&ss));
  std::string why;
  auto decision = self->policy_->Check(host, &why);
  if (self->shutting_down_) {
    raw->Close("shutting down");
    return;
  }
  if (decision == PeerPolicy::Decision::kRefused) {
    XLOG(kWarning, "link " + peer, "refused: %s", why.c_str());
    self->NoteRefusal(host, "in", "unknown peer: " + why);
    raw->Close("refused by peer policy");
    return;
  }
  if (decision == PeerPolicy::Decision::kEncrypted) {
    auto keys = LoadLinkKeys(self->policy_->keys_dir(), host);
    if (!keys.ok()) {
      XLOG(kWarning, "link " + peer, "refused: %s", keys.status().message().c_str());
      self->NoteRefusal(host, "in", keys.status().message());
      raw->Close("refused: unusable keys");
      return;
    }
    raw->SetKeys(std::move(keys.value()));
  }
  XLOG(kInfo, "link " + peer, "accepted (%s)", why.c_str());
  raw->SetPeerName(peer);
  raw->Start();
}

// ---- connecting ----

void LinkTable::Connect(const HostPort& addr) {
  if (shutting_down_) return;  // its timer would outlive the table
  auto c = std::make_unique<Connector>();
  c->table = this;
  c->addr = addr;
  c->timer.Open(uv_timer_init, loop_);
  c->timer.get()->data = c.get();
  Connector* raw = c.get();
  connectors_.push_back(std::move(c));
  StartResolve(raw);
}

void LinkTable::StartResolve(Connector* c) {
  if (c->closed || shutting_down_) return;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  c->resolve.data = c;
  std::string port = std::to_string(c->addr.port);
  int rc =
      uv_getaddrinfo(loop_, &c->resolve, OnResolved, c->addr.host.c_str(), port.c_str(), &hints);
  if (rc < 0) {
    ScheduleRetry(c, std::string("cannot resolve: ") + uv_strerror(rc));
    return;
  }
  c->resolving = true;
}

void LinkTable::OnResolved(uv_getaddrinfo_t* req, int status, struct addrinfo* res) {
  auto* c = static_cast<Connector*>(req->data);
  LinkTable* self = c->table;
  c->resolving = false;
  if (c->closed || self->shutting_down_) {
    uv_freeaddrinfo(res);
    self->MaybeShutdownDone();
    return;
  }
  if (status < 0 || res == nullptr) {
    uv_freeaddrinfo(res);
    self->ScheduleRetry(c, std::string("cannot resolve: ") + uv_strerror(status));
    return;
  }
  // Use the first address; policy is checked on the address we connect to.
  sockaddr_storage ss{};
  memcpy(&ss, res->ai_addr, res->ai_addrlen);
  uv_freeaddrinfo(res);
  const std::string host = NumericHost(reinterpret_cast<sockaddr*>(&ss));
  const std::string peer = SockaddrToString(reinterpret_cast<sockaddr*>(&ss));
  std::string why;
  auto decision = self->policy_->Check(host, &why);
  if (decision == PeerPolicy::Decision::kRefused) {
    self->NoteRefusal(host, "out", "unknown peer: " + why);
    self->ScheduleRetry(c, "refused by peer policy: " + why);
    return;
  }
  std::shared_ptr<const LinkKeys> keys;
  if (decision == PeerPolicy::Decision::kEncrypted) {
    auto loaded = LoadLinkKeys(self->policy_->keys_dir(), host);
    if (!loaded.ok()) {
      self->NoteRefusal(host, "out", loaded.status().message());
      self->ScheduleRetry(c, "refused: " + loaded.status().message());
      return;
    }
    keys = std::move(loaded.value());
  }
  auto link =
      std::make_unique<Link>(self->loop_, self, self->config_, Link::Direction::kOutgoing, peer);
  if (link->Init() < 0) {
    self->ScheduleRetry(c, "cannot create socket");
    return;
  }
  Link* raw = link.get();
  raw->SetKeys(std::move(keys));
  self->links_[raw] = std::move(link);
  self->link_connector_[raw] = c;
  c->link = raw;
  c->connect.data = c;
  int rc = uv_tcp_connect(&c->connect, raw->tcp(), reinterpret_cast<sockaddr*>(&ss), OnConnected);
  if (rc < 0) {
    c->last_error.clear();
    raw->Close(std::string("cannot connect: ") + uv_strerror(rc));
  }
}

void LinkTable::OnConnected(uv_connect_t* req, int status) {
  auto* c = static_cast<Connector*>(req->data);
  Link* link = c->link;
  if (link == nullptr) return;
  if (status < 0) {
    std::string why = std::string("cannot connect: ") + uv_strerror(status);
    // Failed connects repeat every few seconds: log each distinct reason once.
    if (why != c->last_error) XLOG(kWarning, link->name(), "%s (will retry)", why.c_str());
    c->last_error = why;
    c->shown_error = why;
    link->Close(why);
    return;
  }
  if (c->closed || c->table->shutting_down_) {
    link->Close("shutting down");
    return;
  }
  c->last_error.clear();
  XLOG(kInfo, link->name(), "connected");
  link->Start();
}

void LinkTable::ScheduleRetry(Connector* c, const std::string& why) {
  if (c->closed || shutting_down_) {
    MaybeShutdownDone();
    return;
  }
  if (!why.empty() && why != c->last_error) {
    XLOG(kWarning, "connect " + c->addr.ToString(), "%s (will retry)", why.c_str());
    c->last_error = why;
  }
  if (!why.empty()) c->shown_error = why;
  static std::mt19937_64 rng{std::random_device{}()};
  std::uniform_real_distribution<double> jitter(0.75, 1.25);
  // I/O waits for a path, and this may be it: the backoff (which keeps
  // growing underneath) must not keep that I/O waiting seconds after the
  // peer is back.
  const uint64_t delay = c->backoff.NextDelay(jitter(rng), io_waiting_ && io_waiting_());
  c->retry_at_ms = uv_now(loop_) + delay;
  uv_timer_start(c->timer.get(), OnBackoffTimer, delay, 0);
}

void LinkTable::Hurry() {
  const uint64_t now = uv_now(loop_);
  for (auto& c : connectors_) {
    if (c->closed || c->retry_at_ms == 0 || c->retry_at_ms <= now + kHurryRetryMs) continue;
    c->retry_at_ms = now + kHurryRetryMs;
    uv_timer_start(c->timer.get(), OnBackoffTimer, kHurryRetryMs, 0);
  }
}

std::vector<LinkTable::ConnectTarget> LinkTable::connect_targets() const {
  std::vector<ConnectTarget> out;
  for (const auto& c : connectors_) {
    if (c->closed) continue;
    ConnectTarget t;
    t.addr = c->addr;
    t.has_link = c->link != nullptr;
    t.state = t.has_link     ? (c->link->up() ? "up" : "connecting")
              : c->resolving ? "resolving"
                             : "retrying";
    t.next_retry_ms = c->retry_at_ms;
    t.last_error = c->shown_error;
    out.push_back(std::move(t));
  }
  return out;
}

void LinkTable::OnBackoffTimer(uv_timer_t* t) {
  auto* c = static_cast<Connector*>(t->data);
  c->retry_at_ms = 0;
  c->table->StartResolve(c);
}

bool LinkTable::Disconnect(const HostPort& addr) {
  for (auto& c : connectors_) {
    if (!c->closed && c->addr.host == addr.host && c->addr.port == addr.port) {
      CloseConnector(c.get());
      return true;
    }
  }
  return false;
}

void LinkTable::CloseConnector(Connector* c) {
  if (c->closed) return;
  c->closed = true;
  c->retry_at_ms = 0;
  ++closing_handles_;
  c->timer.Close(OnHandleClosed, this);
  if (c->resolving) uv_cancel(reinterpret_cast<uv_req_t*>(&c->resolve));
  if (c->link) c->link->CloseGracefully("disconnected by operator");
}

// ---- link events ----

void LinkTable::OnLinkUp(Link& link) {
  refusals_.erase(PeerHost(link));
  auto it = link_connector_.find(&link);
  if (it != link_connector_.end()) it->second->backoff.Reset();
  upper_->OnLinkUp(link);
}

TransactionHandler* LinkTable::OnTopLevelCreate(Link& link, Transaction& t, const dmsg::Frame& f) {
  return upper_->OnTopLevelCreate(link, t, f);
}

void LinkTable::OnLinkDown(Link& link, const std::string& reason) {
  if (auto it = link_connector_.find(&link); it != link_connector_.end())
    it->second->shown_error = reason;
  // Links that never started (refused, connect failed) were never announced.
  if (link.refused() && reason != "shutting down" && reason != "disconnected by operator") {
    // A failed handshake: the peer retries (DragonFly every 5 s, our
    // connector with backoff), so a line per attempt would bury the log.
    // Log each reason once per peer address until a link comes up.
    // Bounded: a listener open to many addresses forgets (and logs again)
    // rather than grow without limit.
    if (refusals_.size() >= 1024) refusals_.clear();
    if (refusals_[PeerHost(link)].insert(reason).second)
      XLOG(kWarning, link.name(), "refused: %s", reason.c_str());
    NoteRefusal(PeerHost(link), link.direction() == Link::Direction::kIncoming ? "in" : "out",
                reason);
  } else if (RefusalKind(reason) == "bad tag") {
    // An authenticated link dropped on a forged or damaged record: not a
    // refusal of the peer (the link logged it), but what an operator
    // looking at a link that keeps coming back needs to see.
    NoteRefusal(PeerHost(link), link.direction() == Link::Direction::kIncoming ? "in" : "out",
                reason);
  }
  upper_->OnLinkDown(link, reason);
}

void LinkTable::OnLinkClosed(Link& link) {
  auto cit = link_connector_.find(&link);
  if (cit != link_connector_.end()) {
    Connector* c = cit->second;
    c->link = nullptr;
    link_connector_.erase(cit);
    // A link that was up and then closed is logged by the link itself; only
    // connection failures are worth a line here (once per distinct reason).
    ScheduleRetry(c, c->last_error);
  }
  links_.erase(&link);  // deletes the Link; it is done with itself
  MaybeShutdownDone();
}

std::string LinkTable::RefusalKind(const std::string& reason) {
  // Keyed on the wording of the reasons made in proto/rsa_handshake.cc,
  // proto/gcm_stream.cc, proto/tls_stream.cc, daemon/link/*.cc and
  // daemon/link/peer_policy.cc; the encrypted-link integration tests check the
  // kinds they cause.
  auto has = [&](const char* w) { return reason.find(w) != std::string::npos; };
  if (reason.starts_with("unknown peer")) return "unknown peer";
  if (has("wrong modulus size")) return "wrong modulus size";
  if (has("key mismatch") || has("a wrong key on either side")) return "key mismatch";
  if (reason.starts_with("bad tag") || reason.starts_with("TLS record failed")) return "bad tag";
  if (has("speaks plaintext") || has("encrypted handshake")) return "policy mismatch";
  return "bad handshake";
}

void LinkTable::NoteRefusal(const std::string& host, const char* direction,
                            const std::string& reason) {
  auto it = recent_refusals_.find(host);
  if (it == recent_refusals_.end()) {
    if (recent_refusals_.size() >= kMaxRefusalsShown) {
      auto oldest = recent_refusals_.begin();
      for (auto i = recent_refusals_.begin(); i != recent_refusals_.end(); ++i)
        if (i->second.at_ms < oldest->second.at_ms) oldest = i;
      recent_refusals_.erase(oldest);
    }
    it = recent_refusals_.emplace(host, Refusal{}).first;
    it->second.host = host;
  }
  Refusal& r = it->second;
  r.direction = direction;
  r.kind = RefusalKind(reason);
  r.reason = reason;
  r.at_ms = uv_now(loop_);
  ++r.count;
}

std::vector<LinkTable::Refusal> LinkTable::refusals() const {
  std::vector<Refusal> out;
  const uint64_t now = uv_now(loop_);
  for (const auto& [host, r] : recent_refusals_)
    if (now - r.at_ms < kRefusalShownMs) out.push_back(r);
  return out;
}

std::string LinkTable::PeerHost(const Link& link) {
  // "192.0.2.7:987" or "[::1]:987" without the port: incoming links come
  // from a new port every time.
  const std::string& p = link.peer();
  size_t colon = p.rfind(':');
  return colon == std::string::npos ? p : p.substr(0, colon);
}

void LinkTable::OnHandleClosed(void* table) {
  auto* self = static_cast<LinkTable*>(table);
  --self->closing_handles_;
  self->MaybeShutdownDone();
}

void LinkTable::Shutdown(std::function<void()> done) {
  shutting_down_ = true;
  shutdown_done_ = std::move(done);
  for (auto& l : listeners_) {
    if (!l->tcp.is_open()) continue;
    ++closing_handles_;
    l->tcp.Close(OnHandleClosed, this);
  }
  for (Link* l : links()) l->CloseGracefully("shutting down");
  for (auto& c : connectors_) CloseConnector(c.get());
  MaybeShutdownDone();
}

void LinkTable::MaybeShutdownDone() {
  if (!shutting_down_ || !shutdown_done_) return;
  if (closing_handles_ > 0 || !links_.empty()) return;
  for (auto& c : connectors_)
    if (c->resolving) return;
  auto done = std::move(shutdown_done_);
  shutdown_done_ = nullptr;
  done();
}

}  // namespace xdisk
