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
  BufferHold whold;  // keeps wdata alive for the link (empty: the link copies)
  dmsg::ByteBuffer rbuf;
  ReadFn read_cb;
  DoneFn done_cb;
  size_t remaining = 0;
  int error = 0;
  uint64_t start_ms = 0;
  uint64_t start_ns = 0;  // uv_hrtime(), for the latency histogram
  std::vector<std::unique_ptr<Chunk>> chunks;
  std::list<std::unique_ptr<Op>>::iterator self;
  // Journal: the record's seq (0: not journaled); background Ops carry a
  // journal record to the remote, own their data and answer nobody.
  uint64_t jseq = 0;
  bool background = false;
  // Partly covered read (write-back): the journal's bytes for it, taken
  // when it was submitted, laid over the remote's reply.
  std::vector<uint8_t> snap;
  std::vector<std::pair<uint64_t, uint64_t>> snap_ranges;
  uint64_t flush_target = 0;  // background flush: retire up to this
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
  if (open_state_ == OpenState::kOpen || writeback()) {
    // Write-back disks work without their remote: open(2) succeeds now.
    done(0);
    EnsureOpen();
    return;
  }
  if (open_waiters_.empty()) open_wait_since_ms_ = uv_now(loop_);
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
  ++stats_.reads;
  if (!Aligned(offset, length)) {
    // The covering blocks; the caller gets the middle.
    const uint64_t start = offset - offset % blksize_;
    const uint64_t end = std::min(size_, (offset + length + blksize_ - 1) / blksize_ * blksize_);
    done = [done = std::move(done), skip = offset - start, length](int err,
                                                                   std::span<const uint8_t> d) {
      if (err != 0 || d.size() < skip + length) return done(err != 0 ? err : EIO, {});
      done(0, d.subspan(skip, length));
    };
    offset = start;
    length = static_cast<uint32_t>(end - start);
  }
  if (MustHold(OpKind::kRead)) {
    auto cb = std::make_shared<ReadFn>(std::move(done));
    Hold(
        OpKind::kRead, [this, offset, length, cb] { DoRead(offset, length, std::move(*cb)); },
        [cb](int err) { (*cb)(err, {}); });
    return;
  }
  DoRead(offset, length, std::move(done));
}

void ImportedDisk::Write(uint64_t offset, std::span<const uint8_t> data, BufferHold hold,
                         DoneFn done) {
  ++stats_.writes;
  if (MustHold(OpKind::kWrite))
    return HoldDone(OpKind::kWrite, std::move(done), [this, offset, data, hold](DoneFn d) {
      WriteNow(offset, data, hold, std::move(d));
    });
  WriteNow(offset, data, std::move(hold), std::move(done));
}

void ImportedDisk::WriteNow(uint64_t offset, std::span<const uint8_t> data, BufferHold hold,
                            DoneFn done) {
  if (Aligned(offset, data.size())) return DoWrite(offset, data, std::move(hold), std::move(done));
  StartReadModifyWrite(offset, data, std::move(hold), std::move(done));
}

void ImportedDisk::StartReadModifyWrite(uint64_t offset, std::span<const uint8_t> data,
                                        BufferHold hold, DoneFn done) {
  const uint64_t start = offset - offset % blksize_;
  const uint64_t end = std::min(size_, (offset + data.size() + blksize_ - 1) / blksize_ * blksize_);
  auto whole = std::make_shared<std::vector<uint8_t>>(end - start);
  // The edge blocks the write covers only partly (one block may be both).
  std::vector<uint64_t> edges;
  if (offset % blksize_ != 0) edges.push_back(start);
  if ((offset + data.size()) % blksize_ != 0 && (edges.empty() || end - blksize_ != start))
    edges.push_back(end - blksize_);
  rmw_active_ = true;
  struct State {
    size_t pending;
    int err = 0;
  };
  auto st = std::make_shared<State>(State{edges.size()});
  auto finish = [this, st, whole, start, offset, data, hold, done = std::move(done)]() mutable {
    if (st->err == 0) {
      memcpy(whole->data() + (offset - start), data.data(), data.size());
      std::span<const uint8_t> bytes(*whole);
      // Queued before anything that waited for it (held_ is released after);
      // held itself only if the journal fails right now, and then first.
      rmw_writing_ = true;
      DoWrite(start, bytes, BufferHold(whole), std::move(done));
      rmw_writing_ = false;
    } else {
      ++stats_.errors;
      done(st->err);
    }
    rmw_active_ = false;
    Kick();  // the held requests go on, in order
  };
  auto shared_finish = std::make_shared<decltype(finish)>(std::move(finish));
  for (uint64_t e : edges) {
    DoRead(e, blksize_,
           [this, st, whole, start, e, shared_finish](int err, std::span<const uint8_t> d) {
             if (err == 0 && d.size() == blksize_)
               memcpy(whole->data() + (e - start), d.data(), blksize_);
             else if (st->err == 0)
               st->err = err != 0 ? err : EIO;
             if (--st->pending == 0) (*shared_finish)();
           });
  }
}

void ImportedDisk::Flush(DoneFn done) {
  ++stats_.flushes;
  if (MustHold(OpKind::kFlush))
    return HoldDone(OpKind::kFlush, std::move(done), [this](DoneFn d) { DoFlush(std::move(d)); });
  DoFlush(std::move(done));
}

void ImportedDisk::Trim(uint64_t offset, uint64_t length, DoneFn done) {
  ++stats_.trims;
  if (!Aligned(offset, length)) return TrimUnaligned(offset, length, std::move(done));
  if (MustHold(OpKind::kTrim))
    return HoldDone(OpKind::kTrim, std::move(done),
                    [this, offset, length](DoneFn d) { DoTrim(offset, length, std::move(d)); });
  DoTrim(offset, length, std::move(done));
}

void ImportedDisk::TrimUnaligned(uint64_t offset, uint64_t length, DoneFn done) {
  // Whole blocks inside the range are trimmed; the partial blocks at its
  // edges get zeros, written like any unaligned write. The parts go through
  // the public entry points in order, so they keep their place among the
  // other requests.
  const uint64_t inner_start = (offset + blksize_ - 1) / blksize_ * blksize_;
  const uint64_t inner_end = (offset + length) / blksize_ * blksize_;
  struct Part {
    uint64_t off, len;
    bool zeros;
  };
  std::vector<Part> parts;
  if (inner_start >= inner_end) {
    parts.push_back({offset, length, true});  // no whole block inside
  } else {
    if (inner_start > offset) parts.push_back({offset, inner_start - offset, true});
    parts.push_back({inner_start, inner_end - inner_start, false});
    if (offset + length > inner_end)
      parts.push_back({inner_end, offset + length - inner_end, true});
  }
  auto zeros = std::make_shared<std::vector<uint8_t>>(2 * blksize_, 0);  // parts are shorter
  auto left = std::make_shared<size_t>(parts.size());
  auto first_err = std::make_shared<int>(0);
  auto cb = std::make_shared<DoneFn>(std::move(done));
  auto part_done = [left, first_err, cb](int err) {
    if (err != 0 && *first_err == 0) *first_err = err;
    if (--*left == 0) (*cb)(*first_err);
  };
  for (const Part& p : parts) {
    if (p.zeros) {
      --stats_.writes;  // counted as the trim it is part of
      Write(p.off, std::span<const uint8_t>(zeros->data(), p.len), BufferHold(zeros), part_done);
    } else {
      --stats_.trims;
      Trim(p.off, p.len, part_done);
    }
  }
}

void ImportedDisk::HoldDone(OpKind kind, DoneFn done, std::function<void(DoneFn)> run) {
  auto cb = std::make_shared<DoneFn>(std::move(done));
  Hold(
      kind, [cb, run = std::move(run)] { run(std::move(*cb)); }, [cb](int err) { (*cb)(err); });
}

void ImportedDisk::DoRead(uint64_t offset, uint32_t length, ReadFn done) {
  auto op = std::make_unique<Op>();
  op->kind = OpKind::kRead;
  op->offset = offset;
  op->length = length;
  op->read_cb = std::move(done);
  if (writeback() && !shut_down_) {
    const uint64_t covered = journal_->Covered(offset, length);
    if (covered == length) {
      // Every byte is pending in the journal: answer from it.
      std::vector<uint8_t> buf(length, 0);
      Status st = journal_->Overlay(offset, buf);
      if (!st.ok()) XLOG(kError, log_name_, "read from journal: %s", st.ToString().c_str());
      if (st.ok()) {
        stats_.latency[0].Record(0);
        stats_.read_bytes += length;
      } else {
        ++stats_.errors;
      }
      op->read_cb(st.ok() ? 0 : EIO,
                  st.ok() ? std::span<const uint8_t>(buf) : std::span<const uint8_t>());
      return;
    }
    if (covered > 0) {
      // The remote may not have these records yet, and they may be retired
      // before the reply comes: keep their bytes with the read.
      op->snap.assign(length, 0);
      Status st = journal_->Overlay(offset, op->snap);
      if (!st.ok()) {
        XLOG(kError, log_name_, "read from journal: %s", st.ToString().c_str());
        ++stats_.errors;
        op->read_cb(EIO, {});
        return;
      }
      op->snap_ranges = journal_->CoveredRanges(offset, length);
    }
  }
  Submit(std::move(op));
}

void ImportedDisk::DoWrite(uint64_t offset, std::span<const uint8_t> data, BufferHold hold,
                           DoneFn done) {
  auto op = std::make_unique<Op>();
  op->kind = OpKind::kWrite;
  op->offset = offset;
  op->length = data.size();
  op->wdata = data.data();
  op->whold = hold;
  op->done_cb = std::move(done);
  if (journal_ok_ && !shut_down_ &&
      Journaled(op, journal_->AppendWrite(offset, data), [this, offset, data, hold](DoneFn d) {
        DoWrite(offset, data, hold, std::move(d));
      }))
    return;
  Submit(std::move(op));
}

void ImportedDisk::DoTrim(uint64_t offset, uint64_t length, DoneFn done) {
  auto op = std::make_unique<Op>();
  op->kind = OpKind::kTrim;
  op->offset = offset;
  op->length = length;
  op->done_cb = std::move(done);
  if (journal_ok_ && !shut_down_ &&
      Journaled(op, journal_->AppendTrim(offset, length),
                [this, offset, length](DoneFn d) { DoTrim(offset, length, std::move(d)); }))
    return;
  Submit(std::move(op));
}

void ImportedDisk::DoFlush(DoneFn done) {
  if (writeback() && !shut_down_) {
    // fsync(2) on a write-back disk: done once the journal is durable.
    const uint64_t target = journal_->last_seq();
    if (journal_->durable_seq() >= target) {
      done(0);
      return;
    }
    durable_waiters_.push_back(DurableWaiter{target, std::move(done), uv_hrtime(), OpKind::kFlush});
    sync_wanted_ = true;
    Kick();
    return;
  }
  auto op = std::make_unique<Op>();
  op->kind = OpKind::kFlush;
  op->done_cb = std::move(done);
  Submit(std::move(op));
}

bool ImportedDisk::Journaled(std::unique_ptr<Op>& op, const Result<uint64_t>& seq,
                             std::function<void(DoneFn)> redo) {
  if (!seq.ok()) {
    if (seq.status().kind() == Status::Kind::kInvalidArgument) {
      // A request the journal cannot hold (outside the disk): it fails by
      // itself; the journal stays on.
      XLOG(kWarning, log_name_, "%s at %" PRIu64 "+%" PRIu64 " refused: %s",
           op->kind == OpKind::kWrite  ? "write"
           : op->kind == OpKind::kTrim ? "trim"
                                       : "flush",
           op->offset, op->length, seq.status().message().c_str());
      ++stats_.errors;
      DoneFn cb = std::move(op->done_cb);
      cb(EINVAL);
      return true;
    }
    JournalFailed(seq.status().message());
    if (!MustHold(op->kind)) return false;
    // Behind what the journal still holds, like every request after it.
    HoldDone(op->kind, std::move(op->done_cb), std::move(redo));
    return true;
  }
  // Write-back (the only mode that appends; fsyncs never get here):
  // complete once durable; the feeder carries the record to the remote.
  (op->kind == OpKind::kWrite ? stats_.write_bytes : stats_.trim_bytes) += op->length;
  durable_waiters_.push_back(
      DurableWaiter{seq.value(), std::move(op->done_cb), uv_hrtime(), op->kind});
  sync_wanted_ = true;
  Kick();
  return true;
}

void ImportedDisk::Submit(std::unique_ptr<Op> op) {
  Enqueue(std::move(op));
  Dispatch();
}

void ImportedDisk::Enqueue(std::unique_ptr<Op> op) {
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
  if (self->journal_ != nullptr) {
    // Once per loop turn: retire what the remote finished (kRemote) and
    // start one group commit for everything appended this turn.
    // (Write-back records, also of a journal switched off, need a flush
    // first: MaybeFlushBackground.)
    if (self->config_.sync == SyncMode::kRemote &&
        self->done_prefix_ > self->journal_->retired_seq())
      self->RetireUpTo(self->done_prefix_);
    if (self->sync_wanted_) self->StartSync();
    self->ReleaseHeld();
  } else if (!self->held_.empty()) {
    self->ReleaseHeld();  // behind a read-modify-write
  }
  self->Dispatch();
}

void ImportedDisk::Dispatch() {
  if (shut_down_) return;
  if (!wanted_open_ && chunks_.empty() && !journal_busy()) {
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
  if (pause_until_ms_ != 0) {
    if (uv_now(loop_) < pause_until_ms_) return;  // the tick dispatches again
    pause_until_ms_ = 0;
  }
  if (journal_ != nullptr) {
    FeedBackground();
    MaybeFlushBackground();
  }
  bool any_modifying_before = false;
  bool background_modifying_before = false;
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
      // An application's fsync must cover journal records acknowledged
      // before it (a journal switched off with records still to send).
      if (c->op->kind == OpKind::kFlush && !c->op->background && background_modifying_before)
        blocked = true;
      if (!blocked) {
        SendChunk(c);
        if (open_state_ != OpenState::kOpen) return;  // the link went away
      }
    }
    any_modifying_before |= mod;
    background_modifying_before |= mod && c->op->background;
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
  if (!wanted_open_ && chunks_.empty() && !journal_busy()) return;
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
  // Write data goes to the socket from the request's own buffer, held
  // until it is written.
  Transaction* t = open_link_->Open(kCmds[static_cast<int>(op->kind)], open_txn_, this, ext, aux,
                                    kFlagDelete, op->whold);
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
  if (!shut_down_ && err != kErrLostLink && err != kErrCantCirc && c->op->background &&
      config_.sync == SyncMode::kJournal && c->op->flush_target == 0) {
    // A write-back record was acknowledged to the application long ago: it
    // is never dropped. It stays in its place (so nothing overlapping
    // overtakes it) and goes out again after a pause.
    XLOG(kWarning, log_name_,
         "journal record %" PRIu64 " refused by the remote at %" PRIu64 "+%u (%s); retrying in 1 s",
         c->op->jseq, c->offset, c->length, ErrorName(err).c_str());
    pause_until_ms_ = uv_now(loop_) + 1000;
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
  // At shutdown (a stop, or the detach of a restart, whose failures the
  // kernel resends to the next daemon) a lost link is what is expected.
  const bool expected = shut_down_ && (err == kErrLostLink || err == kErrCantCirc);
  const LogLevel level = expected ? LogLevel::kInfo : LogLevel::kWarning;
  if (LogEnabled(level))
    Log(level, log_name_, "%s at %" PRIu64 "+%u failed: %s",
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
    // A fresh open(2) of a closed disk is not worth a line; an open that
    // replaces a lost one, or that has requests waiting for it, is.
    if (lost_open_ || !chunks_.empty()) {
      ++stats_.reopens;
      XLOG(kInfo, log_name_, "open via %s, %zu requests to (re)send", open_link_->name().c_str(),
           chunks_.size());
    } else {
      XLOG(kDebug, log_name_, "open via %s", open_link_->name().c_str());
    }
    lost_open_ = false;
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
  lost_open_ = wanted_open_ || !chunks_.empty();
  open_txn_ = nullptr;
  open_link_ = nullptr;
  open_state_ = OpenState::kClosed;
  if (journal_ != nullptr && config_.sync == SyncMode::kJournal) RestartFeed();
  Kick();
}

void ImportedDisk::RestartFeed() {
  // What the remote acknowledged without a flush since the last retire may
  // be lost with it (a power loss of the exporting host): everything not
  // retired goes out again, in order, on the next open. The background Ops
  // are all back in the queue (LOSTLINK reached their chunks before the
  // open's own), so they are dropped and fed again.
  std::vector<Op*> drop;
  for (auto& op : ops_) {
    if (!op->background) continue;
    bool on_wire = false;
    for (auto& c : op->chunks) on_wire |= (c->txn != nullptr);
    if (!on_wire) drop.push_back(op.get());
  }
  for (Op* op : drop) {
    for (auto& c : op->chunks)
      if (!c->done) chunks_.erase(c->pos);
    if (op->kind == OpKind::kWrite) feed_bytes_ -= op->length;
    if (op->flush_target != 0) bg_flush_inflight_ = false;
    --background_ops_;
    ops_.erase(op->self);
  }
  completed_.clear();
  done_prefix_ = journal_->retired_seq();
  feed_next_ = done_prefix_ + 1;
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
  CompleteOp(std::move(owned));
}

void ImportedDisk::CompleteOp(std::unique_ptr<Op> owned) {
  if (!owned->snap_ranges.empty() && owned->error == 0) {
    if (owned->rbuf.size() != owned->length) owned->rbuf.resize(owned->length, 0);
    for (auto [start, end] : owned->snap_ranges)
      memcpy(owned->rbuf.data() + (start - owned->offset),
             owned->snap.data() + (start - owned->offset), end - start);
  }
  if (owned->background) {
    --background_ops_;
    if (owned->kind == OpKind::kWrite) feed_bytes_ -= owned->length;
    if (shut_down_) return;
    if (owned->kind == OpKind::kFlush && owned->flush_target != 0) {
      bg_flush_inflight_ = false;
      if (owned->error == 0) {
        RetireUpTo(owned->flush_target);
      } else {
        // MaybeFlushBackground tries again a second after this one.
        XLOG(kWarning, log_name_, "background flush failed; retrying in 1 s");
        bg_flush_failed_ = true;
      }
    } else {
      if (owned->error != 0)
        XLOG(kError, log_name_,
             "the remote refused journal record %" PRIu64 " (%s at %" PRIu64 "+%" PRIu64
             "); it is dropped from the journal",
             owned->jseq, owned->kind == OpKind::kWrite ? "write" : "request", owned->offset,
             owned->length);
      MarkDone(owned->jseq);
    }
    Kick();
    return;
  }
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
  // A switched-off journal whose files could not be deleted (a read-only
  // file system) holds writes back (GateClosed): try again every second.
  if (self->journal_ != nullptr && !self->journal_ok_ && self->journal_->pending().empty() &&
      !self->journal_->gone() && !self->shut_down_) {
    if (self->journal_->DeleteIfDrained().ok()) self->Kick();
  }
  if (self->open_state_ == OpenState::kClosed || self->pause_until_ms_ != 0) self->Dispatch();
}

void ImportedDisk::CheckTimeouts() {
  if (config_.io_timeout_ms == 0) return;
  const uint64_t now = uv_now(loop_);
  std::vector<Op*> expired;
  for (auto& op : ops_) {
    // Journal records wait for their remote however long it takes.
    if (op->background) continue;
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
  // Requests held behind the journal's backlog or for journal space.
  std::vector<HeldOp> expired_held;
  for (auto it = held_.begin(); it != held_.end();) {
    if (now - it->start_ms >= config_.io_timeout_ms) {
      expired_held.push_back(std::move(*it));
      it = held_.erase(it);
    } else {
      ++it;
    }
  }
  if (!expired_held.empty())
    XLOG(kWarning, log_name_, "%zu waiting requests failed: blocked for over %" PRIu64 " s",
         expired_held.size(), config_.io_timeout_ms / 1000);
  for (HeldOp& h : expired_held) h.fail(EIO);
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
  // Requests that were never started, and writes whose record is not known
  // to be durable yet, fail; their records (if any) stay in the journal and
  // are sent after the next start.
  auto held = std::move(held_);
  held_.clear();
  for (HeldOp& h : held) h.fail(EIO);
  auto waiters = std::move(durable_waiters_);
  durable_waiters_.clear();
  for (DurableWaiter& w : waiters) w.done(EIO);
  // kRemote: what the remote answered is done; write-back records need
  // their flush first and stay.
  if (journal_ != nullptr && config_.sync == SyncMode::kRemote) RetireUpTo(done_prefix_);
  if (journal_ != nullptr && journal_->pending().empty()) {
    if (Status st = journal_->RemoveIfEmpty(); !st.ok())
      XLOG(kWarning, log_name_, "journal: %s", st.ToString().c_str());
  }
  if (open_txn_ != nullptr && open_link_ != nullptr) open_link_->Reply(open_txn_, 0, true);
  uv_close(reinterpret_cast<uv_handle_t*>(&kick_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
}

// ---- journal ----

void ImportedDisk::AttachJournal(std::unique_ptr<Journal> journal) {
  journal_ = std::move(journal);
  journal_ok_ = true;
  done_prefix_ = journal_->retired_seq();
  feed_next_ = journal_->retired_seq() + 1;
  // The backlog: records of an earlier run. kRemote sends all of them
  // before any new request; write-back feeds everything anyway.
  feed_limit_ = journal_->last_seq();
  // Replayed records are durable only after a sync (a killed daemon may
  // have left them in the page cache): write-back starts one now.
  if (config_.sync == SyncMode::kJournal && journal_->durable_seq() < journal_->last_seq())
    sync_wanted_ = true;
  if (!journal_->pending().empty())
    XLOG(kInfo, log_name_,
         "journal: %zu pending records (%" PRIu64 " bytes of writes) from an earlier run%s",
         journal_->pending().size(), journal_->pending_bytes(),
         online() ? "" : "; sent when the disk returns");
  if (config_.sync == SyncMode::kRemote) {
    // --sync=remote appends nothing: this journal was left by an earlier
    // run (an older version, or --sync=journal). What it holds goes out
    // first, in order; new writes and trims wait until all of it is
    // retired and its files are gone (GateClosed), so that no later start
    // can resend it over them.
    journal_ok_ = false;
    journal_->Fail("--sync=remote appends no records");
    if (Status st = journal_->DeleteIfDrained(); !st.ok())
      XLOG(kError, log_name_, "%s; writes wait until it is gone", st.ToString().c_str());
  } else if (journal_->failed()) {
    // A journal that opened failed (no new segment) is switched off like
    // one that fails later: what it holds is still sent and retired.
    JournalFailed(journal_->failure());
  }
  Kick();
}

bool ImportedDisk::journal_busy() const {
  return journal_ != nullptr && !journal_->pending().empty();
}

bool ImportedDisk::writeback() const {
  return config_.sync == SyncMode::kJournal && journal_ != nullptr && journal_ok_;
}

bool ImportedDisk::GateClosed(OpKind kind) const {
  if (journal_ == nullptr || shut_down_) return false;
  if (writeback()) {
    // Write-back: only writes and trims wait, and only for journal space.
    return (kind == OpKind::kWrite || kind == OpKind::kTrim) && journal_->full();
  }
  // A journal switched off with records still in its files: new writes
  // and trims wait until they are all retired and the files are gone.
  // Sent unjournaled beside them, they could be overwritten by a resend
  // of those records: after a restart, or after a lost open (write-back).
  if (!journal_ok_ && (kind == OpKind::kWrite || kind == OpKind::kTrim) && !journal_->gone())
    return true;
  // kRemote (or a journal switched off): nothing new goes out before the
  // whole backlog is queued ahead of it.
  return feed_next_ <= feed_limit_;
}

bool ImportedDisk::MustHold(OpKind kind) const {
  if (rmw_active_) return true;  // nothing overtakes a read-modify-write
  if (writeback() && (kind == OpKind::kRead || kind == OpKind::kFlush))
    return GateClosed(kind);  // never behind writes waiting for space
  return !held_.empty() || GateClosed(kind);
}

void ImportedDisk::Hold(OpKind kind, std::function<void()> run, std::function<void(int)> fail) {
  if (held_.empty())
    XLOG(kDebug, log_name_, "requests wait for %s",
         rmw_active_   ? "a read-modify-write"
         : writeback() ? "journal space"
         : journal_ok_ ? "the journal's backlog"
                       : "the switched-off journal's records to be sent and deleted");
  HeldOp h{kind, std::move(run), std::move(fail), uv_now(loop_)};
  // Everything held arrived after the read-modify-write whose write this is.
  if (rmw_writing_)
    held_.push_front(std::move(h));
  else
    held_.push_back(std::move(h));
  UpdateBlocked();
}

void ImportedDisk::ReleaseHeld() {
  while (!held_.empty() && !shut_down_ && !rmw_active_ && !GateClosed(held_.front().kind)) {
    HeldOp h = std::move(held_.front());
    held_.pop_front();
    h.run();
  }
}

void ImportedDisk::JournalFailed(const std::string& why) {
  XLOG(kError, log_name_,
       "journal: %s; journaling is off for this disk, new writes wait until what it holds "
       "is sent, then go straight to the remote",
       why.c_str());
  journal_ok_ = false;
  journal_->Fail(why);
  if (Status st = journal_->DeleteIfDrained(); !st.ok())
    XLOG(kError, log_name_, "%s; writes wait until it is gone", st.ToString().c_str());
  if (config_.sync == SyncMode::kJournal) {
    // Write-back: what the journal holds still goes out first, in order
    // (the kRemote gate), and writes already appended complete once their
    // records are durable. (kRemote needs neither: every record of this
    // run already has its request queued or done.)
    feed_limit_ = journal_->last_seq();
    if (!sync_failed_) sync_wanted_ = true;
  }
  Kick();
}

void ImportedDisk::FeedBackground() {
  const uint64_t end = writeback() ? journal_->last_seq() : feed_limit_;
  if (feed_next_ > end) return;
  const auto& pending = journal_->pending();
  auto it = std::lower_bound(pending.begin(), pending.end(), feed_next_,
                             [](const JournalPending& r, uint64_t seq) { return r.seq < seq; });
  while (it != pending.end() && it->seq <= end && feed_bytes_ < kFeedWindowBytes &&
         background_ops_ < kFeedWindowOps) {
    const JournalPending& rec = *it++;
    feed_next_ = rec.seq + 1;
    auto op = std::make_unique<Op>();
    op->background = true;
    op->jseq = rec.seq;
    op->offset = rec.offset;
    op->length = rec.length;
    op->done_cb = [](int) {};
    switch (rec.kind) {
      case JournalRecordKind::kWrite: {
        auto data = journal_->ReadWriteData(rec);
        if (!data.ok()) {
          // Never skipped: it may be all there is of an acknowledged write.
          XLOG(kError, log_name_, "journal record %" PRIu64 " unreadable, retrying in 1 s: %s",
               rec.seq, data.status().ToString().c_str());
          feed_next_ = rec.seq;
          pause_until_ms_ = uv_now(loop_) + 1000;
          return;
        }
        op->kind = OpKind::kWrite;
        auto bytes = std::make_shared<std::vector<uint8_t>>(std::move(*data));
        op->length = bytes->size();
        op->wdata = bytes->data();
        op->whold = std::move(bytes);
        feed_bytes_ += op->length;
        break;
      }
      case JournalRecordKind::kTrim:
        op->kind = OpKind::kTrim;
        break;
      case JournalRecordKind::kFlush:
        op->kind = OpKind::kFlush;
        op->length = 0;
        break;
    }
    ++background_ops_;
    Enqueue(std::move(op));
  }
  // Everything up to `end` is queued once no pending record is left at or
  // below it (seqs replay dropped as damage leave gaps, at the end too).
  if (feed_next_ > end || it == pending.end() || it->seq > end) feed_next_ = end + 1;
  if (!writeback() && feed_next_ > feed_limit_ && !held_.empty()) Kick();  // gate opens
}

void ImportedDisk::MaybeFlushBackground() {
  // Write-back only: a BLK_FLUSH after acknowledged records makes them safe
  // on the remote; they are retired when it is acknowledged. One at a time,
  // when the background queue drained or at least every second.
  if (config_.sync != SyncMode::kJournal || bg_flush_inflight_) return;
  if (done_prefix_ <= journal_->retired_seq()) return;
  const uint64_t now = uv_now(loop_);
  const bool drained = background_ops_ == 0;
  if ((!drained || bg_flush_failed_) && now - last_bg_flush_ms_ < 1000) return;
  bg_flush_failed_ = false;
  auto op = std::make_unique<Op>();
  op->kind = OpKind::kFlush;
  op->background = true;
  op->flush_target = done_prefix_;
  op->done_cb = [](int) {};
  bg_flush_inflight_ = true;
  last_bg_flush_ms_ = now;
  ++background_ops_;
  Enqueue(std::move(op));
}

void ImportedDisk::MarkDone(uint64_t seq) {
  if (journal_ == nullptr || seq == 0) return;
  completed_.insert(seq);
  // Advance over the pending records (in seq order) that are all done; a
  // seq missing from the journal (damage) does not stall the prefix.
  const auto& pending = journal_->pending();
  auto it = std::lower_bound(pending.begin(), pending.end(), done_prefix_ + 1,
                             [](const JournalPending& r, uint64_t s) { return r.seq < s; });
  while (it != pending.end()) {
    auto c = completed_.find(it->seq);
    if (c == completed_.end()) break;
    done_prefix_ = it->seq;
    completed_.erase(c);
    ++it;
  }
  while (!completed_.empty() && *completed_.begin() <= done_prefix_)
    completed_.erase(completed_.begin());
}

void ImportedDisk::RetireUpTo(uint64_t seq) {
  if (journal_ == nullptr || seq <= journal_->retired_seq()) return;
  if (Status st = journal_->Retire(seq); !st.ok())
    XLOG(kWarning, log_name_, "journal retire: %s", st.ToString().c_str());
  if (!held_.empty()) Kick();  // space may have freed
  if (journal_->pending().empty() && drained_hook_ && !shut_down_) drained_hook_();
}

void ImportedDisk::StartSync() {
  sync_wanted_ = false;
  if (sync_failed_) {
    // The journal cannot be made durable: nothing waiting on it succeeds.
    auto waiters = std::move(durable_waiters_);
    durable_waiters_.clear();
    for (DurableWaiter& w : waiters) w.done(EIO);
    return;
  }
  if (sync_inflight_) {
    sync_wanted_ = true;  // the next batch starts when this one ends
    return;
  }
  if (journal_->durable_seq() >= journal_->last_seq()) {
    FinishDurable();
    return;
  }
  sync_batch_ = journal_->PrepareSync();
  sync_inflight_ = true;
  sync_work_.data = this;
  uv_queue_work(loop_, &sync_work_, OnSyncWork, OnSyncDone);
}

void ImportedDisk::OnSyncWork(uv_work_t* w) {
  auto* self = static_cast<ImportedDisk*>(w->data);
  self->sync_status_ = Journal::RunSync(&self->sync_batch_);
}

void ImportedDisk::OnSyncDone(uv_work_t* w, int) {
  auto* self = static_cast<ImportedDisk*>(w->data);
  self->sync_inflight_ = false;
  if (!self->sync_status_.ok()) {
    XLOG(kError, self->log_name_, "journal sync: %s", self->sync_status_.ToString().c_str());
    // Not durable: what waits fails, and the journal is no longer trusted.
    self->sync_failed_ = true;
    if (self->journal_ok_) self->JournalFailed(self->sync_status_.message());
    self->StartSync();
    return;
  }
  self->journal_->SyncDone(self->sync_batch_);
  self->FinishDurable();
  if (self->sync_wanted_) self->StartSync();
}

void ImportedDisk::FinishDurable() {
  const uint64_t durable = journal_->durable_seq();
  const uint64_t now = uv_hrtime();
  while (!durable_waiters_.empty() && durable_waiters_.front().seq <= durable) {
    DurableWaiter w = std::move(durable_waiters_.front());
    durable_waiters_.pop_front();
    stats_.latency[static_cast<int>(w.kind)].Record((now - w.start_ns) / 1000);
    w.done(0);
  }
}

ImportedDisk::State ImportedDisk::state() const {
  if (!paths_.empty()) return State::kOnline;
  return (wanted_open_ || !chunks_.empty() || !held_.empty()) ? State::kBlocked : State::kOffline;
}

bool ImportedDisk::idle() const {
  return paths_.empty() && !wanted_open_ && open_waiters_.empty() && ops_.empty() &&
         held_.empty() && !journal_busy() && durable_waiters_.empty() && !sync_inflight_;
}

bool ImportedDisk::waiting_for_path() const {
  return !shut_down_ && paths_.empty() &&
         (!chunks_.empty() || !held_.empty() || !open_waiters_.empty());
}

void ImportedDisk::UpdateBlocked() {
  const bool blocked = state() == State::kBlocked;
  if (blocked && stats_.blocked_since_ms == 0) stats_.blocked_since_ms = WallClockMs();
  if (!blocked) stats_.blocked_since_ms = 0;
  if (config_.on_waiting_for_path && waiting_for_path()) config_.on_waiting_for_path();
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
  if (journal_ != nullptr) {
    s.journal_bytes = journal_->bytes_on_disk();
    s.journal_pending = journal_->pending().size();
    s.journal_pending_bytes = journal_->pending_bytes();
  }
  s.inflight = inflight_;
  s.queued = chunks_.size() - inflight_ + held_.size();  // held: not yet chunked
  if (s.blocked_since_ms != 0) {
    // The oldest request still waiting: it may have waited on a hung link
    // for the whole --link-timeout before the disk counted as blocked.
    uint64_t oldest = UINT64_MAX;
    for (const auto& op : ops_) oldest = std::min(oldest, op->start_ms);
    for (const HeldOp& h : held_) oldest = std::min(oldest, h.start_ms);
    if (!open_waiters_.empty()) oldest = std::min(oldest, open_wait_since_ms_);
    const uint64_t now = uv_now(loop_);
    if (oldest != UINT64_MAX && oldest <= now)
      s.blocked_since_ms = std::min(s.blocked_since_ms, WallClockMs() - (now - oldest));
  }
  return s;
}

}  // namespace xdisk
