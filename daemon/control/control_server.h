// ControlServer: the daemon's end of the control socket, a UNIX stream
// socket on the daemon's loop (--control PATH, default
// /run/xdisk-fuse.sock). Framing: daemon/control/control_codec.h; messages:
// proto/control.proto; meaning: daemon/control/control_service.h.
//
// Access: the socket file is created with mode 0600 (the mode is set on the
// socket before bind(2), so there is no window in which it is wider), and
// every accepted connection's SO_PEERCRED uid must be 0 or the daemon's own
// effective uid. Any other peer gets one PERMISSION_DENIED reply and is
// closed, with a warning in the log naming its uid and pid.
//
// Robustness: each connection has its own decoder.
//   - A payload that does not parse as a Request, and a length prefix above
//     1 MiB, get one MALFORMED reply and that connection is closed (once the
//     reply is written). A parseable request of another version or without
//     a known command gets an error reply and the connection goes on.
//   - Each connection logs at most one warning for bad requests; the rest
//     are counted (bad_requests(), and one info line when it closes).
//   - A client that sends requests without reading the replies stops being
//     read while the queued replies hold more than kMaxPendingWriteBytes of
//     memory (request objects and buffers, not only payload bytes).
//   - A connection is closed after `idle_timeout_ms` without a complete
//     request while no reply is pending, or without write progress while
//     one is; one that has not sent a single byte yet is closed after
//     kSilentTimeoutMs already (xdiskctl sends its request at once). So idle
//     clients cannot hold the slots for long.
//   - At most kMaxConnections are served at once. When a client arrives
//     while all are taken, the connection idle for longest (no request
//     being received or waiting unread in its socket, no reply pending,
//     and, if it never spoke, accepted at least kMinEvictAgeMs ago) is
//     closed to make room, so a few hung scripts cannot lock the operator out. When
//     every connection is busy, further clients wait in the listen backlog
//     (the server stops accepting) until one closes or becomes idle (its
//     reply written), which then makes room the same way; a client's own
//     timeout bounds the wait, and xdiskctl retries a full backlog (EAGAIN)
//     within it.
//
// Start-up and the socket path: Start() refuses to replace a file that is
// not a socket, and refuses a socket some other process still answers on
// (another daemon); a socket nobody answers on is stale and is replaced.
// Close() removes the path only while it is still the socket we created.
//
// Lifecycle (libuv handles): Start() opens the listening pipe; Close()
// closes it and every connection. A connection owns a pipe and a timer;
// its memory is freed in the close callback of whichever closes last. Threading: loop thread only.
// The server must outlive its handles: destroy it only after Close() and after the loop has run the
// close callbacks (that is, after uv_run returned). The service must outlive
// the server.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "daemon/base/uv_handle.h"
#include "proto/status.h"

namespace xdisk::control {

class ControlService;

// Default for --control.
inline constexpr const char* kDefaultControlPath = "/run/xdisk-fuse.sock";

// True if a peer with uid `peer` may use the control socket of a daemon
// running with effective uid `self`: root, or the daemon's own user.
bool PeerAllowed(uid_t peer, uid_t self);

class ControlServer {
 public:
  static constexpr size_t kMaxConnections = 16;
  // Per connection. Above the largest reply (1 MiB), small enough that 16
  // clients that never read cost tens of MiB at most.
  static constexpr size_t kMaxPendingWriteBytes = 1u << 20;
  static constexpr uint64_t kDefaultIdleTimeoutMs = 30000;
  static constexpr uint64_t kSilentTimeoutMs = 3000;
  static constexpr uint64_t kMinEvictAgeMs = 100;

  // `idle_timeout_ms` 0 disables the timeout (see "Robustness" above).
  ControlServer(uv_loop_t* loop, ControlService* service,
                uint64_t idle_timeout_ms = kDefaultIdleTimeoutMs);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Creates the socket at `path` (mode 0600) and starts accepting. On error
  // nothing is left open and the status names the path.
  Status Start(const std::string& path);

  // Stops accepting, closes every connection (pending replies are dropped)
  // and removes the socket file. Safe to call more than once, and without a
  // successful Start().
  void Close();

  const std::string& path() const { return path_; }
  size_t connections() const { return connections_; }
  // Requests refused as MALFORMED or VERSION_MISMATCH since Start().
  uint64_t bad_requests() const { return bad_requests_; }

 private:
  struct Connection;
  enum class State { kIdle, kOpen, kClosing, kClosed };

  static void OnConnection(uv_stream_t* server, int status);
  static void OnListenerClosed(void* server);
  void Accept();
  void CloseConnection(Connection* c);
  // Closes the connection idle for longest to make room; false if none is.
  bool EvictIdle();

  uv_loop_t* loop_;
  ControlService* service_;
  uint64_t idle_timeout_ms_;
  uint64_t bad_requests_ = 0;
  UvHandle<uv_pipe_t> listener_;
  State state_ = State::kIdle;
  std::string path_;
  dev_t dev_ = 0;  // identity of the socket file we created
  ino_t ino_ = 0;
  size_t connections_ = 0;
  bool accept_pending_ = false;  // a connection waits for a free slot
  bool evicting_ = false;        // a connection is closing to make room
  // While a client waits and no connection may be closed yet (all busy, or
  // silent ones too young), tries again every kMinEvictAgeMs.
  UvHandle<uv_timer_t> room_timer_;
  static void OnRoomTimer(uv_timer_t* t);
  Connection* first_ = nullptr;  // intrusive list of live connections
};

}  // namespace xdisk::control
