#include "daemon/link/link.h"

#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "daemon/base/log.h"

namespace xdisk {

using namespace dmsg;

namespace {
constexpr size_t kReadBufferBytes = 256 * 1024;
constexpr uint64_t kTimerTickMs = 100;
constexpr uint64_t kGracefulCloseMs = 1000;
const uint8_t kZeros[kAlign] = {};
// TLS links: auxes this large are sealed in place instead of being staged
// with the batch's small messages (FlushWrites).
constexpr size_t kTlsDirectAuxMin = 16 * 1024;
// Encrypted links: write buffers are trimmed after this long without a write.
constexpr uint64_t kIdleTrimMs = 1000;
}  // namespace

struct Link::WriteReq {
  uv_write_t req;
  Link* link;
  std::vector<OutMsg> msgs;
  std::vector<uv_buf_t> bufs;
  size_t bytes = 0;
  std::vector<uint8_t> sealed;  // encrypted links: the wire bytes of `msgs`
  // The sealed buffer goes back to the link for the next write: megabytes
  // allocated and freed per write would be page-faulted in every time.
  ~WriteReq() {
    if (sealed.capacity() > 0) link->spare_sealed_.Give(std::move(sealed));
  }
};

Link::Link(uv_loop_t* loop, LinkObserver* observer, const LinkConfig& config, Direction dir,
           std::string peer_name)
    : loop_(loop),
      observer_(observer),
      config_(config),
      dir_(dir),
      peer_(std::move(peer_name)),
      name_("link " + peer_) {}

Link::~Link() = default;

int Link::Init() {
  int rc = tcp_.Open(uv_tcp_init, loop_);
  if (rc < 0) return rc;
  timer_.Open(uv_timer_init, loop_);
  uncork_prepare_.Open(uv_prepare_init, loop_);
  uncork_check_.Open(uv_check_init, loop_);
  tcp_.get()->data = this;
  timer_.get()->data = this;
  uncork_prepare_.get()->data = this;
  uncork_check_.get()->data = this;
  return 0;
}

void Link::Start() {
  // Block traffic is latency-bound request/response: never wait for Nagle.
  uv_tcp_nodelay(tcp_.get(), 1);
  uv_tcp_keepalive(tcp_.get(), 1, 10);
  last_rx_ms_ = last_tx_ms_ = started_ms_ = uv_now(loop_);
  state_ = keys_ ? State::kCrypto : State::kHandshake;
  int rc = uv_read_start(tcp_.stream(), OnAlloc, OnRead);
  if (rc < 0) {
    Close(std::string("cannot read: ") + uv_strerror(rc));
    return;
  }
  reading_ = true;
  uv_timer_start(timer_.get(), OnTimer, kTimerTickMs, kTimerTickMs);
  if (keys_) {
    if (keys_->tls13) {
      StartTls();
    } else {
      StartHandshake();
    }
    return;
  }
  XLOG(kDebug, name_, "connected (%s), sending LNK_CONN",
       dir_ == Direction::kIncoming ? "incoming" : "outgoing");
  SendConn();
}

void Link::SendConn() {
  LnkConn c;
  c.peer_id = config_.peer_id;
  c.peer_mask = config_.peer_mask;
  c.peer_type = config_.peer_type;
  c.proto_version = kSpanProtoVersion;
  c.peer_label = config_.label;
  std::vector<uint8_t> ext = c.Encode();
  our_conn_ = Open(kLnkConn, nullptr, this, ext);
}

// ---- receive path ----

void Link::OnAlloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  // Read straight into the decoder's buffer: no copy between the socket and
  // the frame decoder.
  Link* self = static_cast<Link*>(h->data);
  if (self->state_ == State::kCrypto && !self->tls_) {
    // Exactly the rest of the peer's 512 bytes: what follows them is
    // already encrypted and must go through the opener.
    *buf = uv_buf_init(reinterpret_cast<char*>(self->hs_rx_.data() + self->hs_rx_len_),
                       dfcrypto::kHandshakeBytes - self->hs_rx_len_);
    return;
  }
  if (self->opener_ || (self->tls_ && !self->ktls_rx_)) {
    self->rx_wire_.resize(kReadBufferBytes);
    *buf = uv_buf_init(reinterpret_cast<char*>(self->rx_wire_.data()), kReadBufferBytes);
    return;
  }
  std::span<uint8_t> tail = self->decoder_.WritableTail(kReadBufferBytes);
  *buf = uv_buf_init(reinterpret_cast<char*>(tail.data()), tail.size());
}

void Link::OnRead(uv_stream_t* s, ssize_t n, const uv_buf_t*) {
  Link* self = static_cast<Link*>(s->data);
  if (self->state_ == State::kCrypto) {
    if (self->tls_) {
      self->OnTlsBytes(n > 0 ? static_cast<size_t>(n) : 0);
    } else {
      self->OnHandshakeBytes(n > 0 ? static_cast<size_t>(n) : 0);
    }
    if (n >= 0) return;
    // An error or EOF: handled below, with the handshake's own wording.
  }
  if (n == 0) return;
  if (n < 0) {
    if (self->state_ == State::kCrypto && self->tls_ && (n == UV_EOF || n == UV_ECONNRESET)) {
      self->Close(
          std::string("TLS handshake cut short: ") +
          (n == UV_EOF ? "the peer closed the connection" : "the peer reset the connection"));
    } else if (self->state_ == State::kCrypto && (n == UV_EOF || n == UV_ECONNRESET)) {
      self->Close(
          "short handshake (" + std::to_string(self->hs_rx_len_) + " of 512 bytes): " +
          (n == UV_EOF ? "the peer closed the connection" : "the peer reset the connection"));
    } else if (self->ktls_rx_ && n == -EBADMSG) {  // libuv passes errno on
      self->Close("TLS record failed: a record did not authenticate (kernel TLS)");
    } else if (self->ktls_rx_ && n == UV_EIO) {
      self->Close("TLS record failed: the peer sent a record other than data (kernel TLS)");
    } else if (self->graceful_) {
      self->Close(self->graceful_reason_);
    } else if (n == UV_EOF && self->opener_ && self->opener_->pending() > 0) {
      self->Close("truncated stream: connection closed inside an encrypted chunk");
    } else if (n == UV_EOF && self->decoder_.buffered() > 0) {
      // A short read is a fatal link error in DragonFly's daemon too (§5.4).
      self->Close("truncated frame: connection closed after " +
                  std::to_string(self->decoder_.buffered()) + " bytes of an incomplete frame");
    } else if (n == UV_EOF) {
      self->Close("peer closed the connection");
    } else if (n == UV_ECONNRESET) {
      self->Close("peer reset the connection");
    } else {
      self->Close(std::string("read error: ") + uv_strerror(static_cast<int>(n)));
    }
    return;
  }
  self->bytes_in_ += n;
  self->last_rx_ms_ = uv_now(self->loop_);
  if (self->opener_ || (self->tls_ && !self->ktls_rx_)) {
    if (!self->OpenReceived(static_cast<size_t>(n))) return;
  } else {
    self->decoder_.Commit(static_cast<size_t>(n));
  }
  self->DecodeAvailable();
}

void Link::DecodeAvailable() {
  while (state_ == State::kHandshake || state_ == State::kUp) {
    if (read_paused_) return;  // resumed by SetReadPaused(false)
    Frame frame;
    DecodeError err;
    std::string detail;
    auto outcome = decoder_.Next(&frame, &err, &detail);
    if (outcome == FrameDecoder::Outcome::kNeedMore) return;
    if (outcome == FrameDecoder::Outcome::kError) {
      // The commonest cause of garbage right at the start of a plaintext
      // link is a peer that has our address as .pub: say so. The message
      // leaves out the random magic, so that a peer retrying is logged
      // once (a refusal, see refused()).
      if (!keys_ && err == DecodeError::kBadMagic && decoder_.frames_decoded() == 0) {
        plaintext_mismatch_ = true;
        XLOG(kDebug, name_, "first frame: %s", detail.c_str());
        Close(
            "malformed frame: bad magic at the start of the link; the peer may be sending an "
            "encrypted handshake (it has a .pub for us, we a .none)");
        return;
      }
      Close(std::string("malformed frame: ") + DecodeErrorName(err) +
            (detail.empty() ? "" : " (" + detail + ")"));
      return;
    }
    ++dispatch_depth_;
    Dispatch(frame);
    --dispatch_depth_;
    if (!pending_close_.empty()) {
      std::string reason = std::move(pending_close_);
      pending_close_.clear();
      Fail(reason);
      return;
    }
  }
}

void Link::Dispatch(Frame& f) {
  XLOG(kTrace, name_, "rx %s msgid %#" PRIx64 " circuit %#" PRIx64 " err %u aux %u",
       CommandName(f.hdr.cmd).c_str(), f.hdr.msgid, f.hdr.circuit, f.hdr.error, f.hdr.aux_bytes);
  if (f.hdr.cmd & kFlagUnused) {
    Close("unknown flag bits in " + CommandName(f.hdr.cmd));
    return;
  }
  auto rx = txns_.Receive(f.hdr);
  switch (rx.verdict) {
    case TransactionTable::Verdict::kProtocolError:
      Close("protocol violation: " + rx.reason);
      return;
    case TransactionTable::Verdict::kIgnore:
      XLOG(kDebug, name_, "ignoring %s: %s", CommandName(f.hdr.cmd).c_str(), rx.reason.c_str());
      return;
    case TransactionTable::Verdict::kOneWay:
      HandleOneWay(f);
      return;
    case TransactionTable::Verdict::kNew:
      HandleNew(rx.txn, f);
      return;
    case TransactionTable::Verdict::kDeliver:
      Deliver(rx.txn, f);
      return;
  }
}

void Link::HandleOneWay(const Frame& f) {
  const uint32_t base = BaseCmd(f.hdr.cmd);
  if (base == kLnkPing) {
    // Never answer a reply: that would ping-pong forever.
    if (!(f.hdr.cmd & kFlagReply)) SendOneWay(kLnkPing | kFlagReply);
    return;
  }
  // LNK_PAD, one-way LNK_ERROR, DBG_SHELL and anything unknown: ignored, and
  // never answered (§5.6, §8).
  XLOG(kDebug, name_, "ignoring one-way %s", CommandName(f.hdr.cmd).c_str());
}

void Link::HandleNew(Transaction* t, Frame& f) {
  TransactionHandler* handler = nullptr;
  if (t->parent == nullptr) {
    if (t->cmd == kLnkConn) {
      if (conn_received_) {
        Close("protocol violation: second LNK_CONN");
        return;
      }
      handler = this;
    } else {
      if (t->cmd == (kLnkConn & ~kSizeMask) + 8)
        XLOG(kWarning, name_, "peer sent a legacy (E1, 8-unit) LNK_CONN; only E2/E3 is supported");
      handler = observer_->OnTopLevelCreate(*this, *t, f);
    }
  } else if (t->parent->handler != nullptr) {
    handler = t->parent->handler->OnChildCreate(*this, *t->parent, *t, f);
  }
  if (handler == nullptr) {
    XLOG(kDebug, name_, "answering NOSUPP to %s", CommandName(f.hdr.cmd).c_str());
    t->handler = nullptr;
    // Frees `t` when the peer's CREATE also carried DELETE.
    Reply(t, kErrNoSupp, true);
    return;
  }
  t->handler = handler;
  Deliver(t, f);
}

void Link::Deliver(Transaction* t, Frame& f) {
  ++t->busy;
  // A DELETE from the peer terminates everything stacked under it (§5.3).
  if (f.hdr.cmd & kFlagDelete) TerminateChildren(t);
  if (t->handler != nullptr) t->handler->OnMessage(*this, *t, f);
  --t->busy;
  AfterDelivery(t);
}

void Link::AfterDelivery(Transaction* t) {
  if (t->busy) return;
  if (t->rx_delete && !t->tx_delete && !t->deferred && state_ != State::kClosing &&
      state_ != State::kClosed) {
    // The handler did not close its side: close it, so nothing leaks. Send()
    // frees the transaction then (both sides closed): `t` is gone.
    Reply(t, 0, true);
    return;
  }
  FreeIfClosed(t);
}

void Link::TerminateChildren(Transaction* t) {
  std::vector<Transaction*> order = txns_.SubtreePostOrder(t);
  order.pop_back();  // t itself, last in post-order
  // Mark the whole subtree first, so that handlers reacting to one child's
  // LOSTLINK cannot send on, or open under, a sibling about to go.
  for (Transaction* c : order) c->dying = true;
  for (Transaction* c : order) Terminate(c);
}

void Link::Terminate(Transaction* t) {
  ++t->busy;
  if (!t->rx_delete) {
    Frame f = txns_.SynthesizeLostLink(t);
    if (t->handler) t->handler->OnMessage(*this, *t, f);
  } else {
    t->dying = true;
  }
  --t->busy;
  // Anything the handler sent was discarded; the side is closed for good.
  t->tx_delete = true;
  if (t->handler) t->handler->OnFreed(*this, *t);
  t->handler = nullptr;
  txns_.MaybeFree(t);
}

// ---- LNK_CONN ----

void Link::OnMessage(Link&, Transaction& t, Frame& f) {
  if (state_ == State::kClosing || state_ == State::kClosed) return;
  const uint32_t cmd = f.hdr.cmd;
  if (&t == our_conn_) {
    if ((cmd & kFlagReply) && (cmd & kFlagCreate)) {
      if (f.hdr.error != 0) {
        Close("peer refused our LNK_CONN: " + ErrorName(f.hdr.error));
        return;
      }
      conn_acked_ = true;
      MaybeUp();
    }
    if (cmd & kFlagDelete) Close("peer closed our LNK_CONN");
    return;
  }
  if (cmd & kFlagCreate) {
    peer_conn_ = LnkConn::Decode(f.ext_span());
    peer_conn_txn_ = &t;
    conn_received_ = true;
    XLOG(kDebug, name_, "peer LNK_CONN: type %u mask %#" PRIx64 " version %u label '%s'",
         peer_conn_.peer_type, peer_conn_.peer_mask, peer_conn_.proto_version,
         peer_conn_.peer_label.c_str());
    Reply(&t, 0, false);
    MaybeUp();
  }
  if (cmd & kFlagDelete) Close("peer closed its LNK_CONN");
}

void Link::MaybeUp() {
  if (state_ != State::kHandshake || !conn_acked_ || !conn_received_) return;
  state_ = State::kUp;
  up_since_ms_ = uv_now(loop_);
  XLOG(kInfo, name_, "up: peer '%s' type %u", peer_conn_.peer_label.c_str(), peer_conn_.peer_type);
  observer_->OnLinkUp(*this);
}

// ---- send path ----

Transaction* Link::Open(uint32_t base_cmd, Transaction* parent, TransactionHandler* handler,
                        std::span<const uint8_t> ext, std::span<const uint8_t> aux, uint32_t flags,
                        std::shared_ptr<const void> aux_hold) {
  if (state_ != State::kHandshake && state_ != State::kUp) return nullptr;
  // Nothing new may hang under a transaction that is closing, at any level:
  // it would outlive its parent.
  for (Transaction* a = parent; a != nullptr; a = a->parent)
    if (a->dying || a->rx_delete || a->tx_delete) return nullptr;
  Transaction* t = txns_.OpenLocal(base_cmd, parent);
  t->handler = handler;
  Header h;
  h.cmd = base_cmd;
  if (txns_.PrepareSend(t, flags, &h)) Enqueue(h, ext, aux, nullptr, std::move(aux_hold));
  return t;
}

bool Link::Send(Transaction* t, uint32_t base_cmd, uint32_t flags, std::span<const uint8_t> ext,
                std::span<const uint8_t> aux, uint32_t error) {
  return SendOn(t, base_cmd, flags, ext, aux, nullptr, error);
}

bool Link::SendOwned(Transaction* t, uint32_t base_cmd, uint32_t flags,
                     std::span<const uint8_t> ext, dmsg::ByteBuffer&& aux, uint32_t error) {
  return SendOn(t, base_cmd, flags, ext, aux, &aux, error);
}

bool Link::SendOn(Transaction* t, uint32_t base_cmd, uint32_t flags, std::span<const uint8_t> ext,
                  std::span<const uint8_t> aux, dmsg::ByteBuffer* owned, uint32_t error) {
  Header h;
  h.cmd = base_cmd;
  h.error = error;
  bool live = state_ == State::kHandshake || state_ == State::kUp;
  bool ok = txns_.PrepareSend(t, flags, &h) && live;
  if (ok) ok = Enqueue(h, ext, aux, owned);
  // Dying transactions are freed by Terminate(), which is walking them.
  if (!t->dying) FreeIfClosed(t);
  return ok;
}

Transaction* Link::OpenRelayed(Transaction* parent, TransactionHandler* handler, Frame& f) {
  // The relay never gets here with a closing link: Fail() ends every
  // transaction on it, and the relay forgets the spans and halves there,
  // before any other link dispatches again. Kept for the contract; the
  // send below would refuse too.
  if (state_ != State::kHandshake && state_ != State::kUp) return nullptr;
  // Reached by the relay: a CREATE under a half whose far mirror the far
  // peer has closed, the DELETE passed on but not yet seen by the sender
  // ([relay_loop] "a relayed CREATE under an open the far side has already
  // closed ...").
  for (Transaction* a = parent; a != nullptr; a = a->parent)
    if (a->dying || a->rx_delete || a->tx_delete) return nullptr;
  Transaction* t = txns_.OpenLocal(BaseCmd(f.hdr.cmd), parent);
  t->handler = handler;
  if (!SendRelayed(t, f)) {
    // Not sent (our side of the stream is finished): the peer never heard
    // of it, so it goes now, without a handler call, as if never opened.
    t->handler = nullptr;
    t->tx_delete = t->rx_delete = true;
    txns_.MaybeFree(t);
    return nullptr;
  }
  return t;
}

bool Link::SendRelayed(Transaction* t, Frame& f) {
  Header h;
  h.cmd = BaseCmd(f.hdr.cmd);
  h.error = f.hdr.error;
  // Pass-through fields (§6.3 "Child transactions"): meaningless to us,
  // copied as the relay in libdmsg copies them.
  h.reserved02 = f.hdr.reserved02;
  h.link_verifier = f.hdr.link_verifier;
  bool live = state_ == State::kHandshake || state_ == State::kUp;
  bool ok = txns_.PrepareSend(t, f.hdr.cmd & (kFlagDelete | kFlagAbort), &h) && live;
  // The aux goes on unchanged: its CRC, verified on receipt, needs no
  // second pass over the bytes (a relay's largest CPU cost after copies).
  if (ok)
    ok = Enqueue(h, f.ext, f.aux, &f.aux, nullptr, f.aux_crc_reusable ? &f.hdr.aux_crc : nullptr);
  if (!t->dying) FreeIfClosed(t);
  return ok;
}

void Link::FreeIfClosed(Transaction* t) {
  if (t->busy || !t->rx_delete || !t->tx_delete) return;
  if (t->handler) t->handler->OnFreed(*this, *t);
  txns_.MaybeFree(t);
}

void Link::SendOneWay(uint32_t cmd) {
  Header h;
  h.cmd = cmd;
  Enqueue(h, {}, {}, nullptr);
}

bool Link::Enqueue(Header h, std::span<const uint8_t> ext, std::span<const uint8_t> aux,
                   dmsg::ByteBuffer* owned, std::shared_ptr<const void> aux_hold,
                   const uint32_t* aux_crc) {
  if (state_ != State::kHandshake && state_ != State::kUp) return false;
  if (shutdown_sent_) return false;  // our side of the stream is finished
  h.salt = tx_seq_++ & 0xFF;
  OutMsg m;
  if (aux_crc != nullptr)
    EncodeHeaderWithAuxCrc(h, ext, aux.size(), *aux_crc, &m.header);
  else
    EncodeHeader(h, ext, aux, &m.header);
  // The link owns what it sends, or holds it: a transaction terminated
  // locally (its parent deleted) may leave its message queued or
  // half-written while the caller, told LOSTLINK, frees or reuses its
  // buffer.
  if (owned != nullptr) {
    m.aux_owned = std::move(*owned);
    m.aux = m.aux_owned;
  } else if (aux_hold != nullptr) {
    m.aux_hold = std::move(aux_hold);
    m.aux = aux;
  } else {
    m.aux_owned.assign(aux.begin(), aux.end());
    m.aux = m.aux_owned;
  }
  m.pad = PaddedAux(m.aux.size()) - m.aux.size();
  queued_bytes_ += m.header.size() + m.aux.size() + m.pad;
  XLOG(kTrace, name_, "tx %s msgid %#" PRIx64 " circuit %#" PRIx64 " err %u aux %zu",
       CommandName(h.cmd).c_str(), h.msgid, h.circuit, h.error, m.aux.size());
  queue_.push_back(std::move(m));
  FlushWrites();
  return true;
}

void Link::FlushWrites(bool may_cork) {
  // One write at a time; whatever queues meanwhile goes out in the next
  // one as one writev, so a busy link batches naturally.
  // After a write error nothing more is written: the timer closes the link
  // (a later message must not reach the peer after a lost one).
  if (write_inflight_ || corked_ || queue_.empty() || !pending_close_.empty()) return;
  // Nothing of ours is in flight: the moment the kernel may take over
  // sending (everything sealed so far is in the socket already).
  if (ktls_pending_) MaybeOffload();
  auto* w = new WriteReq;
  w->link = this;
  w->msgs.reserve(queue_.size());
  while (!queue_.empty()) {
    w->msgs.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  for (OutMsg& m : w->msgs) {
    w->bufs.push_back(uv_buf_init(reinterpret_cast<char*>(m.header.data()), m.header.size()));
    if (!m.aux.empty())
      w->bufs.push_back(uv_buf_init(const_cast<char*>(reinterpret_cast<const char*>(m.aux.data())),
                                    m.aux.size()));
    if (m.pad)
      w->bufs.push_back(
          uv_buf_init(const_cast<char*>(reinterpret_cast<const char*>(kZeros)), m.pad));
    w->bytes += m.header.size() + m.aux.size() + m.pad;
  }
  queued_bytes_ = 0;
  if (sealer_ || (tls_ && tls_->handshake_done() && !ktls_tx_)) {
    // Encrypted link: the writev becomes one buffer of wire bytes. Sealing
    // here, where messages leave the queue in order, keeps the chunk
    // counter in step with the bytes the peer receives. Raw messages (TLS
    // handshake records) are wire bytes already.
    w->sealed = spare_sealed_.Take();
    std::vector<uint8_t>& wire = w->sealed;
    // TLS: 22 bytes per record of at most 16 KiB (header, inner type,
    // tag), and the handshake's raw bytes; a reallocation here would copy
    // the whole batch once more.
    wire.reserve(sealer_ ? dfcrypto::SealedBytes(keys_->variant, w->bytes)
                         : w->bytes + (w->bytes / 16384 + 1) * 22 + 4096);
    Status st;
    // TLS: the batch's messages go into records together (a record per
    // 64-byte header would cost a record header, a tag and a cipher call
    // each); the GCM stream seals the parts as they are.
    std::vector<uint8_t> staged = tls_staged_.Take();
    size_t staged_peak = 0;
    auto seal_staged = [&] {
      Status s = staged.empty() ? Status::Ok() : tls_->Seal(staged, &wire);
      staged_peak = std::max(staged_peak, staged.size());
      staged.clear();
      return s;
    };
    for (const OutMsg& m : w->msgs) {
      if (m.raw) {
        st = seal_staged();
        if (!st.ok()) break;
        wire.insert(wire.end(), m.header.begin(), m.header.end());
        continue;
      }
      if (tls_) {
        staged.insert(staged.end(), m.header.begin(), m.header.end());
        if (m.aux.size() >= kTlsDirectAuxMin) {
          // A large aux (a block's data) is sealed from where it lies, not
          // copied into the batch first; the cost is one short record.
          st = seal_staged();
          if (st.ok()) st = tls_->Seal(m.aux, &wire);
          if (!st.ok()) break;
        } else {
          staged.insert(staged.end(), m.aux.begin(), m.aux.end());
        }
        staged.insert(staged.end(), kZeros, kZeros + m.pad);
        continue;
      }
      st = SealBytes(m.header, &wire);
      if (st.ok() && !m.aux.empty()) st = SealBytes(m.aux, &wire);
      if (st.ok() && m.pad) st = SealBytes({kZeros, m.pad}, &wire);
      if (!st.ok()) break;
    }
    if (st.ok()) st = seal_staged();
    tls_staged_.Give(std::move(staged), staged_peak);
    if (!st.ok()) {
      delete w;
      if (pending_close_.empty()) pending_close_ = st.message();
      Wake();
      return;
    }
    w->bufs.assign(1, uv_buf_init(reinterpret_cast<char*>(wire.data()), wire.size()));
    w->bytes = wire.size();
  }
  auto* stream = tcp_.stream();
  // Usually the socket takes it all at once: write it here. uv_write()
  // would do the same, but then re-register the socket with epoll after
  // completing (one epoll_ctl per write, measured at QD1 on both daemons).
  int rc = uv_try_write(stream, w->bufs.data(), static_cast<unsigned>(w->bufs.size()));
  if (rc >= 0 && static_cast<size_t>(rc) == w->bytes) {
    bytes_out_ += w->bytes;
    last_tx_ms_ = write_progress_ms_ = uv_now(loop_);
    delete w;  // the kernel has the bytes: holds and owned buffers go
    CheckDrain();
    if (graceful_) {
      // The half-close goes from the timer: a failing shutdown closes the
      // link, never from inside a caller's Open()/Send().
      Wake();
    } else if (may_cork) {
      // As uv_write's completion would: the rest of this turn batches.
      // A prepare handle ends the cork before the loop can wait, a check
      // handle right after the turn's poll callbacks.
      corked_ = true;
      uv_prepare_start(uncork_prepare_.get(), OnUncorkPrepare);
      uv_check_start(uncork_check_.get(), OnUncorkCheck);
    }
    return;
  }
  if (rc < 0 && rc != UV_EAGAIN) {
    delete w;
    FailOnWriteError(rc);
    return;
  }
  // The rest goes through uv_write, from where the socket stopped.
  size_t skip = rc > 0 ? static_cast<size_t>(rc) : 0;
  bytes_out_ += skip;
  if (skip > 0) write_progress_ms_ = uv_now(loop_);
  size_t first = 0;
  while (skip > 0 && skip >= w->bufs[first].len) skip -= w->bufs[first++].len;
  w->bufs.erase(w->bufs.begin(), w->bufs.begin() + static_cast<std::ptrdiff_t>(first));
  w->bufs.front().base += skip;
  w->bufs.front().len -= skip;
  w->bytes -= static_cast<size_t>(rc > 0 ? rc : 0);
  inflight_bytes_ = w->bytes;
  w->req.data = w;
  write_inflight_ = true;
  rc = uv_write(&w->req, stream, w->bufs.data(), static_cast<unsigned>(w->bufs.size()), OnWrite);
  if (rc < 0) {
    write_inflight_ = false;
    inflight_bytes_ = 0;
    delete w;
    FailOnWriteError(rc);
    return;
  }
  CheckDrain();
}

void Link::FailOnWriteError(int rc) {
  // We may be inside Open()/Send() of a caller that still holds its
  // transaction: fail from the timer, never from the send path.
  if (pending_close_.empty()) pending_close_ = std::string("write error: ") + uv_strerror(rc);
  Wake();
}

void Link::OnUncorkPrepare(uv_prepare_t* h) { static_cast<Link*>(h->data)->Uncork(); }
void Link::OnUncorkCheck(uv_check_t* h) { static_cast<Link*>(h->data)->Uncork(); }

void Link::Uncork() {
  corked_ = false;
  uv_prepare_stop(uncork_prepare_.get());
  uv_check_stop(uncork_check_.get());
  // No new cork from here: started in the prepare phase it would only end
  // after the loop waited, with bytes held back.
  if (state_ == State::kHandshake || state_ == State::kUp) FlushWrites(false);
}

void Link::OnWrite(uv_write_t* req, int status) {
  auto* w = static_cast<WriteReq*>(req->data);
  Link* self = w->link;
  self->write_inflight_ = false;
  self->inflight_bytes_ = 0;
  self->bytes_out_ += w->bytes;
  self->last_tx_ms_ = self->write_progress_ms_ = uv_now(self->loop_);
  delete w;
  if (status < 0) {
    if (status != UV_ECANCELED) self->Close(std::string("write error: ") + uv_strerror(status));
    return;
  }
  if (self->state_ == State::kHandshake || self->state_ == State::kUp) {
    self->FlushWrites();
    if (self->graceful_ && !self->write_inflight_) self->HalfClose();
    self->CheckDrain();
  }
}

size_t Link::write_queue_bytes() const {
  // libuv counts down what is left of a write as the socket takes it.
  const size_t left =
      write_inflight_ && tcp_.is_open() ? uv_stream_get_write_queue_size(tcp_.stream()) : 0;
  return queued_bytes_ + left;
}

void Link::NotifyWhenDrained(size_t low_bytes, DrainCallback cb) {
  if (drain_cb_ == nullptr) {
    // The stall clock starts now: what the peer did before we waited for
    // it does not count.
    write_progress_ms_ = uv_now(loop_);
    written_mark_ = bytes_out_ + inflight_bytes_ - (write_queue_bytes() - queued_bytes_);
  }
  drain_cb_ = std::move(cb);
  drain_low_ = low_bytes;
  CheckDrain();
}

void Link::CheckDrain() {
  if (drain_cb_ == nullptr || drain_due_ || write_queue_bytes() > drain_low_) return;
  if (state_ != State::kHandshake && state_ != State::kUp) return;
  // Never from the caller's send: the timer runs the callback.
  drain_due_ = true;
  Wake();
}

bool Link::FireDrain(uint64_t now) {
  drain_due_ = false;
  if (drain_cb_ == nullptr) return false;
  // Progress of the write in flight counts too: a slow peer that takes a
  // large write bit by bit is not stalled.
  const uint64_t mark = bytes_out_ + inflight_bytes_ - (write_queue_bytes() - queued_bytes_);
  if (mark != written_mark_) {
    written_mark_ = mark;
    write_progress_ms_ = now;
  }
  DrainEvent ev;
  if (write_queue_bytes() <= drain_low_) {
    ev = DrainEvent::kDrained;
  } else if (now - write_progress_ms_ >= config_.dead_timeout_ms) {
    ev = DrainEvent::kStalled;
  } else {
    return false;
  }
  DrainCallback cb = std::move(drain_cb_);
  drain_cb_ = nullptr;
  cb(*this, ev);
  return true;
}

void Link::SetReadPaused(bool paused, uint32_t reason) {
  pause_reasons_ = paused ? (pause_reasons_ | reason) : (pause_reasons_ & ~reason);
  paused = pause_reasons_ != 0;
  if (paused == read_paused_) return;
  read_paused_ = paused;
  if (state_ != State::kHandshake && state_ != State::kUp) return;
  auto* s = tcp_.stream();
  if (paused) {
    uv_read_stop(s);
    reading_ = false;
  } else {
    uv_read_start(s, OnAlloc, OnRead);
    reading_ = true;
    // The peer's silence counts from when we listen again.
    last_rx_ms_ = uv_now(loop_);
    // Frames already buffered are decoded on the next timer tick, never
    // from inside the caller's callback (no re-entry into handlers).
    Wake();
  }
}

// ---- liveness and closing ----

void Link::OnTimer(uv_timer_t* t) {
  Link* self = static_cast<Link*>(t->data);
  const State st = self->state_;
  if (st != State::kCrypto && st != State::kHandshake && st != State::kUp) return;
  // The handshake timeout of encrypted links; plaintext links keep only the
  // silence timeout below, as before encryption existed.
  const uint64_t now = uv_now(self->loop_);
  LivenessInput in = self->LivenessNow(now);
  if (self->pending_close_.empty() && in.handshaking &&
      CheckLiveness(in) == LivenessVerdict::kHandshakeTimedOut) {
    const std::string after = std::to_string(self->config_.dead_timeout_ms) + " ms";
    if (st == State::kHandshake) {
      self->Close("handshake timed out after " + after + " (no LNK_CONN exchange)");
    } else if (self->tls_) {
      self->Close("TLS handshake timed out after " + after);
    } else {
      self->Close("short handshake: handshake timed out after " + after + " (" +
                  std::to_string(self->hs_rx_len_) + " of 512 handshake bytes received)");
    }
    return;
  }
  if (st == State::kCrypto && self->pending_close_.empty()) return;
  if (!self->pending_close_.empty() && self->dispatch_depth_ == 0) {
    std::string reason = std::move(self->pending_close_);
    self->pending_close_.clear();
    self->Fail(reason);
    return;
  }
  // The relay's watch may close this link.
  if (self->FireDrain(now) && self->state_ != State::kHandshake && self->state_ != State::kUp)
    return;
  if (self->graceful_) {
    if (!self->write_inflight_ && !self->corked_ && self->queue_.empty()) self->HalfClose();
    if (now - self->last_tx_ms_ >= kGracefulCloseMs) self->Close("closed (flush timed out)");
    return;
  }
  if (!self->read_paused_ && self->decoder_.buffered() > 0) self->DecodeAvailable();
  // A quiet link gives back what a burst grew its write buffers to.
  if (now - self->last_tx_ms_ >= kIdleTrimMs) {
    self->spare_sealed_.Trim();
    self->tls_staged_.Trim();
  }
  if (self->state_ != State::kHandshake && self->state_ != State::kUp) return;
  // Our own backpressure is not the peer's silence; but the peer must keep
  // hearing from us meanwhile (the pings), or it drops a link we merely
  // stopped reading for a while.
  in = self->LivenessNow(now);
  in.handshaking = false;
  switch (CheckLiveness(in)) {
    case LivenessVerdict::kSilent: {
      char buf[96];
      snprintf(buf, sizeof buf, "no data received for %" PRIu64 " ms", now - self->last_rx_ms_);
      self->Close(buf);
      return;
    }
    case LivenessVerdict::kPing:
      self->SendOneWay(kLnkPing);
      self->last_tx_ms_ = now;
      return;
    case LivenessVerdict::kNothing:
    case LivenessVerdict::kHandshakeTimedOut:
      return;
  }
}

LivenessInput Link::LivenessNow(uint64_t now) const {
  LivenessInput in;
  in.now_ms = now;
  in.started_ms = started_ms_;
  in.last_rx_ms = last_rx_ms_;
  in.last_tx_ms = last_tx_ms_;
  in.handshaking = state_ == State::kCrypto || (state_ == State::kHandshake && keys_);
  in.exchanging = state_ == State::kHandshake || state_ == State::kUp;
  in.read_paused = read_paused_;
  in.ping_interval_ms = config_.ping_interval_ms;
  in.dead_timeout_ms = config_.dead_timeout_ms;
  return in;
}

void Link::Close(const std::string& reason) {
  if (dispatch_depth_ > 0) {
    if (pending_close_.empty()) pending_close_ = reason;
    return;
  }
  Fail(reason);
}

void Link::CloseGracefully(const std::string& reason) {
  if (state_ != State::kHandshake && state_ != State::kUp) {
    // Includes kCrypto: nothing of ours is worth flushing before LNK_CONN.
    Close(reason);
    return;
  }
  if (graceful_) return;
  graceful_ = true;
  graceful_reason_ = reason;
  last_tx_ms_ = uv_now(loop_);
  if (!write_inflight_ && queue_.empty()) HalfClose();
}

void Link::HalfClose() {
  // Send FIN but keep reading until the peer closes too (or the graceful
  // timer fires): the peer's answers to our last DELETEs then arrive instead
  // of meeting a closed socket and a reset.
  if (shutdown_sent_ || !tcp_.is_open()) return;
  shutdown_sent_ = true;
  shutdown_req_.data = this;
  int rc = uv_shutdown(&shutdown_req_, tcp_.stream(), [](uv_shutdown_t*, int) {});
  if (rc < 0) Close(graceful_reason_);
}

void Link::Fail(const std::string& reason) {
  if (state_ == State::kClosing || state_ == State::kClosed) return;
  const bool started = state_ == State::kUp || state_ == State::kHandshake;
  const bool refused = state_ == State::kCrypto || plaintext_mismatch_;
  state_ = State::kClosing;
  if (refused) {
    // A failed handshake is a refusal: the owner logs it (once per peer
    // and reason, where it can tell repeats from news).
    XLOG(kDebug, name_, "handshake failed: %s", reason.c_str());
  } else if (!started) {
    // Refused or never connected: the owner already logged why.
    XLOG(kDebug, name_, "closing: %s", reason.c_str());
  } else if (graceful_ || reason == "peer closed the connection" ||
             reason == "peer reset the connection") {
    XLOG(kInfo, name_, "%s", reason.c_str());
  } else {
    XLOG(kWarning, name_, "dropping link: %s", reason.c_str());
  }
  if (reading_) uv_read_stop(tcp_.stream());
  reading_ = false;
  queue_.clear();
  queued_bytes_ = 0;
  drain_cb_ = nullptr;
  // Every open transaction ends as if the peer had sent LOSTLINK (§5.7),
  // children before parents.
  std::vector<Transaction*> all = txns_.SubtreePostOrder(nullptr);
  for (Transaction* t : all) t->dying = true;
  for (Transaction* t : all) Terminate(t);
  txns_.Clear();
  our_conn_ = peer_conn_txn_ = nullptr;
  observer_->OnLinkDown(*this, reason);
  CloseHandles();
}

void Link::CloseHandles() {
  if (!tcp_.is_open()) {
    state_ = State::kClosed;
    observer_->OnLinkClosed(*this);
    return;
  }
  // The link is deleted by its owner once libuv is done with all four
  // (uv_close stops the timer, prepare and check handles).
  open_handles_ = 4;
  corked_ = false;
  tcp_.Close(OnClose, this);
  timer_.Close(OnClose, this);
  uncork_prepare_.Close(OnClose, this);
  uncork_check_.Close(OnClose, this);
}

void Link::Wake() {
  if (timer_.is_open()) uv_timer_start(timer_.get(), OnTimer, 0, kTimerTickMs);
}

void Link::OnClose(void* link) {
  Link* self = static_cast<Link*>(link);
  if (--self->open_handles_ > 0) return;
  self->state_ = State::kClosed;
  self->observer_->OnLinkClosed(*self);  // may delete self
}

}  // namespace xdisk
