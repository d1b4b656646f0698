#include "daemon/control/control_server.h"

#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cerrno>
#include <cstring>

#include "daemon/base/log.h"
#include "daemon/control/control_codec.h"
#include "daemon/control/control_service.h"

namespace xdisk::control {

bool PeerAllowed(uid_t peer, uid_t self) { return peer == 0 || peer == self; }

// One accepted client. Owns its pipe and timer handles; freed in OnClosed
// once libuv is done with both (their pending writes' callbacks use it). Nested in ControlServer so
// it may reach the server's bookkeeping.
struct ControlServer::Connection {
  ControlServer* server = nullptr;
  UvHandle<uv_pipe_t> pipe;
  UvHandle<uv_timer_t> timer;  // idle / write-progress timeout
  int open_handles = 0;
  State state = State::kOpen;
  ControlFrameDecoder decoder;
  std::array<char, 64 * 1024> rbuf;
  size_t pending_bytes = 0;  // memory held by queued replies
  int pending_writes = 0;
  uint64_t bad_requests = 0;  // only the first is logged as a warning
  bool reading = false;
  bool close_after_write = false;
  bool spoke = false;            // has sent at least one byte
  uint64_t last_active_ms = 0;   // uv_now() of the last Touch()
  std::string name = "control";  // "control uid 0 pid 1234", for the log
  Connection* prev = nullptr;
  Connection* next = nullptr;

  void StartReading() {
    if (reading || state != State::kOpen) return;
    reading = true;
    uv_read_start(pipe.stream(), OnAlloc, OnRead);
  }
  void StopReading() {
    if (!reading) return;
    reading = false;
    uv_read_stop(pipe.stream());
  }
  void Send(const Response& resp);
  void HandleFrames();
  void HandleRequest(const std::string& payload);
  // (Re)arms the timeout: called on accept, on each complete request and on
  // each finished write, so it fires only when neither happened for a while.
  void Touch() {
    last_active_ms = uv_now(server->loop_);
    if (state == State::kOpen && server->idle_timeout_ms_ > 0)
      uv_timer_start(timer.get(), OnTimeout, timeout_ms(), 0);
  }
  uint64_t timeout_ms() const {
    return spoke ? server->idle_timeout_ms_ : std::min(server->idle_timeout_ms_, kSilentTimeoutMs);
  }
  // Nothing half-received and nothing to send: closing it loses nothing.
  bool idle() const {
    return state == State::kOpen && pending_writes == 0 && !close_after_write &&
           !decoder.mid_frame();
  }
  void Finish() {
    // Let queued replies go out first; a half-closed client still reads.
    StopReading();
    if (pending_writes == 0) {
      server->CloseConnection(this);
    } else {
      close_after_write = true;
    }
  }

  // One reply on its way; owns its bytes until the write callback.
  struct WriteReq {
    uv_write_t req;
    std::string data;
    Connection* conn;
  };

  static void OnAlloc(uv_handle_t* h, size_t, uv_buf_t* buf);
  static void OnRead(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);
  static void OnWrite(uv_write_t* req, int status);
  static void OnTimeout(uv_timer_t* t);
  static void OnClosed(void* conn);
};

// What one queued reply costs us: the request object and the heap block of
// its bytes, each with some allocator overhead. Counting only the payload
// let a client that never reads pin tens of bytes of overhead per reply.
static size_t WriteCost(const std::string& data) {
  constexpr size_t kMallocOverhead = 16;
  return sizeof(uv_write_t) + sizeof(std::string) + sizeof(void*) + data.capacity() +
         2 * kMallocOverhead;
}

ControlServer::ControlServer(uv_loop_t* loop, ControlService* service, uint64_t idle_timeout_ms)
    : loop_(loop), service_(service), idle_timeout_ms_(idle_timeout_ms) {}

ControlServer::~ControlServer() {
  // Handles still open here would be freed memory that libuv still points
  // at; the owner must Close() and let the loop run first.
  assert(state_ != State::kOpen && state_ != State::kClosing);
  assert(connections_ == 0);
}

Status ControlServer::Start(const std::string& path) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path)
    return Status::InvalidArgument("--control " + path + ": path empty or longer than " +
                                   std::to_string(sizeof sa.sun_path - 1) + " bytes");
  memcpy(sa.sun_path, path.c_str(), path.size() + 1);

  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return Status::InvalidArgument("--control " + path + ": exists and is not a socket");
    // Someone answering means a live daemon owns it: never steal its socket.
    // ECONNREFUSED means the socket is left over from a daemon that died.
    // The probe is non-blocking: a live daemon whose backlog is full would
    // otherwise hang our start-up; a full backlog (EAGAIN) is a live daemon.
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe < 0) return Status::FromErrno(errno, "--control " + path + ": socket");
    int rc = connect(probe, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    int err = errno;
    close(probe);
    if (rc == 0 || err == EAGAIN || err == EINPROGRESS)
      return Status::Unavailable("--control " + path + ": in use by another running daemon");
    if (err != ECONNREFUSED) return Status::FromErrno(err, "--control " + path);
    XLOG(kInfo, "control", "removing stale socket %s", path.c_str());
    if (unlink(path.c_str()) != 0 && errno != ENOENT)
      return Status::FromErrno(errno, "--control " + path + ": cannot remove stale socket");
  }

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::FromErrno(errno, "--control " + path + ": socket");
  // Linux creates the socket file with the socket inode's mode (less the
  // umask), so setting it before bind leaves no moment at which anyone but
  // us could connect. The chmod after bind covers kernels that differ.
  if (fchmod(fd, 0600) != 0 || bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    int err = errno;
    close(fd);
    return Status::FromErrno(err, "--control " + path + ": bind");
  }
  if (chmod(path.c_str(), 0600) != 0 || lstat(path.c_str(), &st) != 0) {
    int err = errno;
    close(fd);
    unlink(path.c_str());
    return Status::FromErrno(err, "--control " + path);
  }
  dev_ = st.st_dev;
  ino_ = st.st_ino;
  path_ = path;

  listener_.Open(uv_pipe_init, loop_, 0);
  listener_.get()->data = this;
  room_timer_.Open(uv_timer_init, loop_);
  room_timer_.get()->data = this;
  state_ = State::kOpen;
  int rc = uv_pipe_open(listener_.get(), fd);
  // uv_pipe_open takes the descriptor only on success; after that, closing
  // the handle closes it.
  const bool fd_taken = rc == 0;
  if (rc == 0) rc = uv_listen(listener_.stream(), 64, OnConnection);
  if (rc < 0) {
    if (!fd_taken) close(fd);
    Close();
    return Status::FromErrno(-rc, "--control " + path + ": listen");
  }
  XLOG(kInfo, "control", "listening on %s", path.c_str());
  return Status::Ok();
}

void ControlServer::Close() {
  room_timer_.Close();
  if (state_ == State::kOpen) {
    state_ = State::kClosing;
    listener_.Close(OnListenerClosed, this);
    // Only the file we created: a daemon started after us may have replaced
    // a path it found stale.
    struct stat st;
    if (!path_.empty() && lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_)
      unlink(path_.c_str());
  }
  for (Connection* c = first_; c != nullptr;) {
    Connection* next = c->next;
    CloseConnection(c);
    c = next;
  }
}

void ControlServer::OnListenerClosed(void* server) {
  auto* self = static_cast<ControlServer*>(server);
  assert(self->state_ == State::kClosing);
  self->state_ = State::kClosed;
}

void ControlServer::OnConnection(uv_stream_t* server, int status) {
  auto* self = static_cast<ControlServer*>(server->data);
  if (status < 0) {
    XLOG(kWarning, "control", "accept failed: %s", uv_strerror(status));
    return;
  }
  if (self->connections_ >= kMaxConnections && (self->evicting_ || self->EvictIdle())) {
    // Accepted once the evicted connection's handles have closed.
    self->accept_pending_ = true;
    return;
  }
  if (self->connections_ >= kMaxConnections) {
    // Not accepting makes libuv stop polling the listener, so further
    // clients wait in the kernel's backlog until a connection closes.
    XLOG(kDebug, "control", "%zu connections: the next one waits", self->connections_);
    self->accept_pending_ = true;
    if (self->room_timer_.is_open())
      uv_timer_start(self->room_timer_.get(), OnRoomTimer, kMinEvictAgeMs, kMinEvictAgeMs);
    return;
  }
  self->Accept();
}

void ControlServer::Accept() {
  auto* c = new Connection();
  c->server = this;
  c->pipe.Open(uv_pipe_init, loop_, 0);
  c->pipe.get()->data = c;
  c->timer.Open(uv_timer_init, loop_);
  c->timer.get()->data = c;
  c->open_handles = 2;
  c->next = first_;
  if (first_) first_->prev = c;
  first_ = c;
  ++connections_;
  if (uv_accept(listener_.stream(), c->pipe.stream()) < 0) {
    CloseConnection(c);
    return;
  }
  uv_os_fd_t fd;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (uv_fileno(c->pipe.handle(), &fd) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    XLOG(kWarning, "control", "cannot get the peer's credentials: %s", strerror(errno));
    CloseConnection(c);
    return;
  }
  c->name = "control uid " + std::to_string(cred.uid) + " pid " + std::to_string(cred.pid);
  if (!PeerAllowed(cred.uid, geteuid())) {
    // The socket is 0600, so this peer got a descriptor some other way (the
    // mode was changed, or it was passed one): say no once, and go.
    XLOG(kWarning, c->name, "refused: only root or uid %u may use the control socket",
         static_cast<unsigned>(geteuid()));
    c->Send(ErrorResponse(Error::PERMISSION_DENIED,
                          "permission denied: uid " + std::to_string(cred.uid) +
                              " may not use the control socket (root only)"));
    c->Touch();  // a refused peer that never reads must not hold a slot
    c->Finish();
    return;
  }
  XLOG(kDebug, c->name, "connected");
  c->Touch();
  c->StartReading();
}

void ControlServer::OnRoomTimer(uv_timer_t* t) {
  auto* self = static_cast<ControlServer*>(t->data);
  if (!self->accept_pending_ || self->evicting_ || self->EvictIdle()) uv_timer_stop(t);
}

bool ControlServer::EvictIdle() {
  // The connection whose last request, reply or accept is oldest. Not one
  // with bytes waiting in its socket (a request we have not read yet), and
  // not one accepted a moment ago that has not had the time to send its
  // request: closing those would drop a client that is about to speak.
  const uint64_t now = uv_now(loop_);
  Connection* victim = nullptr;
  for (Connection* c = first_; c != nullptr; c = c->next) {
    if (!c->idle()) continue;
    if (!c->spoke && now - c->last_active_ms < kMinEvictAgeMs) continue;
    uv_os_fd_t fd;
    int unread = 0;
    if (uv_fileno(c->pipe.handle(), &fd) != 0 || ioctl(fd, FIONREAD, &unread) != 0 || unread > 0)
      continue;
    if (victim == nullptr || c->last_active_ms < victim->last_active_ms) victim = c;
  }
  if (victim == nullptr) return false;
  evicting_ = true;
  XLOG(kInfo, victim->name, "closing: idle for %llu ms%s and all %zu connections are taken",
       static_cast<unsigned long long>(now - victim->last_active_ms),
       victim->spoke ? "" : " (silent)", kMaxConnections);
  CloseConnection(victim);
  return true;
}

void ControlServer::CloseConnection(Connection* c) {
  if (c->state != State::kOpen) return;
  c->state = State::kClosing;
  c->reading = false;
  if (c->bad_requests > 1)
    XLOG(kInfo, c->name, "%llu bad requests in all",
         static_cast<unsigned long long>(c->bad_requests));
  // Pending writes are cancelled: their callbacks run (UV_ECANCELED) before
  // the close callback, so the connection is still alive for them. The
  // memory goes when the last of the two handles has closed.
  c->pipe.Close(Connection::OnClosed, c);
  c->timer.Close(Connection::OnClosed, c);
}

void ControlServer::Connection::OnTimeout(uv_timer_t* t) {
  auto* c = static_cast<Connection*>(t->data);
  if (c->state != State::kOpen) return;
  if (c->pending_writes > 0) {
    XLOG(kInfo, c->name, "closing: no reply progress for %llu ms (%d replies unsent)",
         static_cast<unsigned long long>(c->timeout_ms()), c->pending_writes);
  } else {
    XLOG(kInfo, c->name, "closing: no request for %llu ms%s",
         static_cast<unsigned long long>(c->timeout_ms()), c->spoke ? "" : " (silent)");
  }
  c->server->CloseConnection(c);
}

void ControlServer::Connection::OnClosed(void* conn) {
  auto* c = static_cast<Connection*>(conn);
  assert(c->state == State::kClosing);
  assert(c->open_handles > 0);
  if (--c->open_handles > 0) return;
  c->state = State::kClosed;
  ControlServer* s = c->server;
  if (c->prev) c->prev->next = c->next;
  if (c->next) c->next->prev = c->prev;
  if (s->first_ == c) s->first_ = c->next;
  --s->connections_;
  XLOG(kDebug, c->name, "closed");
  delete c;
  s->evicting_ = false;
  if (s->accept_pending_ && s->state_ == State::kOpen) {
    s->accept_pending_ = false;
    s->Accept();
  }
}

void ControlServer::Connection::OnAlloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* c = static_cast<Connection*>(h->data);
  *buf = uv_buf_init(c->rbuf.data(), static_cast<unsigned>(c->rbuf.size()));
}

void ControlServer::Connection::OnRead(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
  auto* c = static_cast<Connection*>(s->data);
  if (n > 0) {
    if (!c->spoke) {
      c->spoke = true;
      c->Touch();  // from the silent timeout to the full one
    }
    c->decoder.Feed(std::string_view(buf->base, static_cast<size_t>(n)));
    c->HandleFrames();
    return;
  }
  if (n == 0) return;  // EAGAIN
  if (n == UV_EOF) {
    // A probe from a starting daemon, or a client that is done. Neither is
    // worth more than a debug line unless it stopped inside a frame.
    if (c->decoder.mid_frame())
      XLOG(kInfo, c->name, "closed in the middle of a request (%zu bytes buffered)",
           c->decoder.buffered());
  } else {
    XLOG(kDebug, c->name, "read error: %s", uv_strerror(static_cast<int>(n)));
    c->server->CloseConnection(c);
    return;
  }
  c->Finish();
}

void ControlServer::Connection::HandleFrames() {
  std::string payload;
  while (state == State::kOpen && reading) {
    auto outcome = decoder.Next(&payload);
    if (outcome == ControlFrameDecoder::Outcome::kNeedMore) return;
    if (outcome == ControlFrameDecoder::Outcome::kError) {
      // The framing cannot be trusted any more: answer once and close.
      XLOG(kWarning, name, "dropping connection: %s", decoder.error().message().c_str());
      Send(ErrorResponse(Error::MALFORMED, decoder.error().message()));
      Finish();
      return;
    }
    Touch();
    HandleRequest(payload);
    // Backpressure: a client that does not read its replies stops being
    // read, so our queue of replies stays bounded.
    if (pending_bytes > kMaxPendingWriteBytes) StopReading();
  }
}

void ControlServer::Connection::HandleRequest(const std::string& payload) {
  Request req;
  if (!req.ParseFromString(payload)) {
    // A client that sends bytes which are not a Request at all is not one
    // of ours (or is broken): answer once and close, rather than answer and
    // log each of a flood of them.
    ++bad_requests;
    ++server->bad_requests_;
    XLOG(kWarning, name, "dropping connection: request does not parse (%zu bytes)", payload.size());
    Send(ErrorResponse(Error::MALFORMED, "request does not parse as a control Request"));
    Finish();
    return;
  }
  Response resp = server->service_->Handle(req);
  if (resp.has_error() &&
      (resp.error().code() == Error::MALFORMED || resp.error().code() == Error::VERSION_MISMATCH)) {
    // Well-formed but not servable (another version, no command): the
    // connection stays usable. Log the first only; the rest are counted.
    ++server->bad_requests_;
    if (bad_requests++ == 0)
      XLOG(kWarning, name, "bad request (%zu bytes): %s", payload.size(),
           resp.error().message().c_str());
  } else {
    XLOG(kDebug, name, "request answered%s%s", resp.has_error() ? ": " : "",
         resp.has_error() ? resp.error().message().c_str() : "");
  }
  Send(resp);
}

void ControlServer::Connection::Send(const Response& resp) {
  if (state != State::kOpen) return;
  auto* w = new WriteReq();
  Status s = AppendMessageFrame(resp, &w->data);
  if (!s.ok()) {
    // Only a reply over 1 MiB gets here (thousands of disks); the client
    // would refuse it anyway. Say so in a reply that fits.
    w->data.clear();
    Status s2 = AppendMessageFrame(ErrorResponse(Error::FAILED, s.message()), &w->data);
    (void)s2;
  }
  w->req.data = w;
  w->conn = this;
  uv_buf_t b = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  int rc = uv_write(&w->req, pipe.stream(), &b, 1, OnWrite);
  if (rc < 0) {
    delete w;
    XLOG(kDebug, name, "write failed: %s", uv_strerror(rc));
    server->CloseConnection(this);
    return;
  }
  ++pending_writes;
  pending_bytes += WriteCost(w->data);
}

void ControlServer::Connection::OnWrite(uv_write_t* req, int status) {
  auto* w = static_cast<WriteReq*>(req->data);
  Connection* c = w->conn;
  --c->pending_writes;
  c->pending_bytes -= WriteCost(w->data);
  delete w;
  if (c->state != State::kOpen) return;  // cancelled by a close
  if (status < 0) {
    XLOG(kDebug, c->name, "write failed: %s", uv_strerror(status));
    c->server->CloseConnection(c);
    return;
  }
  c->Touch();  // write progress
  // A client waits for a slot and this one just became idle: make room.
  if (c->server->accept_pending_ && !c->server->evicting_ && c->idle()) c->server->EvictIdle();
  if (c->state != State::kOpen) return;
  if (c->close_after_write) {
    if (c->pending_writes == 0) c->server->CloseConnection(c);
    return;
  }
  if (!c->reading && c->pending_bytes <= kMaxPendingWriteBytes / 2) {
    c->StartReading();
    // Frames that arrived before we paused are still buffered.
    c->HandleFrames();
  }
}

}  // namespace xdisk::control
