#include "daemon/control/control_codec.h"

#include <google/protobuf/message_lite.h>

#include <cassert>

namespace xdisk::control {

void AppendFrame(std::string_view payload, std::string* out) {
  assert(payload.size() <= kMaxControlFrameBytes);
  const uint32_t n = static_cast<uint32_t>(payload.size());
  const char header[kFrameHeaderBytes] = {static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                                          static_cast<char>(n >> 8), static_cast<char>(n)};
  out->append(header, kFrameHeaderBytes);
  out->append(payload);
}

Status AppendMessageFrame(const google::protobuf::MessageLite& msg, std::string* out) {
  const size_t n = msg.ByteSizeLong();
  if (n > kMaxControlFrameBytes)
    return Status::InvalidArgument("control message of " + std::to_string(n) +
                                   " bytes exceeds the limit of " +
                                   std::to_string(kMaxControlFrameBytes));
  std::string payload;
  if (!msg.SerializeToString(&payload))
    return Status::InvalidArgument("cannot serialize " + msg.GetTypeName());
  AppendFrame(payload, out);
  return Status::Ok();
}

void ControlFrameDecoder::Feed(std::span<const uint8_t> bytes) {
  Feed(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

void ControlFrameDecoder::Feed(std::string_view bytes) {
  // A poisoned decoder keeps nothing: the connection is going away, and a
  // peer that keeps sending must not grow our memory.
  if (!error_.ok()) return;
  // Drop consumed bytes before growing, so the buffer holds at most one
  // frame plus whatever arrived with it.
  if (pos_ > 0 && (pos_ == buf_.size() || pos_ >= buf_.size() / 2)) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(bytes);
}

ControlFrameDecoder::Outcome ControlFrameDecoder::Next(std::string* payload) {
  if (!error_.ok()) return Outcome::kError;
  if (buffered() < kFrameHeaderBytes) return Outcome::kNeedMore;
  const auto* p = reinterpret_cast<const uint8_t*>(buf_.data() + pos_);
  const uint32_t n =
      (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
  if (n > kMaxControlFrameBytes) {
    error_ =
        Status::Protocol("control frame of " + std::to_string(n) + " bytes exceeds the limit of " +
                         std::to_string(kMaxControlFrameBytes));
    buf_.clear();
    pos_ = 0;
    return Outcome::kError;
  }
  if (buffered() - kFrameHeaderBytes < n) return Outcome::kNeedMore;
  payload->assign(buf_, pos_ + kFrameHeaderBytes, n);
  pos_ += kFrameHeaderBytes + n;
  return Outcome::kFrame;
}

}  // namespace xdisk::control
