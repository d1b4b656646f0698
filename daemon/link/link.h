// Link: one dmsg connection over TCP (spec §1.3, §3, §5, §6).
//
// A Link owns its uv_tcp_t and its liveness timer. It frames and checks
// every received byte (proto/frame_decoder.h), keeps the transaction tables
// (daemon/link/transactions.h), performs the LNK_CONN exchange, answers PINGs,
// sends its own PING after `ping_interval_ms` without sending anything (also
// while the peer talks: the peer times us out by what it hears from us) and
// drops the link after `dead_timeout_ms` without receiving anything. Anything malformed
// drops this link only, with a logged reason. On loss, every open
// transaction gets a synthesised LOSTLINK termination before the observer
// hears OnLinkDown, so upper layers see one uniform event.
//
// States (docs/link-states.md):
//   kConnecting -> [kCrypto ->] kHandshake -> kUp -> kClosing -> kClosed
// kCrypto: only on an encrypted link (SetKeys): our 512-byte RSA handshake
// is sent and the peer's is awaited, or the TLS 1.3 handshake runs
// (docs/link-crypto.md); every byte after it, both ways, goes through the
// AES-256-GCM stream or TLS records.
// kHandshake: our LNK_CONN is sent; kUp: we received the peer's LNK_CONN and
// the peer acknowledged ours. Spans flow only in kUp.
//
// Threading: loop thread only. Lifetime: created and owned by LinkTable;
// after Close() the handles close asynchronously and the observer's
// OnLinkClosed() runs last, from the close callback, after which the owner
// may delete the Link (nothing touches it afterwards).
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "daemon/base/uv_handle.h"
#include "daemon/link/link_keys.h"
#include "daemon/link/link_timing.h"
#include "daemon/link/spare_buffer.h"
#include "daemon/link/transactions.h"
#include "proto/dmsg.h"
#include "proto/frame_decoder.h"
#include "proto/tls_stream.h"

namespace xdisk {

class Link;

// What the owner of links hears. All calls on the loop thread.
class LinkObserver {
 public:
  virtual ~LinkObserver() = default;
  // The LNK_CONN exchange completed: spans may be sent now.
  virtual void OnLinkUp(Link& link) = 0;
  // The peer opened a top-level transaction other than LNK_CONN (a
  // LNK_SPAN). Return its handler, or nullptr to answer NOSUPP.
  virtual TransactionHandler* OnTopLevelCreate(Link& link, Transaction& t,
                                               const dmsg::Frame& f) = 0;
  // The link failed or was closed; every transaction has already been
  // terminated with LOSTLINK. Called once. Sends are discarded from now on.
  virtual void OnLinkDown(Link& link, const std::string& reason) = 0;
  // The handles are closed; the owner may delete the link now.
  virtual void OnLinkClosed(Link& link) = 0;
};

struct LinkConfig {
  std::string label;     // our LNK_CONN peer_label, "<host>/xdisk-fuse"
  dmsg::Uuid peer_id{};  // our host uuid
  uint8_t peer_type = dmsg::kPeerRouter;
  uint64_t peer_mask = ~0ull;
  uint64_t ping_interval_ms = 1000;  // PING after sending nothing for this long
  // Drop after this much silence. Also the handshake timeout: the RSA
  // handshake and the LNK_CONN exchange must be done within it (DragonFly
  // has no such limit; a silent or trickling peer must not hold a link).
  uint64_t dead_timeout_ms = 10000;
};

class Link : public TransactionHandler {
 public:
  enum class State { kConnecting, kCrypto, kHandshake, kUp, kClosing, kClosed };
  enum class Direction { kIncoming, kOutgoing };

  // Creates a link with an initialised, unconnected TCP handle. The caller
  // accepts into tcp() or connects it, then calls Start().
  Link(uv_loop_t* loop, LinkObserver* observer, const LinkConfig& config, Direction dir,
       std::string peer_name);
  ~Link() override;
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  // Initialises the handles; returns a negative libuv error on failure (then
  // call Close()).
  int Init();
  uv_tcp_t* tcp() { return tcp_.get(); }

  // Names the peer once it is known (accepted sockets). Before Start().
  void SetPeerName(const std::string& peer) {
    peer_ = peer;
    name_ = "link " + peer;
  }

  // Makes this an encrypted link with `keys` (daemon/link/link_keys.h). Before
  // Start(); without it the link is plaintext.
  void SetKeys(std::shared_ptr<const LinkKeys> keys) { keys_ = std::move(keys); }

  // Sets socket options, starts reading and sends our LNK_CONN (on an
  // encrypted link: our handshake first, LNK_CONN once the peer's verified).
  void Start();

  // Terminates everything stacked under `t` locally with LOSTLINK (§5.3),
  // as if the peer had closed `t`. Used before we DELETE a parent whose
  // children the peer will consider gone: nothing more is sent on them.
  void TerminateChildren(Transaction* t);

  // Drops the link: LOSTLINK for everything, OnLinkDown, close handles.
  // Safe to call more than once and from inside handler callbacks (then it
  // takes effect when the current frame's dispatch returns).
  void Close(const std::string& reason);
  // Like Close() but first flushes what is queued for sending (bounded by a
  // short timer); used at shutdown after DELETEs were sent.
  void CloseGracefully(const std::string& reason);

  // ---- sending (all no-ops returning false/nullptr unless the link is up
  // or in handshake) ----

  // Opens a transaction in table L under `parent` (nullptr = top level) and
  // sends its first message. `flags` may include DELETE (a one-message
  // request). Returns nullptr if the link is not usable. The link copies
  // `aux` unless `aux_hold` is set: then `aux` must stay valid while the
  // hold lives, and the link keeps a copy of the hold until the bytes are
  // written or dropped.
  Transaction* Open(uint32_t base_cmd, Transaction* parent, TransactionHandler* handler,
                    std::span<const uint8_t> ext, std::span<const uint8_t> aux = {},
                    uint32_t flags = 0, std::shared_ptr<const void> aux_hold = nullptr);
  // Sends a message on `t`; CREATE/REPLY/REVTRANS/REVCIRC are computed.
  // Returns false if it was discarded (link down, t dying or closed).
  bool Send(Transaction* t, uint32_t base_cmd, uint32_t flags, std::span<const uint8_t> ext,
            std::span<const uint8_t> aux = {}, uint32_t error = 0);
  // Same, taking ownership of the aux buffer (no copy).
  bool SendOwned(Transaction* t, uint32_t base_cmd, uint32_t flags, std::span<const uint8_t> ext,
                 dmsg::ByteBuffer&& aux, uint32_t error = 0);
  // LNK_ERROR on `t` with `error`; `close` adds DELETE.
  bool Reply(Transaction* t, uint32_t error, bool close) {
    return Send(t, dmsg::kLnkError, close ? dmsg::kFlagDelete : 0, {}, {}, error);
  }

  // Backpressure: stop or resume reading from the socket. Each owner of a
  // pause passes its own reason bit; reading resumes once no reason holds.
  static constexpr uint32_t kPauseDisk = 1;   // the exporter's I/O budget
  static constexpr uint32_t kPauseRelay = 2;  // a relay target's write queue (daemon/link/relay.h)
  void SetReadPaused(bool paused, uint32_t reason = kPauseDisk);

  // The relay's forwarding (daemon/link/relay.h): `f` is a message received on
  // another link, sent on `t` (or on a new transaction of ours under
  // `parent`) with its base command, DELETE and ABORT, error, extended
  // header bytes, reserved02 and the 0x18 field as received; CREATE, REPLY
  // and the direction bits are this link's own. f.aux is moved, not copied.
  // OpenRelayed returns nullptr, leaving nothing open, if the link or
  // `parent` is closing or the message could not be queued; SendRelayed
  // false if the message was discarded.
  Transaction* OpenRelayed(Transaction* parent, TransactionHandler* handler, dmsg::Frame& f);
  bool SendRelayed(Transaction* t, dmsg::Frame& f);

  // Write-side backpressure for the relay (daemon/link/relay.h). Arms a one-shot
  // watch on this link's unwritten bytes (write_queue_bytes()): `cb` runs
  // once, with kDrained as soon as they are at most `low_bytes` (at once if
  // they are already), or with kStalled if the peer took not one byte from
  // us for the link's dead_timeout_ms while the watch was armed and bytes
  // were waiting. A new call replaces the armed watch; Close() disarms it.
  // `cb` runs from the link's own timer, never from inside Open(), Send(),
  // Reply() or a handler, however the queue drained (a write completion, a
  // synchronous flush, the link's uncork), so it may send, pause links, or
  // Close() this link.
  enum class DrainEvent { kDrained, kStalled };
  using DrainCallback = std::function<void(Link&, DrainEvent)>;
  void NotifyWhenDrained(size_t low_bytes, DrainCallback cb);
  bool drain_watched() const { return drain_cb_ != nullptr; }

  State state() const { return state_; }
  bool up() const { return state_ == State::kUp; }
  Direction direction() const { return dir_; }
  const std::string& name() const { return name_; }  // "link 127.0.0.1:987"
  const std::string& peer() const { return peer_; }  // "127.0.0.1:987"
  // The peer's LNK_CONN (valid once up).
  const dmsg::LnkConn& peer_conn() const { return peer_conn_; }
  // Bytes handed to us to send that the kernel has not taken yet: the queue
  // plus what is left of the write in flight (partial writes count).
  size_t write_queue_bytes() const;
  // Encrypted links: the capacity their write buffers keep between writes
  // (grown by a burst, given back after a second without a write; see
  // SpareBuffer). Read by tests and diagnostics only.
  size_t write_buffer_capacity() const {
    return spare_sealed_.capacity() + tls_staged_.capacity();
  }
  uint64_t bytes_in() const { return bytes_in_; }
  uint64_t bytes_out() const { return bytes_out_; }
  uint64_t up_since_ms() const { return up_since_ms_; }
  // "plaintext", "dragonfly-gcm-a", "dragonfly-gcm-b", "tls1.3", or
  // "tls1.3+ktls" once the kernel protects the records both ways
  // ("tls1.3+ktls-tx"/"tls1.3+ktls-rx" if it took only one direction).
  const char* encryption() const;
  bool encrypted() const { return keys_ != nullptr; }
  // The peer's handshake verified (always false on a plaintext link): a
  // link that closes without it was refused, not lost.
  bool authenticated() const {
    return opener_ != nullptr || (tls_ != nullptr && tls_->handshake_done());
  }
  // The link closed as a refusal of the peer: its handshake failed (our
  // handshake was sent, the peer's never verified), or on a plaintext link
  // the peer's first bytes looked like an encrypted handshake. The owner
  // logs refusals; the link logs them at debug level only.
  bool refused() const { return (handshake_started_ && !authenticated()) || plaintext_mismatch_; }
  TransactionTable& transactions() { return txns_; }

  // TransactionHandler for our and the peer's LNK_CONN transactions.
  void OnMessage(Link& link, Transaction& t, dmsg::Frame& f) override;

 private:
  struct OutMsg {
    std::vector<uint8_t> header;
    dmsg::ByteBuffer aux_owned;
    std::shared_ptr<const void> aux_hold;  // or: keeps the caller's aux alive
    std::span<const uint8_t> aux;          // into aux_owned or held memory
    size_t pad = 0;
    bool raw = false;  // `header` is already wire bytes (a handshake): never sealed
  };
  struct WriteReq;

  static void OnAlloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void OnRead(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);
  static void OnWrite(uv_write_t* req, int status);
  static void OnTimer(uv_timer_t* t);
  // The timer's view of this link for CheckLiveness (daemon/link/link_timing.h).
  LivenessInput LivenessNow(uint64_t now) const;
  // Ends a cork (FlushWrites) before the loop waits and after its poll
  // callbacks, whichever comes first.
  static void OnUncorkPrepare(uv_prepare_t* h);
  static void OnUncorkCheck(uv_check_t* h);
  void Uncork();
  // A write failed: the link fails from the timer (FlushWrites writes
  // nothing more meanwhile).
  void FailOnWriteError(int rc);
  static void OnClose(void* link);
  // Runs the timer at once (a pending close, a half-close, buffered
  // frames), unless the handles are closed already.
  void Wake();

  // The RSA handshake or TLS (daemon/link/link_handshake.cc).
  void StartHandshake();
  void OnHandshakeBytes(size_t n);
  void StartTls();
  void OnTlsBytes(size_t n);
  // kTLS (daemon/link/link_ktls.h): once TLS is done, hands each direction to
  // the kernel as soon as it may be: receiving at a record boundary,
  // sending when every byte sealed in user space has been written and no
  // handshake bytes are queued. Called from the read and write paths while
  // ktls_pending_; gives up (keeping user-space TLS) on any failure.
  void MaybeOffload();
  // Queues bytes that go out as they are, before anything queued later.
  void SendRaw(std::vector<uint8_t> bytes);
  // Encrypts plaintext for the wire with the sealer or TLS.
  Status SealBytes(std::span<const uint8_t> plain, std::vector<uint8_t>* wire);
  // Decrypts `n` wire bytes from rx_wire_ into the frame decoder.
  bool OpenReceived(size_t n);

  void DecodeAvailable();
  void Dispatch(dmsg::Frame& f);
  void HandleOneWay(const dmsg::Frame& f);
  void HandleNew(Transaction* t, dmsg::Frame& f);
  void Deliver(Transaction* t, dmsg::Frame& f);
  void AfterDelivery(Transaction* t);
  void Terminate(Transaction* t);
  // Send() and SendOwned(): `owned`, when set, holds the bytes of `aux` and
  // is taken instead of copied.
  bool SendOn(Transaction* t, uint32_t base_cmd, uint32_t flags, std::span<const uint8_t> ext,
              std::span<const uint8_t> aux, dmsg::ByteBuffer* owned, uint32_t error);
  // Frees `t` (OnFreed first) once DELETE went both ways and no delivery to
  // it is running.
  void FreeIfClosed(Transaction* t);
  void SendConn();
  void SendOneWay(uint32_t cmd);
  // `aux_crc`, when given, is the aux's CRC already known (a relayed frame).
  bool Enqueue(dmsg::Header h, std::span<const uint8_t> ext, std::span<const uint8_t> aux,
               dmsg::ByteBuffer* owned, std::shared_ptr<const void> aux_hold = nullptr,
               const uint32_t* aux_crc = nullptr);
  // Writes what is queued: at once when nothing is on its way, then corks
  // (`may_cork`) so that what the rest of this loop turn queues goes out
  // together, in one writev, when Uncork() runs.
  void FlushWrites(bool may_cork = true);
  void HalfClose();
  void MaybeUp();
  void Fail(const std::string& reason);
  void CloseHandles();

  uv_loop_t* loop_;
  LinkObserver* observer_;
  LinkConfig config_;
  Direction dir_;
  std::string peer_;
  std::string name_;
  State state_ = State::kConnecting;
  UvHandle<uv_tcp_t> tcp_;
  UvHandle<uv_timer_t> timer_;
  UvHandle<uv_prepare_t> uncork_prepare_;
  UvHandle<uv_check_t> uncork_check_;
  bool corked_ = false;
  int open_handles_ = 0;

  // Encryption (all null/empty on a plaintext link).
  std::shared_ptr<const LinkKeys> keys_;
  std::unique_ptr<dfcrypto::StreamSealer> sealer_;
  std::unique_ptr<dfcrypto::StreamOpener> opener_;
  std::unique_ptr<dfcrypto::TlsStream> tls_;  // a .tls13 peer: instead of both
  bool ktls_pending_ = false;  // TLS is done and a direction may still go to the kernel
  bool ktls_attached_ = false;
  bool ktls_tx_ = false, ktls_rx_ = false;  // the kernel protects that direction
  dfcrypto::HandshakeBlock own_block_{};
  dfcrypto::HandshakeBlock hs_rx_{};  // the peer's handshake as it arrives
  size_t hs_rx_len_ = 0;
  bool handshake_started_ = false;
  bool plaintext_mismatch_ = false;
  std::vector<uint8_t> rx_wire_;  // socket reads, before decryption
  // Reused by FlushWrites on TLS and GCM links: the plaintext of a batch's
  // small messages (TLS), and the sealed bytes of the last finished write.
  // Trimmed once the link is quiet (OnTimer).
  SpareBuffer tls_staged_, spare_sealed_;
  std::vector<uint8_t> rx_plain_;
  uint64_t started_ms_ = 0;

  dmsg::FrameDecoder decoder_;
  TransactionTable txns_;
  uint32_t tx_seq_ = 0;
  Transaction* our_conn_ = nullptr;
  Transaction* peer_conn_txn_ = nullptr;
  bool conn_acked_ = false;
  bool conn_received_ = false;
  dmsg::LnkConn peer_conn_;

  bool read_paused_ = false;
  uint32_t pause_reasons_ = 0;
  // NotifyWhenDrained: the armed watch, whether the timer should look at
  // it now, and the write progress that tells a stalled peer from a slow one.
  DrainCallback drain_cb_;
  size_t drain_low_ = 0;
  bool drain_due_ = false;
  uint64_t written_mark_ = 0;       // bytes the kernel took, as of write_progress_ms_
  uint64_t write_progress_ms_ = 0;  // when the kernel last took bytes (or the watch was armed)
  // After bytes left the queue: wakes the timer if the watch may fire.
  void CheckDrain();
  // From the timer: fires the watch if due; true if it ran (the callback
  // may have closed the link).
  bool FireDrain(uint64_t now);
  bool reading_ = false;
  int dispatch_depth_ = 0;
  std::string pending_close_;
  bool graceful_ = false;
  bool shutdown_sent_ = false;
  uv_shutdown_t shutdown_req_;
  std::string graceful_reason_;

  std::deque<OutMsg> queue_;
  size_t queued_bytes_ = 0;
  size_t inflight_bytes_ = 0;
  bool write_inflight_ = false;

  uint64_t last_rx_ms_ = 0;
  uint64_t last_tx_ms_ = 0;
  uint64_t up_since_ms_ = 0;
  uint64_t bytes_in_ = 0, bytes_out_ = 0;
};

}  // namespace xdisk
