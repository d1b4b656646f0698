#include "daemon/import/journal_driver.h"

#include <algorithm>
#include <cinttypes>

#include "daemon/base/log.h"

namespace xdisk {

JournalDriver::JournalDriver(uv_loop_t* loop, std::string log_name, SyncMode sync,
                             std::unique_ptr<Journal> journal, std::function<void()> kick)
    : loop_(loop),
      log_name_(std::move(log_name)),
      sync_(sync),
      journal_(std::move(journal)),
      kick_(std::move(kick)) {
  done_prefix_ = journal_->retired_seq();
  feed_next_ = journal_->retired_seq() + 1;
  // The backlog: records of an earlier run, fed before any new request.
  feed_limit_ = journal_->last_seq();
  // Replayed records are durable only after a sync (a killed daemon may
  // have left them in the page cache): write-back starts one now.
  if (sync_ == SyncMode::kJournal && journal_->durable_seq() < journal_->last_seq())
    sync_wanted_ = true;
  if (!journal_->pending().empty())
    XLOG(kInfo, log_name_,
         "journal: %zu pending records (%" PRIu64 " bytes of writes) from an earlier run",
         journal_->pending().size(), journal_->pending_bytes());
  if (sync_ == SyncMode::kRemote) {
    // --sync=remote appends nothing: this journal only drains.
    ok_ = false;
    journal_->Fail("--sync=remote appends no records");
    if (Status st = journal_->DeleteIfDrained(); !st.ok())
      XLOG(kError, log_name_, "%s; writes wait until it is gone", st.ToString().c_str());
  } else if (journal_->failed()) {
    // A journal that opened failed (no new segment) is switched off like
    // one that fails later: what it holds is still sent and retired.
    SwitchOff(journal_->failure());
  }
  kick_();
}

bool JournalDriver::GateClosed(IoKind kind) const {
  if (shut_down_) return false;
  if (writeback()) return Modifies(kind) && journal_->full();  // only for space
  if (!ok_ && Modifies(kind) && !journal_->gone()) return true;
  return feed_next_ <= feed_limit_;  // the backlog is not all fed yet
}

const char* JournalDriver::GateReason() const {
  if (writeback()) return "journal space";
  return feed_next_ <= feed_limit_ ? "the journal's backlog"
                                   : "the switched-off journal's records to be sent and deleted";
}

void JournalDriver::SwitchOff(const std::string& why) {
  XLOG(kError, log_name_,
       "journal: %s; journaling is off for this disk, new writes wait until what it holds "
       "is sent, then go straight to the remote",
       why.c_str());
  ok_ = false;
  journal_->Fail(why);
  if (Status st = journal_->DeleteIfDrained(); !st.ok())
    XLOG(kError, log_name_, "%s; writes wait until it is gone", st.ToString().c_str());
  // What the journal holds still goes out first, in order, and writes
  // already appended complete once their records are durable.
  feed_limit_ = journal_->last_seq();
  if (!sync_failed_) sync_wanted_ = true;
  kick_();
}

// ---- appends (write-back) ----

JournalDriver::Append JournalDriver::AppendWrite(uint64_t offset, std::span<const uint8_t> data,
                                                 DoneFn done, std::string* why) {
  return Appended(journal_->AppendWrite(offset, data), std::move(done), why);
}

JournalDriver::Append JournalDriver::AppendTrim(uint64_t offset, uint64_t length, DoneFn done,
                                                std::string* why) {
  return Appended(journal_->AppendTrim(offset, length), std::move(done), why);
}

JournalDriver::Append JournalDriver::Appended(const Result<uint64_t>& seq, DoneFn done,
                                              std::string* why) {
  if (!seq.ok()) {
    *why = seq.status().message();
    // A request the journal cannot hold (outside the disk) fails by
    // itself; the journal stays on.
    if (seq.status().kind() == Status::Kind::kInvalidArgument) return Append::kRefused;
    SwitchOff(*why);
    return Append::kSwitchedOff;
  }
  durable_waiters_.push_back(DurableWaiter{seq.value(), std::move(done)});
  sync_wanted_ = true;
  kick_();
  return Append::kAccepted;
}

void JournalDriver::WaitDurable(DoneFn done) {
  const uint64_t target = journal_->last_seq();
  if (journal_->durable_seq() >= target) return done(0);
  durable_waiters_.push_back(DurableWaiter{target, std::move(done)});
  sync_wanted_ = true;
  kick_();
}

// ---- the feed ----

bool JournalDriver::Feed(uint64_t now_ms, std::vector<Record>* out) {
  if (shut_down_) return true;
  const bool backlog_before = feed_next_ <= feed_limit_;
  const uint64_t end = writeback() ? journal_->last_seq() : feed_limit_;
  const auto& pending = journal_->pending();
  auto it = std::lower_bound(pending.begin(), pending.end(), feed_next_,
                             [](const JournalPending& r, uint64_t seq) { return r.seq < seq; });
  bool readable = true;
  while (feed_next_ <= end && it != pending.end() && it->seq <= end &&
         feed_bytes_ < kFeedWindowBytes && fed_records_ < kFeedWindowOps) {
    const JournalPending& rec = *it++;
    Record r;
    r.seq = rec.seq;
    r.offset = rec.offset;
    r.length = rec.length;
    switch (rec.kind) {
      case JournalRecordKind::kWrite: {
        auto data = journal_->ReadWriteData(rec);
        if (!data.ok()) {
          // Never skipped: it may be all there is of an acknowledged write.
          XLOG(kError, log_name_, "journal record %" PRIu64 " unreadable, retrying in 1 s: %s",
               rec.seq, data.status().ToString().c_str());
          readable = false;
          break;  // the switch; the loop ends below
        }
        r.kind = IoKind::kWrite;
        r.data = std::make_shared<std::vector<uint8_t>>(std::move(*data));
        r.length = r.data->size();
        feed_bytes_ += r.length;
        break;
      }
      case JournalRecordKind::kTrim:
        r.kind = IoKind::kTrim;
        break;
      case JournalRecordKind::kFlush:
        r.kind = IoKind::kFlush;
        r.length = 0;
        break;
    }
    if (!readable) break;
    feed_next_ = rec.seq + 1;
    ++fed_records_;
    out->push_back(std::move(r));
  }
  // Everything up to `end` is fed once no pending record is left at or
  // below it (seqs replay dropped as damage leave gaps, at the end too).
  if (readable && feed_next_ <= end && (it == pending.end() || it->seq > end)) feed_next_ = end + 1;
  if (backlog_before && feed_next_ > feed_limit_) kick_();  // the backlog gate opens

  // Write-back: a BLK_FLUSH after acknowledged records makes them safe on
  // the remote; they are retired when it is acknowledged. One at a time,
  // when the fed records drained or at least every second.
  if (sync_ == SyncMode::kJournal && !bg_flush_out_ && done_prefix_ > journal_->retired_seq()) {
    const bool drained = fed_records_ == 0;
    if ((drained && !bg_flush_failed_) || now_ms - last_bg_flush_ms_ >= 1000) {
      bg_flush_failed_ = false;
      Record f;
      f.kind = IoKind::kFlush;
      f.flush_target = done_prefix_;
      bg_flush_out_ = true;
      last_bg_flush_ms_ = now_ms;
      ++fed_records_;
      out->push_back(std::move(f));
    }
  }
  // An unreadable record stops the feed, never the flushes and retirement
  // of what went before it.
  return readable;
}

void JournalDriver::Dropped(const Record& r) {
  --fed_records_;
  if (r.kind == IoKind::kWrite) feed_bytes_ -= r.length;
  if (r.flush_target != 0) bg_flush_out_ = false;
}

void JournalDriver::RecordDone(const Record& r, int err) {
  Dropped(r);  // the same accounting: it is no longer out
  if (shut_down_) return;
  if (r.flush_target != 0) {
    if (err == 0) {
      RetireUpTo(r.flush_target);
    } else {
      // Feed() tries again a second after this one.
      XLOG(kWarning, log_name_, "background flush failed; retrying in 1 s");
      bg_flush_failed_ = true;
    }
  } else {
    if (err != 0)
      XLOG(kError, log_name_,
           "the remote refused journal record %" PRIu64 " (%s at %" PRIu64 "+%" PRIu64
           "); it is dropped from the journal",
           r.seq, IoKindName(r.kind), r.offset, r.length);
    MarkDone(r.seq);
  }
  kick_();
}

void JournalDriver::LinkLost() {
  if (sync_ != SyncMode::kJournal) return;
  // What the remote acknowledged without a flush since the last retire may
  // be lost with it (a power loss of the exporting host): everything not
  // retired goes out again, in order, on the next open.
  completed_.clear();
  done_prefix_ = journal_->retired_seq();
  feed_next_ = done_prefix_ + 1;
}

void JournalDriver::MarkDone(uint64_t seq) {
  if (seq == 0) return;
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

void JournalDriver::RetireUpTo(uint64_t seq) {
  if (seq <= journal_->retired_seq()) return;
  if (Status st = journal_->Retire(seq); !st.ok())
    XLOG(kWarning, log_name_, "journal retire: %s", st.ToString().c_str());
  kick_();  // space may have freed, a gate may have opened
  if (journal_->pending().empty() && drained_hook_ && !shut_down_) drained_hook_();
}

// ---- each turn, each second, the end ----

void JournalDriver::Turn() {
  // Retire what the remote finished (kRemote; write-back records need a
  // flush first, see Feed) and start one group commit for everything
  // appended this turn.
  if (sync_ == SyncMode::kRemote && done_prefix_ > journal_->retired_seq())
    RetireUpTo(done_prefix_);
  if (sync_wanted_) StartSync();
}

void JournalDriver::Tick() {
  // A switched-off journal whose files could not be deleted (a read-only
  // file system) holds writes back (GateClosed): try again every second.
  if (!ok_ && journal_->pending().empty() && !journal_->gone() && !shut_down_) {
    if (journal_->DeleteIfDrained().ok()) kick_();
  }
}

void JournalDriver::Shutdown() {
  if (shut_down_) return;
  // Writes whose record is not known to be durable yet fail; their records
  // stay in the journal and are sent after the next start.
  auto waiters = std::move(durable_waiters_);
  durable_waiters_.clear();
  for (DurableWaiter& w : waiters) w.done(EIO);
  shut_down_ = true;
  // kRemote: what the remote answered is done; write-back records need
  // their flush first and stay.
  if (sync_ == SyncMode::kRemote) RetireUpTo(done_prefix_);
  if (journal_->pending().empty()) {
    if (Status st = journal_->RemoveIfEmpty(); !st.ok())
      XLOG(kWarning, log_name_, "journal: %s", st.ToString().c_str());
  }
}

// ---- group commit ----

void JournalDriver::StartSync() {
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

void JournalDriver::OnSyncWork(uv_work_t* w) {
  auto* self = static_cast<JournalDriver*>(w->data);
  self->sync_status_ = Journal::RunSync(&self->sync_batch_);
}

void JournalDriver::OnSyncDone(uv_work_t* w, int) {
  auto* self = static_cast<JournalDriver*>(w->data);
  self->sync_inflight_ = false;
  if (!self->sync_status_.ok()) {
    XLOG(kError, self->log_name_, "journal sync: %s", self->sync_status_.ToString().c_str());
    // Not durable: what waits fails, and the journal is no longer trusted.
    self->sync_failed_ = true;
    if (self->ok_) self->SwitchOff(self->sync_status_.message());
    self->StartSync();
    return;
  }
  self->journal_->SyncDone(self->sync_batch_);
  self->FinishDurable();
  if (self->sync_wanted_) self->StartSync();
}

void JournalDriver::FinishDurable() {
  const uint64_t durable = journal_->durable_seq();
  while (!durable_waiters_.empty() && durable_waiters_.front().seq <= durable) {
    DurableWaiter w = std::move(durable_waiters_.front());
    durable_waiters_.pop_front();
    w.done(0);
  }
}

}  // namespace xdisk
