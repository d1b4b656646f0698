// ControlClient: the xdiskctl end of the control socket. Plain blocking
// socket I/O with a deadline per call; framing from daemon/control/control_codec.h.
//
// Errors are split the way xdiskctl's exit codes are:
//   kUnavailable       the daemon cannot be reached: no socket, nobody
//                      listening, connection lost, or no answer in time
//                      (exit 3)
//   kPermissionDenied  the socket exists but we may not connect (exit 3)
//   kProtocol          something answered, but not with a Response of our
//                      version (exit 1)
// An error *reply* from the daemon is not an error of Call(): it is a
// Response with `error` set.
//
// Thread safety: one client per thread. Not copyable; the destructor closes
// the socket.
#pragma once

#include <memory>
#include <string>

#include "daemon/control/control_codec.h"
#include "proto/control.pb.h"
#include "proto/status.h"

namespace xdisk::control {

class ControlClient {
 public:
  // Connects to the socket at `path`, retrying for up to `timeout_ms` while
  // the daemon's listen backlog is full (EAGAIN). `timeout_ms` also bounds
  // each later Call().
  static Result<std::unique_ptr<ControlClient>> Connect(const std::string& path, int timeout_ms);
  ~ControlClient();
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  // Sends `req` (its version is set to kControlVersion) and waits for the
  // response.
  Result<Response> Call(Request req);

 private:
  ControlClient(int fd, std::string path, int timeout_ms)
      : fd_(fd), path_(std::move(path)), timeout_ms_(timeout_ms) {}
  Status WriteAll(const std::string& bytes, long deadline_ms);
  Result<std::string> ReadFrame(long deadline_ms);

  int fd_;
  std::string path_;
  int timeout_ms_;
  ControlFrameDecoder decoder_;
};

}  // namespace xdisk::control
