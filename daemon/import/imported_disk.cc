#include "daemon/import/imported_disk.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <ctime>

#include "daemon/base/log.h"

namespace xdisk {

using namespace dmsg;

// An application's request (or a background one carrying a journal record)
// as the queue holds it, with what the disk needs to answer it.
struct ImportedDisk::Op : QueuedRequest {
  const uint8_t* wdata = nullptr;
  BufferHold whold;  // keeps wdata alive for the link (empty: the link copies)
  dmsg::ByteBuffer rbuf;
  ReadFn read_cb;
  DoneFn done_cb;
  uint64_t start_ns = 0;  // uv_hrtime(), for the latency histogram
  // Background Ops carry a journal record to the remote, own its data and
  // answer nobody but the journal driver.
  JournalDriver::Record record;
  // Partly covered read (write-back): the journal's bytes for it, taken
  // when it was submitted, laid over the remote's reply.
  std::vector<uint8_t> snap;
  std::vector<std::pair<uint64_t, uint64_t>> snap_ranges;
};

std::unique_ptr<ImportedDisk::Op> ImportedDisk::AsOp(std::unique_ptr<QueuedRequest> r) {
  // Every request in the queue was made by Enqueue(): an Op.
  return std::unique_ptr<Op>(static_cast<Op*>(r.release()));
}

namespace {
uint32_t BlkCommand(IoKind kind) {
  switch (kind) {
    case IoKind::kRead:
      return kBlkRead;
    case IoKind::kWrite:
      return kBlkWrite;
    case IoKind::kFlush:
      return kBlkFlush;
    case IoKind::kTrim:
      return kBlkFreeblks;
  }
  return kBlkFlush;
}

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
      config_(config),
      paths_([](const Link* l) { return l->up(); }),
      queue_(kMaxAuxChunkBytes, kMaxInflight) {
  kick_.Open(uv_idle_init, loop_);
  tick_.Open(uv_timer_init, loop_);
  kick_.get()->data = tick_.get()->data = this;
  uv_timer_start(tick_.get(), OnTick, 1000, 1000);
  // The tick only polls timeouts and retries; it must not keep the loop
  // alive at shutdown on its own.
  uv_unref(tick_.handle());
}

ImportedDisk::~ImportedDisk() = default;

// ---- paths ----

void ImportedDisk::AddPath(const RemoteSpan& span) {
  paths_.Add(DiskPath{span.id, span.link, span.txn, span.info.dist});
  UpdateBlocked();
  XLOG(kInfo, log_name_, "path via %s (dist %u)%s", span.link->name().c_str(), span.info.dist,
       paths_.size() == 1 && !queue_.empty() ? ": resuming blocked I/O" : "");
  Kick();
}

void ImportedDisk::RemovePath(uint64_t span_id) {
  paths_.Remove(span_id);
  if (span_id == active_span_) {
    // The BLK_OPEN under that span was terminated before the span itself
    // (children first), so OnOpenLost() already ran; this is belt and braces.
    if (open_state_ != OpenState::kClosed) OnOpenLost();
  }
  UpdateBlocked();
  if (paths_.empty() && !shut_down_) {
    XLOG(kWarning, log_name_, "no path left: I/O blocks until the disk returns (%zu queued)",
         queue_.chunks());
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
  if (MustHold(IoKind::kRead)) {
    auto cb = std::make_shared<ReadFn>(std::move(done));
    Hold(
        IoKind::kRead, [this, offset, length, cb] { DoRead(offset, length, std::move(*cb)); },
        [cb](int err) { (*cb)(err, {}); });
    return;
  }
  DoRead(offset, length, std::move(done));
}

void ImportedDisk::Write(uint64_t offset, std::span<const uint8_t> data, BufferHold hold,
                         DoneFn done) {
  ++stats_.writes;
  if (MustHold(IoKind::kWrite))
    return HoldDone(IoKind::kWrite, std::move(done), [this, offset, data, hold](DoneFn d) {
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
  if (MustHold(IoKind::kFlush))
    return HoldDone(IoKind::kFlush, std::move(done), [this](DoneFn d) { DoFlush(std::move(d)); });
  DoFlush(std::move(done));
}

void ImportedDisk::Trim(uint64_t offset, uint64_t length, DoneFn done) {
  ++stats_.trims;
  if (!Aligned(offset, length)) return TrimUnaligned(offset, length, std::move(done));
  if (MustHold(IoKind::kTrim))
    return HoldDone(IoKind::kTrim, std::move(done),
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

void ImportedDisk::HoldDone(IoKind kind, DoneFn done, std::function<void(DoneFn)> run) {
  auto cb = std::make_shared<DoneFn>(std::move(done));
  Hold(
      kind, [cb, run = std::move(run)] { run(std::move(*cb)); }, [cb](int err) { (*cb)(err); });
}

void ImportedDisk::DoRead(uint64_t offset, uint32_t length, ReadFn done) {
  auto op = NewIoOp<Op>(IoKind::kRead, offset, length);
  op->read_cb = std::move(done);
  if (writeback() && !shut_down_) {
    const uint64_t covered = journal_->Covered(offset, length);
    if (covered == length) {
      // Every byte is pending in the journal: answer from it.
      std::vector<uint8_t> buf(length, 0);
      Status st = journal_->Overlay(offset, buf);
      if (!st.ok()) XLOG(kError, log_name_, "read from journal: %s", st.ToString().c_str());
      if (st.ok()) {
        stats_.latency_of(IoKind::kRead).Record(0);
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
  auto op = NewIoOp<Op>(IoKind::kWrite, offset, data.size());
  op->wdata = data.data();
  op->whold = hold;
  op->done_cb = std::move(done);
  if (writeback() && !shut_down_) {
    std::string why;
    auto append = journal_->AppendWrite(offset, data, Durable(IoKind::kWrite, op->done_cb), &why);
    if (Journaled(op, append, why, [this, offset, data, hold](DoneFn d) {
          DoWrite(offset, data, hold, std::move(d));
        }))
      return;
  }
  Submit(std::move(op));
}

void ImportedDisk::DoTrim(uint64_t offset, uint64_t length, DoneFn done) {
  auto op = NewIoOp<Op>(IoKind::kTrim, offset, length);
  op->done_cb = std::move(done);
  if (writeback() && !shut_down_) {
    std::string why;
    auto append = journal_->AppendTrim(offset, length, Durable(IoKind::kTrim, op->done_cb), &why);
    if (Journaled(op, append, why,
                  [this, offset, length](DoneFn d) { DoTrim(offset, length, std::move(d)); }))
      return;
  }
  Submit(std::move(op));
}

void ImportedDisk::DoFlush(DoneFn done) {
  if (writeback() && !shut_down_) {
    // fsync(2) on a write-back disk: done once the journal is durable.
    journal_->WaitDurable(Durable(IoKind::kFlush, std::move(done)));
    return;
  }
  auto op = NewIoOp<Op>(IoKind::kFlush, 0, 0);
  op->done_cb = std::move(done);
  Submit(std::move(op));
}

ImportedDisk::DoneFn ImportedDisk::Durable(IoKind kind, DoneFn done) {
  // The request's latency ends when its record is durable.
  return [this, kind, done = std::move(done), start_ns = uv_hrtime()](int err) {
    if (err == 0) stats_.latency_of(kind).Record((uv_hrtime() - start_ns) / 1000);
    done(err);
  };
}

bool ImportedDisk::Journaled(std::unique_ptr<Op>& op, JournalDriver::Append append,
                             const std::string& why, std::function<void(DoneFn)> redo) {
  switch (append) {
    case JournalDriver::Append::kAccepted:
      // Complete once durable; the driver carries the record to the remote.
      (op->kind == IoKind::kWrite ? stats_.write_bytes : stats_.trim_bytes) += op->length;
      return true;
    case JournalDriver::Append::kRefused: {
      // A request the journal cannot hold (outside the disk): it fails by
      // itself; the journal stays on.
      XLOG(kWarning, log_name_, "%s at %" PRIu64 "+%" PRIu64 " refused: %s", IoKindName(op->kind),
           op->offset, op->length, why.c_str());
      ++stats_.errors;
      DoneFn cb = std::move(op->done_cb);
      cb(EINVAL);
      return true;
    }
    case JournalDriver::Append::kSwitchedOff:
      break;
  }
  if (!MustHold(op->kind)) return false;
  // Behind what the journal still holds, like every request after it.
  HoldDone(op->kind, std::move(op->done_cb), std::move(redo));
  return true;
}

void ImportedDisk::Submit(std::unique_ptr<Op> op) {
  Enqueue(std::move(op));
  Dispatch();
}

void ImportedDisk::Enqueue(std::unique_ptr<Op> op) {
  op->start_ns = uv_hrtime();
  if (shut_down_) {
    op->error = EIO;
    CompleteOp(std::move(op));
    return;
  }
  queue_.Add(std::move(op), uv_now(loop_));
  UpdateBlocked();
}

// ---- dispatch ----

void ImportedDisk::Kick() {
  if (kicked_ || shut_down_) return;
  kicked_ = true;
  uv_idle_start(kick_.get(), OnKick);
}

void ImportedDisk::OnKick(uv_idle_t* h) {
  auto* self = static_cast<ImportedDisk*>(h->data);
  uv_idle_stop(h);
  self->kicked_ = false;
  if (self->journal_ != nullptr) self->journal_->Turn();
  self->ReleaseHeld();
  self->Dispatch();
}

void ImportedDisk::Dispatch() {
  if (shut_down_) return;
  if (!wanted_open_ && queue_.empty() && !journal_busy()) {
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
  if (journal_ != nullptr) FeedJournal();
  bool lost = false;
  queue_.Dispatch(ChunkLimit(*open_link_), [&](QueuedChunk& c) -> void* {
    Transaction* t = SendChunk(c);
    lost = t == nullptr;
    return t;
  });
  if (lost) OnOpenLost();
}

uint32_t ImportedDisk::ChunkLimit(const Link& link) {
  const std::string& label = link.peer_conn().peer_label;
  static constexpr std::string_view kOurs = "/xdisk-fuse";
  if (label.size() > kOurs.size() && label.ends_with(kOurs)) return kMaxAuxChunkBytes;
  return kMaxChunkBytes;
}

void ImportedDisk::EnsureOpen() {
  if (shut_down_ || open_state_ != OpenState::kClosed) return;
  if (!wanted_open_ && queue_.empty() && !journal_busy()) return;
  if (uv_now(loop_) < retry_at_ms_) return;  // the tick retries
  const DiskPath* p = paths_.Best();
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

Transaction* ImportedDisk::SendChunk(QueuedChunk& c) {
  const auto& op = static_cast<const Op&>(*c.req);
  BlkIo io;
  io.offset = op.kind == IoKind::kFlush ? 0 : c.offset;
  io.bytes = c.length;
  std::vector<uint8_t> ext = io.Encode();
  std::span<const uint8_t> aux;
  if (op.kind == IoKind::kWrite) aux = {op.wdata + c.req_off, c.length};
  // Write data goes to the socket from the request's own buffer, held
  // until it is written.
  Transaction* t =
      open_link_->Open(BlkCommand(op.kind), open_txn_, this, ext, aux, kFlagDelete, op.whold);
  if (t != nullptr) t->user = &c;
  return t;
}

// ---- replies ----

void ImportedDisk::OnMessage(Link&, Transaction& t, Frame& f) {
  const uint32_t cmd = f.hdr.cmd;
  if (&t == open_txn_) {
    if ((cmd & kFlagCreate) && open_state_ == OpenState::kOpening) OnOpenReply(f);
    if ((cmd & kFlagDelete) && &t == open_txn_) OnOpenLost();
    return;
  }
  auto* c = static_cast<QueuedChunk*>(t.user);
  if (c == nullptr || !(cmd & kFlagDelete)) return;  // only the final reply counts
  t.user = nullptr;
  const uint32_t err = f.hdr.error;
  if (err == 0) {
    ChunkDone(c, 0, &f);
    Dispatch();
    return;
  }
  const auto& op = static_cast<const Op&>(*c->req);
  if (!shut_down_ && err != kErrLostLink && err != kErrCantCirc && op.background &&
      config_.sync == SyncMode::kJournal && op.record.flush_target == 0) {
    // A write-back record was acknowledged to the application long ago: it
    // is never dropped. It stays in its place (so nothing overlapping
    // overtakes it) and goes out again after a pause.
    XLOG(kWarning, log_name_,
         "journal record %" PRIu64 " refused by the remote at %" PRIu64 "+%u (%s); retrying in 1 s",
         op.record.seq, c->offset, c->length, ErrorName(err).c_str());
    queue_.Requeue(c);
    pause_until_ms_ = uv_now(loop_) + 1000;
    return;
  }
  if ((err == kErrLostLink || err == kErrCantCirc) && !shut_down_) {
    // The path died under this chunk: it stays queued in its original
    // position and goes out again once the disk is open on a path.
    XLOG(kDebug, log_name_, "chunk %" PRIu64 "+%u requeued (%s)", c->offset, c->length,
         ErrorName(err).c_str());
    queue_.Requeue(c);
    Kick();
    return;
  }
  // At shutdown (a stop, or the detach of a restart, whose failures the
  // kernel resends to the next daemon) a lost link is what is expected.
  const bool expected = shut_down_ && (err == kErrLostLink || err == kErrCantCirc);
  const LogLevel level = expected ? LogLevel::kInfo : LogLevel::kWarning;
  if (LogEnabled(level))
    Log(level, log_name_, "%s at %" PRIu64 "+%u failed: %s",
        op.kind == IoKind::kRead    ? "read"
        : op.kind == IoKind::kWrite ? "write"
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
  auto* c = static_cast<QueuedChunk*>(t.user);
  if (c != nullptr) {
    // Freed without a final reply reaching us (cannot happen through the
    // link, which always delivers LOSTLINK first); requeue to be safe.
    t.user = nullptr;
    queue_.Requeue(c);
    Kick();
  }
}

void ImportedDisk::OnOpenReply(const Frame& f) {
  if (f.hdr.error == 0) {
    // A fresh open(2) of a closed disk is not worth a line; an open that
    // replaces a lost one, or that has requests waiting for it, is.
    if (lost_open_ || !queue_.empty()) {
      ++stats_.reopens;
      XLOG(kInfo, log_name_, "open via %s, %zu requests to (re)send", open_link_->name().c_str(),
           queue_.chunks());
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
       open_link_ ? open_link_->name().c_str() : "?", queue_.chunks());
  lost_open_ = wanted_open_ || !queue_.empty();
  open_txn_ = nullptr;
  open_link_ = nullptr;
  open_state_ = OpenState::kClosed;
  if (journal_ != nullptr && config_.sync == SyncMode::kJournal) {
    // Everything not retired goes out again, in order, on the next open.
    // The fed records are all back in the queue (LOSTLINK reached their
    // chunks before the open's own): they are dropped and fed again.
    for (auto& r : queue_.TakeWaiting([](const QueuedRequest& q) { return q.background; }))
      journal_->Dropped(AsOp(std::move(r))->record);
    journal_->LinkLost();
  }
  Kick();
}

void ImportedDisk::ChunkDone(QueuedChunk* c, int err, Frame* f) {
  auto* op = static_cast<Op*>(c->req);
  if (err == 0 && op->kind == IoKind::kRead && f != nullptr) {
    if (op->chunks.size() == 1 && f->aux.size() >= c->length) {
      // The common case: one chunk carries the whole read. Take its buffer.
      op->rbuf = std::move(f->aux);
      op->rbuf.resize(c->length);
    } else {
      // Short or absent data reads as zeros (§7.4).
      if (op->rbuf.empty()) op->rbuf.assign(op->length, 0);
      size_t n = std::min<size_t>(f->aux.size(), c->length);
      memcpy(op->rbuf.data() + c->req_off, f->aux.data(), n);
    }
  }
  if (auto done = queue_.ChunkDone(c, err)) CompleteOp(AsOp(std::move(done)));
}

void ImportedDisk::CompleteOp(std::unique_ptr<Op> owned) {
  if (!owned->snap_ranges.empty() && owned->error == 0) {
    if (owned->rbuf.size() != owned->length) owned->rbuf.resize(owned->length, 0);
    for (auto [start, end] : owned->snap_ranges)
      memcpy(owned->rbuf.data() + (start - owned->offset),
             owned->snap.data() + (start - owned->offset), end - start);
  }
  if (owned->background) {
    // During shutdown only what the remote acknowledged counts: the
    // records failed there were never sent, and must stay in the journal.
    if (journal_ == nullptr) return;
    if (shut_down_)
      journal_->Dropped(owned->record);
    else
      journal_->RecordDone(owned->record, owned->error);
    return;
  }
  if (owned->error == 0) {
    stats_.latency_of(owned->kind).Record((uv_hrtime() - owned->start_ns) / 1000);
    if (owned->kind == IoKind::kRead) stats_.read_bytes += owned->length;
    if (owned->kind == IoKind::kWrite) stats_.write_bytes += owned->length;
    if (owned->kind == IoKind::kTrim) stats_.trim_bytes += owned->length;
  } else {
    ++stats_.errors;
  }
  UpdateBlocked();
  if (owned->kind == IoKind::kRead) {
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
  if (self->journal_ != nullptr) self->journal_->Tick();
  if (self->open_state_ == OpenState::kClosed || self->pause_until_ms_ != 0) self->Dispatch();
}

void ImportedDisk::CheckTimeouts() {
  if (config_.io_timeout_ms == 0) return;
  const uint64_t now = uv_now(loop_);
  for (auto& r : queue_.FailExpired(now, config_.io_timeout_ms, EIO)) {
    XLOG(kWarning, log_name_,
         "I/O at %" PRIu64 "+%" PRIu64 " failed: blocked for over %" PRIu64 " s", r->offset,
         r->length, config_.io_timeout_ms / 1000);
    CompleteOp(AsOp(std::move(r)));
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
  for (auto& r : queue_.FailWaiting(EIO)) CompleteOp(AsOp(std::move(r)));
  FinishOpenWaiters(EIO);
  // Requests that were never started, and writes whose record is not known
  // to be durable yet, fail; their records (if any) stay in the journal and
  // are sent after the next start.
  auto held = std::move(held_);
  held_.clear();
  for (HeldOp& h : held) h.fail(EIO);
  if (journal_ != nullptr) journal_->Shutdown();
  if (open_txn_ != nullptr && open_link_ != nullptr) open_link_->Reply(open_txn_, 0, true);
  kick_.Close();
  tick_.Close();
}

// ---- journal ----

void ImportedDisk::AttachJournal(std::unique_ptr<Journal> journal) {
  journal_ = std::make_unique<JournalDriver>(loop_, log_name_, config_.sync, std::move(journal),
                                             [this] { Kick(); });
}

void ImportedDisk::SetDrainedHook(std::function<void()> hook) {
  if (journal_ != nullptr) journal_->SetDrainedHook(std::move(hook));
}

bool ImportedDisk::journal_busy() const { return journal_ != nullptr && journal_->busy(); }

bool ImportedDisk::writeback() const { return journal_ != nullptr && journal_->writeback(); }

bool ImportedDisk::GateClosed(IoKind kind) const {
  return journal_ != nullptr && !shut_down_ && journal_->GateClosed(kind);
}

bool ImportedDisk::MustHold(IoKind kind) const {
  if (rmw_active_) return true;  // nothing overtakes a read-modify-write
  if (writeback() && (kind == IoKind::kRead || kind == IoKind::kFlush))
    return GateClosed(kind);  // never behind writes waiting for space
  return !held_.empty() || GateClosed(kind);
}

void ImportedDisk::Hold(IoKind kind, std::function<void()> run, std::function<void(int)> fail) {
  if (held_.empty())
    XLOG(kDebug, log_name_, "requests wait for %s",
         rmw_active_ ? "a read-modify-write"
         : journal_  ? journal_->GateReason()
                     : "?");
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

void ImportedDisk::FeedJournal() {
  std::vector<JournalDriver::Record> records;
  if (!journal_->Feed(uv_now(loop_), &records)) pause_until_ms_ = uv_now(loop_) + 1000;
  for (JournalDriver::Record& r : records) {
    auto op = NewIoOp<Op>(r.kind, r.offset, r.length);
    op->background = true;
    if (r.data) {
      op->wdata = r.data->data();
      op->whold = r.data;
    }
    op->done_cb = [](int) {};
    op->record = std::move(r);
    Enqueue(std::move(op));
  }
}

ImportedDisk::State ImportedDisk::state() const {
  if (!paths_.empty()) return State::kOnline;
  return (wanted_open_ || !queue_.empty() || !held_.empty()) ? State::kBlocked : State::kOffline;
}

bool ImportedDisk::idle() const {
  return paths_.empty() && !wanted_open_ && open_waiters_.empty() && queue_.empty() &&
         held_.empty() && (journal_ == nullptr || journal_->idle());
}

bool ImportedDisk::waiting_for_path() const {
  return !shut_down_ && paths_.empty() &&
         (!queue_.empty() || !held_.empty() || !open_waiters_.empty());
}

void ImportedDisk::UpdateBlocked() {
  const bool blocked = state() == State::kBlocked;
  if (blocked && stats_.blocked_since_ms == 0) stats_.blocked_since_ms = WallClockMs();
  if (!blocked) stats_.blocked_since_ms = 0;
  if (config_.on_waiting_for_path && waiting_for_path()) config_.on_waiting_for_path();
}

std::vector<ImportedDisk::PathInfo> ImportedDisk::paths() const {
  std::vector<PathInfo> out;
  for (const DiskPath& p : paths_.all())
    out.push_back(PathInfo{p.link->name(), p.dist,
                           open_state_ != OpenState::kClosed && p.span_id == active_span_});
  return out;
}

ImportedDisk::Stats ImportedDisk::stats() const {
  Stats s = stats_;
  if (journal_ != nullptr) {
    const Journal& j = journal_->journal();
    s.journal_bytes = j.bytes_on_disk();
    s.journal_pending = j.pending().size();
    s.journal_pending_bytes = j.pending_bytes();
  }
  s.inflight = queue_.inflight();
  s.resent = queue_.resent();
  s.queued = queue_.waiting() + held_.size();  // held: not yet chunked
  if (s.blocked_since_ms != 0) {
    // The oldest request still waiting: it may have waited on a hung link
    // for the whole --link-timeout before the disk counted as blocked.
    uint64_t oldest = queue_.oldest_start_ms();
    for (const HeldOp& h : held_) oldest = std::min(oldest, h.start_ms);
    if (!open_waiters_.empty()) oldest = std::min(oldest, open_wait_since_ms_);
    const uint64_t now = uv_now(loop_);
    if (oldest != UINT64_MAX && oldest <= now)
      s.blocked_since_ms = std::min(s.blocked_since_ms, WallClockMs() - (now - oldest));
  }
  return s;
}

}  // namespace xdisk
