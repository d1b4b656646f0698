// The crypto phase of a Link (state kCrypto): DragonFly's RSA handshake
// (docs/dmsg-protocol.md §2.4; layout in docs/link-crypto.md) and the
// switch to the AES-256-GCM stream, or TLS 1.3 for a .tls13 peer. The
// codecs are pure (proto/rsa_handshake.h, proto/gcm_stream.h,
// proto/tls_stream.h); this file moves their bytes over the link's socket.
#include <openssl/rand.h>

#include "daemon/base/log.h"
#include "daemon/link/link.h"
#include "daemon/link/link_ktls.h"

namespace xdisk {

namespace {

// The frame decoder as the decrypting readers' sink (proto/plain_sink.h):
// plaintext lands where frames are decoded, or straight in a large aux's
// own buffer (FrameDecoder::WritableTail), with no buffer in between.
class DecoderSink final : public dfcrypto::PlainSink {
 public:
  explicit DecoderSink(dmsg::FrameDecoder* decoder) : decoder_(decoder) {}
  std::span<uint8_t> Space(size_t want) override { return decoder_->WritableTail(want); }
  void Commit(size_t n) override { decoder_->Commit(n); }

 private:
  dmsg::FrameDecoder* decoder_;
};

}  // namespace

const char* Link::encryption() const {
  if (!keys_) return "plaintext";
  if (!keys_->tls13) return dfcrypto::StreamVariantName(keys_->variant);
  if (ktls_tx_ && ktls_rx_) return "tls1.3+ktls";
  if (ktls_tx_) return "tls1.3+ktls-tx";
  if (ktls_rx_) return "tls1.3+ktls-rx";
  return "tls1.3";
}

void Link::SendRaw(std::vector<uint8_t> bytes) {
  OutMsg m;
  m.header = std::move(bytes);
  m.raw = true;
  queued_bytes_ += m.header.size();
  queue_.push_back(std::move(m));
  FlushWrites();
}

Status Link::SealBytes(std::span<const uint8_t> plain, std::vector<uint8_t>* wire) {
  return sealer_ ? sealer_->Seal(plain, wire) : tls_->Seal(plain, wire);
}

void Link::StartHandshake() {
  std::array<uint8_t, dfcrypto::kHandshakeBytes> random;
  if (RAND_bytes(random.data(), static_cast<int>(random.size())) != 1) {
    Close("handshake: OpenSSL has no random bytes");
    return;
  }
  handshake_started_ = true;
  own_block_ = dfcrypto::BuildHandshakeBlock(random);
  auto wire = dfcrypto::SealHandshake(&own_block_, keys_->own_private, keys_->peer_public);
  if (!wire.ok()) {
    Close(wire.status().message());
    return;
  }
  // Both sides send before they read (§2.4); 512 bytes fit any socket
  // buffer, so the symmetric exchange cannot deadlock. The bytes go out
  // raw: the sealer does not exist until the peer's handshake verified.
  SendRaw(std::vector<uint8_t>(wire->begin(), wire->end()));
  XLOG(kDebug, name_, "connected (%s), handshake sent for %s",
       dir_ == Direction::kIncoming ? "incoming" : "outgoing", keys_->peer_file.c_str());
}

void Link::OnHandshakeBytes(size_t n) {
  hs_rx_len_ += n;
  if (n == 0) return;
  bytes_in_ += n;
  last_rx_ms_ = uv_now(loop_);
  // A peer with a .none file for us starts with its plaintext LNK_CONN.
  // Recognising it gives both operators a clear reason instead of an RSA
  // failure on its bytes or a handshake timeout.
  if (dfcrypto::LooksLikePlaintextDmsg({hs_rx_.data(), hs_rx_len_})) {
    Close(
        "the peer speaks plaintext (it sent a dmsg message where its handshake belongs: it has a "
        ".none for us, we have " +
        keys_->peer_file + ")");
    return;
  }
  if (hs_rx_len_ < dfcrypto::kHandshakeBytes) return;
  auto peer_sess = dfcrypto::OpenHandshake(hs_rx_, keys_->own_private, keys_->peer_public);
  if (!peer_sess.ok()) {
    Close(peer_sess.status().message());
    return;
  }
  // We send with our own session material and receive with the peer's
  // (§2.5): the keys are never combined.
  std::span<const uint8_t, 64> own_sess(own_block_.data() + dfcrypto::kOffSess, 64);
  auto sealer =
      dfcrypto::StreamSealer::Create(keys_->variant, dfcrypto::StreamKeyFromSess(own_sess));
  auto opener =
      dfcrypto::StreamOpener::Create(keys_->variant, dfcrypto::StreamKeyFromSess(*peer_sess));
  if (!sealer.ok() || !opener.ok()) {
    Close(!sealer.ok() ? sealer.status().message() : opener.status().message());
    return;
  }
  sealer_ = std::move(sealer.value());
  opener_ = std::move(opener.value());
  // The session material is no longer needed here; do not keep it around.
  own_block_.fill(0);
  hs_rx_.fill(0);
  state_ = State::kHandshake;
  XLOG(kInfo, name_, "handshake verified with %s, stream %s", keys_->peer_file.c_str(),
       encryption());
  SendConn();
}

void Link::StartTls() {
  handshake_started_ = true;
  // The connecting side is the TLS client. Both sides pin the peer's key
  // from KEYS/remote/ADDR.pub (proto/tls_stream.h).
  auto tls =
      dfcrypto::TlsStream::Create(dir_ == Direction::kOutgoing ? dfcrypto::TlsStream::Role::kClient
                                                               : dfcrypto::TlsStream::Role::kServer,
                                  keys_->own_private, keys_->peer_public);
  if (!tls.ok()) {
    Close(tls.status().message());
    return;
  }
  tls_ = std::move(tls.value());
  std::vector<uint8_t> out;
  Status st = tls_->Start(&out);
  if (!out.empty()) SendRaw(std::move(out));
  if (!st.ok()) Close(st.message());
}

void Link::OnTlsBytes(size_t n) {
  if (n == 0) return;
  bytes_in_ += n;
  last_rx_ms_ = uv_now(loop_);
  rx_plain_.clear();
  std::vector<uint8_t> out;
  Status st = tls_->Receive({rx_wire_.data(), n}, &rx_plain_, &out);
  // Handshake records, or the alert that tells the peer why we refuse.
  if (!out.empty()) SendRaw(std::move(out));
  if (!st.ok()) {
    Close(st.message());
    return;
  }
  if (!tls_->handshake_done()) return;
  state_ = State::kHandshake;
  XLOG(kInfo, name_, "TLS 1.3 handshake verified with %s", keys_->peer_file.c_str());
  ktls_pending_ = ktls::Available();
  if (!ktls_pending_) {
    tls_->ForgetSecrets();
    static bool said = false;  // a property of the kernel: once per process
    if (!said)
      XLOG(kInfo, name_,
           "kernel TLS offload unavailable (no \"tls\" TCP upper layer, or XDISK_KTLS=off): TLS "
           "records are sealed and opened in user space");
    said = true;
  }
  // Receiving may go to the kernel at once if the handshake's last flight
  // ended the bytes read; sending once our last handshake bytes are out.
  bool had_data = !rx_plain_.empty();
  std::vector<uint8_t> plain = std::move(rx_plain_);
  rx_plain_.clear();
  if (ktls_pending_) MaybeOffload();
  SendConn();
  // Application data may have come with the handshake's last flight.
  if (had_data) {
    decoder_.Feed(plain);
    DecodeAvailable();
  }
}

void Link::MaybeOffload() {
  if (state_ != State::kHandshake && state_ != State::kUp) return;
  auto give_up = [&](const Status& st) {
    // User-space TLS goes on for what the kernel did not take.
    ktls_pending_ = false;
    tls_->ForgetSecrets();
    XLOG(kInfo, name_, "kernel TLS offload not used (%s): %s", encryption(), st.message().c_str());
  };
  int fd = -1;
  if (!ktls_attached_) {
    if (uv_fileno(tcp_.handle(), &fd) != 0) {
      give_up(Status::Unavailable("no socket descriptor"));
      return;
    }
    Status st = ktls::Attach(fd);
    if (!st.ok()) {
      give_up(st);
      return;
    }
    ktls_attached_ = true;
  }
  uv_fileno(tcp_.handle(), &fd);
  using D = dfcrypto::TlsStream::Direction;
  auto hand_over = [&](D dir, bool* done) {
    auto keys = tls_->ExportKeys(dir);
    Status st = keys.ok() ? ktls::Install(fd, dir, *keys) : keys.status();
    if (!st.ok()) give_up(st);
    *done = st.ok();
    return st.ok();
  };
  // Receiving: the socket's next byte must start a record.
  if (!ktls_rx_ && tls_->at_record_boundary() && !hand_over(D::kReceive, &ktls_rx_)) return;
  // Sending: nothing sealed in user space may still be on its way, and
  // handshake bytes queued raw must go out before the kernel would wrap
  // them in records of its own.
  bool raw_queued = false;
  for (const OutMsg& m : queue_) raw_queued = raw_queued || m.raw;
  if (!ktls_tx_ && !write_inflight_ && !raw_queued && !hand_over(D::kSend, &ktls_tx_)) return;
  if (ktls_tx_ && ktls_rx_) {
    ktls_pending_ = false;
    tls_->ForgetSecrets();
    XLOG(kInfo, name_, "kernel TLS offload on: records are sealed and opened by the kernel");
  }
}

bool Link::OpenReceived(size_t n) {
  DecoderSink plain(&decoder_);
  Status st;
  if (tls_) {
    std::vector<uint8_t> out;
    st = tls_->Receive({rx_wire_.data(), n}, &plain, &out);
    // Nothing is expected after the handshake (no tickets, no key updates),
    // but what TLS wants sent goes out, in order (an alert: not once the
    // kernel seals, it would send it as data).
    if (!out.empty() && !ktls_tx_) SendRaw(std::move(out));
    if (st.ok() && ktls_pending_) MaybeOffload();
  } else {
    st = opener_->Open({rx_wire_.data(), n}, &plain);
  }
  if (!st.ok()) {
    // A variant A chunk failed its tag, or a TLS record did not
    // authenticate. Nothing after it can be trusted (it was never
    // committed to the decoder), and the frames before it are dropped with
    // the link, undecoded: the requests on it are resent on the next link,
    // as after any loss.
    Close(st.message());
    return false;
  }
  return true;
}

}  // namespace xdisk
