#include "daemon/imported_disk.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <ctime>

#include "daemon/log.h"

namespace xdisk {

using namespace dmsg;

struct ImportedDisk::Chunk {
  Op* op = nullptr;
  uint64_t seq = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint64_t op_off = 0;  // where this chunk starts inside the Op's data
  Transaction* txn = nullptr;
  bool sent_before = false;
  bool done = false;
  std::list<Chunk*>::iterator pos;
};

struct ImportedDisk::Op {
  OpKind kind;
  uint64_t offset = 0, length = 0;
  const uint8_t* wdata = nullptr;
  std::vector<uint8_t> rbuf;
  ReadFn read_cb;
  DoneFn done_cb;
  size_t remaining = 0;
  int error = 0;
  uint64_t start_ms = 0;
  uint64_t start_ns = 0;  // uv_hrtime(), for the latency histogram
  std::vector<std::unique_ptr<Chunk>> chunks;
  std::list<std::unique_ptr<Op>>::iterator self;
};

namespace {
bool Modifies(int kind) { return kind == 1 || kind == 3; }  // kWrite, kTrim

uint64_t WallClockMs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}
}  // namespace

ImportedDisk::ImportedDisk(uv_loop_t* loop, std::string serial, uint64_t size, uint32_t blksize,
                           Config config)
    : loop_(loop),
      serial_(std::move(serial)),
      log_name_("disk " + serial_),
      size_(size),
      blksize_(blksize),
      config_(config) {
  uv_idle_init(loop_, &kick_);
  uv_timer_init(loop_, &tick_);
  kick_.data = tick_.data = this;
  uv_timer_start(&tick_, OnTick, 1000, 1000);
  // The tick only polls timeouts and retries; it must not keep the loop
  // alive at shutdown on its own.
  uv_unref(reinterpret_cast<uv_handle_t*>(&tick_));
}

ImportedDisk::~ImportedDisk() = default;

// ---- paths ----

const ImportedDisk::Path* ImportedDisk::BestPath() const {
  const Path* best = nullptr;
  for (const Path& p : paths_) {
    if (!p.link->up()) continue;
    if (best == nullptr || p.dist < best->dist) best = &p;
  }
  return best;
}

void ImportedDisk::AddPath(const RemoteSpan& span) {
  paths_.push_back(Path{span.id, span.link, span.txn, span.info.dist});
  UpdateBlocked();
  XLOG(kInfo, log_name_, "path via %s (dist %u)%s", span.link->name().c_str(), span.info.dist,
       paths_.size() == 1 && !chunks_.empty() ? ": resuming blocked I/O" : "");
  Kick();
}

void ImportedDisk::RemovePath(uint64_t span_id) {
  paths_.erase(std::remove_if(paths_.begin(), paths_.end(),
                              [&](const Path& p) { return p.span_id == span_id; }),
               paths_.end());
  if (span_id == active_span_) {
    // The BLK_OPEN under that span was terminated before the span itself
    // (children first), so OnOpenLost() already ran; this is belt and braces.
    if (open_state_ != OpenState::kClosed) OnOpenLost();
  }
  UpdateBlocked();
  if (paths_.empty() && !shut_down_) {
    XLOG(kWarning, log_name_, "no path left: I/O blocks until the disk returns (%zu queued)",
         chunks_.size());
  }
  Kick();
}

// ---- BlockDevice ----

void ImportedDisk::Open(DoneFn done) {
  wanted_open_ = true;
  UpdateBlocked();
  if (open_state_ == OpenState::kOpen) {
    done(0);
    return;
  }
  open_waiters_.push_back(std::move(done));
  EnsureOpen();
}

void ImportedDisk::Close() {
  wanted_open_ = false;
  UpdateBlocked();
  // Closing the BLK_OPEN with chunks still under it would make the server
  // drop them unanswered; Dispatch() closes it once they drained.
  Dispatch();
}

void ImportedDisk::Read(uint64_t offset, uint32_t length, ReadFn done) {
  auto op = std::make_unique<Op>();
  op->kind = OpKind::kRead;
  op->offset = offset;
  op->length = length;
  op->read_cb = std::move(done);
  ++stats_.reads;
  Submit(std::move(op));
}

void ImportedDisk::Write(uint64_t offset, std::span<const uint8_t> data, DoneFn done) {
  auto op = std::make_unique<Op>();
  op->kind = OpKind::kWrite;
  op->offset = offset;
  op->length = data.size();
  op->wdata = data.data();
  op->done_cb = std::move(done);
  ++stats_.writes;
  Submit(std::move(op));
}

void ImportedDisk::Flush(DoneFn done) {
  auto op = std::make_unique<Op>();
  op->kind = OpKind::kFlush;
  op->done_cb = std::move(done);
  ++stats_.flushes;
  Submit(std::move(op));
}

void ImportedDisk::Trim(uint64_t offset, uint64_t length, DoneFn done) {
  auto op = std::make_unique<Op>();
  op->kind = OpKind::kTrim;
  op->offset = offset;
  op->length = length;
  op->done_cb = std::move(done);
  ++stats_.trims;
  Submit(std::move(op));
}

void ImportedDisk::Submit(std::unique_ptr<Op> op) {
  Op* raw = op.get();
  raw->start_ms = uv_now(loop_);
  raw->start_ns = uv_hrtime();
  if (shut_down_) {
    ops_.push_back(std::move(op));
    raw->self = std::prev(ops_.end());
    raw->error = EIO;
    FinishOp(raw);
    return;
  }
  // Split into chunks the remote accepts; a flush is one chunk of no length.
  uint64_t off = 0;
  do {
    auto c = std::make_unique<Chunk>();
    c->op = raw;
    c->seq = next_seq_++;
    c->offset = raw->offset + off;
    c->length = static_cast<uint32_t>(std::min<uint64_t>(kMaxAuxChunkBytes, raw->length - off));
    c->op_off = off;
    off += c->length;
    chunks_.push_back(c.get());
    c->pos = std::prev(chunks_.end());
    raw->chunks.push_back(std::move(c));
  } while (off < raw->length);
  raw->remaining = raw->chunks.size();
  ops_.push_back(std::move(op));
  raw->self = std::prev(ops_.end());
  UpdateBlocked();
  Dispatch();
}

// ---- dispatch ----

bool ImportedDisk::Conflicts(const Chunk& a, const Chunk& b) {
  const int ka = static_cast<int>(a.op->kind), kb = static_cast<int>(b.op->kind);
  if (!Modifies(ka) && !Modifies(kb)) return false;
  if (a.length == 0 || b.length == 0) return false;
  return a.offset < b.offset + b.length && b.offset < a.offset + a.length;
}

void ImportedDisk::Kick() {
  if (kicked_ || shut_down_) return;
  kicked_ = true;
  uv_idle_start(&kick_, OnKick);
}

void ImportedDisk::OnKick(uv_idle_t* h) {
  auto* self = static_cast<ImportedDisk*>(h->data);
  uv_idle_stop(h);
  self->kicked_ = false;
  self->Dispatch();
}

void ImportedDisk::Dispatch() {
  if (shut_down_) return;
  if (!wanted_open_ && chunks_.empty()) {
    if (open_state_ == OpenState::kOpen && open_txn_ != nullptr) {
      // Last release and nothing in flight: close the BLK_OPEN (§7.3 step 6).
      open_link_->Reply(open_txn_, 0, true);
      open_txn_ = nullptr;
      open_link_ = nullptr;
      open_state_ = OpenState::kClosed;
    }
    return;
  }
  if (open_state_ != OpenState::kOpen) {
    EnsureOpen();
    return;
  }
  bool any_modifying_before = false;
  const uint32_t limit = ChunkLimit(*open_link_);
  for (auto it = chunks_.begin(); it != chunks_.end() && inflight_ < kMaxInflight; ++it) {
    if ((*it)->txn == nullptr && (*it)->length > limit) SplitChunk(it, limit);
    Chunk* c = *it;
    const bool mod = Modifies(static_cast<int>(c->op->kind));
    if (c->txn == nullptr) {
      bool blocked = false;
      // Only scan the earlier chunks when a conflict is possible at all.
      if (mod || any_modifying_before) {
        for (auto jt = chunks_.begin(); jt != it; ++jt) {
          if (Conflicts(**jt, *c)) {
            blocked = true;
            break;
          }
        }
      }
      if (!blocked) {
        SendChunk(c);
        if (open_state_ != OpenState::kOpen) return;  // the link went away
      }
    }
    any_modifying_before |= mod;
  }
}

uint32_t ImportedDisk::ChunkLimit(const Link& link) {
  const std::string& label = link.peer_conn().peer_label;
  static constexpr std::string_view kOurs = "/xdisk-fuse";
  if (label.size() > kOurs.size() && label.ends_with(kOurs)) return kMaxAuxChunkBytes;
  return kMaxChunkBytes;
}

void ImportedDisk::SplitChunk(std::list<Chunk*>::iterator it, uint32_t limit) {
  // Chunks are cut lazily, once the path is known: the pieces take the
  // chunk's place in the queue, so the order of the data does not change.
  Chunk* c = *it;
  Op* op = c->op;
  auto next = std::next(it);
  uint64_t off = limit;
  while (off < c->length) {
    auto piece = std::make_unique<Chunk>();
    piece->op = op;
    piece->seq = c->seq;
    piece->offset = c->offset + off;
    piece->length = std::min<uint64_t>(limit, c->length - off);
    piece->op_off = c->op_off + off;
    piece->pos = chunks_.insert(next, piece.get());
    off += piece->length;
    op->chunks.push_back(std::move(piece));
    ++op->remaining;
  }
  c->length = limit;
}

void ImportedDisk::EnsureOpen() {
  if (shut_down_ || open_state_ != OpenState::kClosed) return;
  if (!wanted_open_ && chunks_.empty()) return;
  if (uv_now(loop_) < retry_at_ms_) return;  // the tick retries
  const Path* p = BestPath();
  if (p == nullptr) return;  // blocked until a path appears
  BlkOpen o;
  o.modes = kBlkModeRead | kBlkModeWrite;
  std::vector<uint8_t> ext = o.Encode();
  Transaction* t = p->link->Open(kBlkOpen, p->span_txn, this, ext);
  if (t == nullptr) return;
  open_txn_ = t;
  open_link_ = p->link;
  active_span_ = p->span_id;
  open_state_ = OpenState::kOpening;
  XLOG(kDebug, log_name_, "BLK_OPEN via %s", p->link->name().c_str());
}

void ImportedDisk::SendChunk(Chunk* c) {
  static constexpr uint32_t kCmds[] = {kBlkRead, kBlkWrite, kBlkFlush, kBlkFreeblks};
  Op* op = c->op;
  BlkIo io;
  io.offset = op->kind == OpKind::kFlush ? 0 : c->offset;
  io.bytes = c->length;
  std::vector<uint8_t> ext = io.Encode();
  std::span<const uint8_t> aux;
  if (op->kind == OpKind::kWrite) aux = {op->wdata + c->op_off, c->length};
  Transaction* t =
      open_link_->Open(kCmds[static_cast<int>(op->kind)], open_txn_, this, ext, aux, kFlagDelete);
  if (t == nullptr) {
    OnOpenLost();
    return;
  }
  t->user = c;
  c->txn = t;
  ++inflight_;
  if (c->sent_before) ++stats_.resent;
  c->sent_before = true;
}

// ---- replies ----

void ImportedDisk::OnMessage(Link&, Transaction& t, Frame& f) {
  const uint32_t cmd = f.hdr.cmd;
  if (&t == open_txn_) {
    if ((cmd & kFlagCreate) && open_state_ == OpenState::kOpening) OnOpenReply(f);
    if ((cmd & kFlagDelete) && &t == open_txn_) OnOpenLost();
    return;
  }
  auto* c = static_cast<Chunk*>(t.user);
  if (c == nullptr || !(cmd & kFlagDelete)) return;  // only the final reply counts
  t.user = nullptr;
  c->txn = nullptr;
  --inflight_;
  const uint32_t err = f.hdr.error;
  if (err == 0) {
    ChunkDone(c, 0, &f);
    Dispatch();
    return;
  }
  if ((err == kErrLostLink || err == kErrCantCirc) && !shut_down_) {
    // The path died under this chunk: it stays queued in its original
    // position and goes out again once the disk is open on a path.
    XLOG(kDebug, log_name_, "chunk %" PRIu64 "+%u requeued (%s)", c->offset, c->length,
         ErrorName(err).c_str());
    Kick();
    return;
  }
  XLOG(kWarning, log_name_, "%s at %" PRIu64 "+%u failed: %s",
       c->op->kind == OpKind::kRead    ? "read"
       : c->op->kind == OpKind::kWrite ? "write"
                                       : "request",
       c->offset, c->length, ErrorName(err).c_str());
  ChunkDone(c, EIO, nullptr);
  Dispatch();
}

void ImportedDisk::OnFreed(Link&, Transaction& t) {
  if (&t == open_txn_) {
    open_txn_ = nullptr;
    open_link_ = nullptr;
    open_state_ = OpenState::kClosed;
    Kick();
  }
  auto* c = static_cast<Chunk*>(t.user);
  if (c != nullptr) {
    // Freed without a final reply reaching us (cannot happen through the
    // link, which always delivers LOSTLINK first); requeue to be safe.
    c->txn = nullptr;
    t.user = nullptr;
    --inflight_;
    Kick();
  }
}

void ImportedDisk::OnOpenReply(const Frame& f) {
  if (f.hdr.error == 0) {
    if (stats_.reopens++ > 0 || !chunks_.empty())
      XLOG(kInfo, log_name_, "open via %s, %zu requests to (re)send", open_link_->name().c_str(),
           chunks_.size());
    open_state_ = OpenState::kOpen;
    FinishOpenWaiters(0);
    Dispatch();
    return;
  }
  if (f.hdr.error == kErrLostLink) return;  // the DELETE path handles it
  XLOG(kWarning, log_name_, "BLK_OPEN refused: %s; retrying in %" PRIu64 " ms",
       ErrorName(f.hdr.error).c_str(), config_.retry_delay_ms);
  Transaction* t = open_txn_;
  Link* l = open_link_;
  open_txn_ = nullptr;
  open_link_ = nullptr;
  open_state_ = OpenState::kClosed;
  if (!(f.hdr.cmd & kFlagDelete)) l->Reply(t, 0, true);
  retry_at_ms_ = uv_now(loop_) + config_.retry_delay_ms;
  // An open(2) waiting for this fails, as on DragonFly (§7.6).
  if (!open_waiters_.empty()) wanted_open_ = false;
  FinishOpenWaiters(EIO);
}

void ImportedDisk::FinishOpenWaiters(int err) {
  // Moved out first: a waiter may call Open() again.
  auto waiters = std::move(open_waiters_);
  open_waiters_.clear();
  for (auto& w : waiters) w(err);
}

void ImportedDisk::OnOpenLost() {
  if (open_state_ == OpenState::kClosed && open_txn_ == nullptr) return;
  XLOG(kInfo, log_name_, "open lost on %s (%zu requests wait for the next open)",
       open_link_ ? open_link_->name().c_str() : "?", chunks_.size());
  open_txn_ = nullptr;
  open_link_ = nullptr;
  open_state_ = OpenState::kClosed;
  Kick();
}

void ImportedDisk::ChunkDone(Chunk* c, int err, Frame* f) {
  Op* op = c->op;
  if (err == 0 && op->kind == OpKind::kRead && f != nullptr) {
    if (op->chunks.size() == 1 && f->aux.size() >= c->length) {
      // The common case: one chunk carries the whole read. Take its buffer.
      op->rbuf = std::move(f->aux);
      op->rbuf.resize(c->length);
    } else {
      // Short or absent data reads as zeros (§7.4).
      if (op->rbuf.empty()) op->rbuf.assign(op->length, 0);
      size_t n = std::min<size_t>(f->aux.size(), c->length);
      memcpy(op->rbuf.data() + c->op_off, f->aux.data(), n);
    }
  }
  chunks_.erase(c->pos);
  c->done = true;
  if (err != 0 && op->error == 0) op->error = err;
  if (--op->remaining == 0) FinishOp(op);
}

void ImportedDisk::FinishOp(Op* op) {
  std::unique_ptr<Op> owned = std::move(*op->self);
  ops_.erase(op->self);
  if (owned->error == 0) {
    const int k = static_cast<int>(owned->kind);
    stats_.latency[k].Record((uv_hrtime() - owned->start_ns) / 1000);
    if (owned->kind == OpKind::kRead) stats_.read_bytes += owned->length;
    if (owned->kind == OpKind::kWrite) stats_.write_bytes += owned->length;
    if (owned->kind == OpKind::kTrim) stats_.trim_bytes += owned->length;
  } else {
    ++stats_.errors;
  }
  UpdateBlocked();
  if (owned->kind == OpKind::kRead) {
    if (owned->error == 0 && owned->rbuf.size() != owned->length)
      owned->rbuf.assign(owned->length, 0);
    owned->read_cb(owned->error, owned->error ? std::span<const uint8_t>()
                                              : std::span<const uint8_t>(owned->rbuf));
  } else {
    owned->done_cb(owned->error);
  }
}

// ---- timeouts and shutdown ----

void ImportedDisk::OnTick(uv_timer_t* h) {
  auto* self = static_cast<ImportedDisk*>(h->data);
  self->CheckTimeouts();
  if (self->open_state_ == OpenState::kClosed) self->Dispatch();
}

void ImportedDisk::CheckTimeouts() {
  if (config_.io_timeout_ms == 0) return;
  const uint64_t now = uv_now(loop_);
  std::vector<Op*> expired;
  for (auto& op : ops_) {
    if (now - op->start_ms < config_.io_timeout_ms) continue;
    bool on_wire = false;
    for (auto& c : op->chunks) on_wire |= (c->txn != nullptr);
    if (!on_wire) expired.push_back(op.get());
  }
  for (Op* op : expired) {
    // A callback of an earlier expired Op may have dispatched (and so put
    // on the wire) chunks of this one, or finished it: check again.
    bool still_queued =
        std::any_of(ops_.begin(), ops_.end(), [&](auto& o) { return o.get() == op; });
    if (!still_queued) continue;
    bool on_wire = false;
    for (auto& c : op->chunks) on_wire |= (c->txn != nullptr);
    if (on_wire) continue;
    XLOG(kWarning, log_name_,
         "I/O at %" PRIu64 "+%" PRIu64 " failed: blocked for over %" PRIu64 " s", op->offset,
         op->length, config_.io_timeout_ms / 1000);
    std::vector<Chunk*> pending;
    for (auto& c : op->chunks)
      if (!c->done) pending.push_back(c.get());
    for (Chunk* c : pending) ChunkDone(c, EIO, nullptr);
  }
  if (!paths_.empty() || open_waiters_.empty()) return;
  wanted_open_ = false;
  FinishOpenWaiters(EIO);
}

void ImportedDisk::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  std::vector<Chunk*> queued;
  for (Chunk* c : chunks_)
    if (c->txn == nullptr) queued.push_back(c);
  for (Chunk* c : queued) ChunkDone(c, EIO, nullptr);
  FinishOpenWaiters(EIO);
  if (open_txn_ != nullptr && open_link_ != nullptr) open_link_->Reply(open_txn_, 0, true);
  uv_close(reinterpret_cast<uv_handle_t*>(&kick_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
}

ImportedDisk::State ImportedDisk::state() const {
  if (!paths_.empty()) return State::kOnline;
  return (wanted_open_ || !chunks_.empty()) ? State::kBlocked : State::kOffline;
}

void ImportedDisk::UpdateBlocked() {
  const bool blocked = state() == State::kBlocked;
  if (blocked && stats_.blocked_since_ms == 0) stats_.blocked_since_ms = WallClockMs();
  if (!blocked) stats_.blocked_since_ms = 0;
}

std::vector<ImportedDisk::PathInfo> ImportedDisk::paths() const {
  std::vector<PathInfo> out;
  for (const Path& p : paths_)
    out.push_back(PathInfo{p.link->name(), p.dist,
                           open_state_ != OpenState::kClosed && p.span_id == active_span_});
  return out;
}

ImportedDisk::Stats ImportedDisk::stats() const {
  Stats s = stats_;
  s.inflight = inflight_;
  s.queued = chunks_.size() - inflight_;
  return s;
}

}  // namespace xdisk
