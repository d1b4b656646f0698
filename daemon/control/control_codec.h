// Control socket framing: pure code, no sockets, no loop. The daemon's
// ControlServer (daemon/control/control_server.h) and the xdiskctl client
// (daemon/control/control_client.h) both frame their messages with it.
//
// Wire format (also described in proto/control.proto):
//
//   +---------------------------+------------------------------+
//   | length: uint32 big-endian | payload: `length` bytes      |
//   +---------------------------+------------------------------+
//
// The payload is one serialized xdisk.control.Request (client to daemon) or
// xdisk.control.Response (daemon to client). A length of 0 is a valid frame
// (an empty message, which the daemon then refuses for its version 0).
// Lengths above kMaxControlFrameBytes are an error: the receiver cannot
// resynchronise a byte stream whose framing it no longer trusts, so it
// closes the connection (after a best-effort error reply).
//
// Worked example: a `status` request is Request{version: 1, status: {}},
// serialized as 08 01 12 00, and travels as
//   00 00 00 04 08 01 12 00
//
// Why big-endian: it is the network byte order every tool shows by default
// (xxd, Wireshark), and nothing on this socket is performance sensitive.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "proto/status.h"

namespace google::protobuf {
class MessageLite;
}

namespace xdisk::control {

// The control protocol version this build speaks (Request/Response.version).
inline constexpr uint32_t kControlVersion = 1;
inline constexpr size_t kFrameHeaderBytes = 4;
inline constexpr uint32_t kMaxControlFrameBytes = 1u << 20;

// Appends the frame for `payload` to `out`.
// REQUIRES: payload.size() <= kMaxControlFrameBytes.
void AppendFrame(std::string_view payload, std::string* out);

// Serializes `msg` and frames it. Fails (InvalidArgument) if the message
// does not fit in kMaxControlFrameBytes; `out` is unchanged then.
Status AppendMessageFrame(const google::protobuf::MessageLite& msg, std::string* out);

// Incremental decoder of the byte stream of one connection. Feed it bytes in
// any chunking; Next() answers with one payload, "need more bytes", or an
// error. The length prefix is checked as soon as its 4 bytes are buffered,
// so an oversize frame is refused without waiting for (or buffering) its
// payload. After an error the decoder is poisoned: every later Next()
// returns kError again, and buffered() stays bounded.
//
// Thread safety: none; one decoder per connection.
class ControlFrameDecoder {
 public:
  enum class Outcome { kFrame, kNeedMore, kError };

  ControlFrameDecoder() = default;
  ControlFrameDecoder(const ControlFrameDecoder&) = delete;
  ControlFrameDecoder& operator=(const ControlFrameDecoder&) = delete;

  // Appends bytes. Ignored once the decoder is poisoned.
  void Feed(std::span<const uint8_t> bytes);
  void Feed(std::string_view bytes);

  // On kFrame, *payload holds the next frame's payload. On kError, error()
  // says what was wrong. kNeedMore: feed more bytes.
  Outcome Next(std::string* payload);

  const Status& error() const { return error_; }
  // Bytes buffered and not yet returned in a frame.
  size_t buffered() const { return buf_.size() - pos_; }
  // True if a frame was started but not finished (a truncated stream at EOF).
  bool mid_frame() const { return buffered() > 0; }

 private:
  std::string buf_;
  size_t pos_ = 0;  // start of the first unconsumed byte in buf_
  Status error_;
};

}  // namespace xdisk::control
