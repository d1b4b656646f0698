#include "daemon/control/control_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

namespace xdisk::control {

namespace {

long NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

// Waits until `fd` is ready for `events` or the deadline passes.
Status WaitFor(int fd, short events, long deadline_ms, const std::string& what) {
  for (;;) {
    long left = deadline_ms - NowMs();
    if (left <= 0) return Status::Unavailable(what + ": no answer from the daemon in time");
    pollfd p{fd, events, 0};
    int rc = poll(&p, 1, static_cast<int>(left));
    if (rc > 0) return Status::Ok();
    if (rc < 0 && errno != EINTR) return Status::FromErrno(errno, what + ": poll");
  }
}

}  // namespace

Result<std::unique_ptr<ControlClient>> ControlClient::Connect(const std::string& path,
                                                              int timeout_ms) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path)
    return Status::InvalidArgument(path + ": not a usable socket path");
  memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  // A UNIX connect completes or fails at once. EAGAIN means the daemon's
  // listen backlog is full: a burst of other clients, which the daemon
  // works through (it closes idle ones to make room), so it is retried
  // until the timeout rather than reported at once.
  const long deadline = NowMs() + timeout_ms;
  for (long pause_ms = 10;; pause_ms = std::min(pause_ms * 2, 200L)) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return Status::FromErrno(errno, "socket");
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0)
      return std::unique_ptr<ControlClient>(new ControlClient(fd, path, timeout_ms));
    int err = errno;
    close(fd);
    if (err == EAGAIN && NowMs() + pause_ms < deadline) {
      usleep(static_cast<useconds_t>(pause_ms) * 1000);
      continue;
    }
    std::string msg = "cannot connect to " + path + ": " + strerror(err);
    if (err == EAGAIN) msg += " (its backlog stayed full)";
    if (err == EACCES || err == EPERM) return Status::PermissionDenied(msg);
    return Status::Unavailable(msg);
  }
}

ControlClient::~ControlClient() { close(fd_); }

Status ControlClient::WriteAll(const std::string& bytes, long deadline_ms) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (Status s = WaitFor(fd_, POLLOUT, deadline_ms, path_); !s.ok()) return s;
      continue;
    }
    return Status::Unavailable("lost the connection to " + path_ + ": " + strerror(errno));
  }
  return Status::Ok();
}

Result<std::string> ControlClient::ReadFrame(long deadline_ms) {
  std::string payload;
  char buf[64 * 1024];
  for (;;) {
    switch (decoder_.Next(&payload)) {
      case ControlFrameDecoder::Outcome::kFrame:
        return payload;
      case ControlFrameDecoder::Outcome::kError:
        return Status::Protocol(path_ + ": " + decoder_.error().message());
      case ControlFrameDecoder::Outcome::kNeedMore:
        break;
    }
    ssize_t n = recv(fd_, buf, sizeof buf, 0);
    if (n > 0) {
      decoder_.Feed(std::string_view(buf, static_cast<size_t>(n)));
      continue;
    }
    if (n == 0) return Status::Unavailable("the daemon closed the connection on " + path_);
    if (errno == EAGAIN || errno == EINTR) {
      if (Status s = WaitFor(fd_, POLLIN, deadline_ms, path_); !s.ok()) return s;
      continue;
    }
    return Status::Unavailable("lost the connection to " + path_ + ": " + strerror(errno));
  }
}

Result<Response> ControlClient::Call(Request req) {
  req.set_version(kControlVersion);
  std::string bytes;
  if (Status s = AppendMessageFrame(req, &bytes); !s.ok()) return s;
  const long deadline = NowMs() + timeout_ms_;
  Status sent = WriteAll(bytes, deadline);
  // A daemon that refuses us (SO_PEERCRED) answers at once and closes, so
  // the send may fail while its reply waits in our receive buffer: read it.
  auto payload = ReadFrame(sent.ok() ? deadline : NowMs());
  if (!payload.ok()) return sent.ok() ? payload.status() : sent;
  Response resp;
  if (!resp.ParseFromString(*payload))
    return Status::Protocol(path_ + ": the answer is not a control Response");
  // An error reply is readable at any version (its fields never change);
  // anything else from another version might mean something else.
  if (resp.version() != kControlVersion && !resp.has_error())
    return Status::Protocol("the daemon speaks control protocol version " +
                            std::to_string(resp.version()) + ", xdiskctl speaks version " +
                            std::to_string(kControlVersion));
  return resp;
}

}  // namespace xdisk::control
