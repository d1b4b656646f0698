// JournalDriver: how one imported disk uses its journal (daemon/import/journal.h;
// byte layout and guarantees in docs/journal-format.md). ImportedDisk owns
// it and its request queue; the driver decides what goes into the journal,
// which records travel to the remote and when, when they are retired, and
// which new requests must wait behind them. It sends nothing itself: Feed()
// hands out records, the disk queues each as a background request and
// reports its outcome (RecordDone), or that it took it back (Dropped).
//
// Modes (--sync):
//  - kJournal (write-back): writes and trims are appended and complete once
//    their record is durable (group commit: one fdatasync per loop turn on
//    the libuv threadpool); an fsync completes once everything appended is
//    durable. Every pending record is fed to the remote in seq order (at
//    most kFeedWindowBytes / kFeedWindowOps out at a time) and retired after
//    a BLK_FLUSH issued after its acknowledgement was itself acknowledged
//    (when the background queue drained, or at least every second). When
//    the BLK_OPEN is lost, everything not retired is fed again (LinkLost):
//    an exporter that lost power may have lost what it acknowledged but had
//    not flushed. While the journal is full(), writes and trims wait.
//  - kRemote appends nothing: a journal attached then was left by an
//    earlier run (an older version, or --sync=journal) and is switched off
//    at once. Its records (the backlog) are fed first and retired once the
//    remote answered them.
// A journal switched off (kRemote, a failed append or fdatasync, no new
// segment at open) still feeds and retires what it holds; new writes and
// trims wait until all of it is retired and its files are gone (gone()):
// sent beside them, they could be overwritten by a resend of those records
// after a restart. Until the whole backlog is fed, every new request waits.
//
// Threading: loop thread only; the fdatasync runs on the threadpool and
// touches nothing but its batch. Shutdown() before the loop closes; the
// driver must outlive a sync still running (the disk lives as long as the
// Importer, which outlives the loop's last turn).
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "daemon/base/sync_mode.h"
#include "daemon/import/journal.h"
#include "daemon/import/request_queue.h"

namespace xdisk {

class JournalDriver {
 public:
  static constexpr size_t kFeedWindowBytes = 32u << 20;  // write data fed at a time
  static constexpr size_t kFeedWindowOps = 1024;         // records fed at a time

  using DoneFn = std::function<void(int err)>;
  // `kick`: something changed for the disk (a gate opened, a record is
  // ready, space freed): it calls Turn() and dispatches on the next loop
  // turn.
  JournalDriver(uv_loop_t* loop, std::string log_name, SyncMode sync,
                std::unique_ptr<Journal> journal, std::function<void()> kick);
  JournalDriver(const JournalDriver&) = delete;
  JournalDriver& operator=(const JournalDriver&) = delete;

  const Journal& journal() const { return *journal_; }
  // Appends are accepted: write-back with a working journal.
  bool writeback() const { return sync_ == SyncMode::kJournal && ok_; }
  // Records wait to reach the remote.
  bool busy() const { return !journal_->pending().empty(); }
  // Nothing pending, nobody waiting for durability, no sync running.
  bool idle() const { return !busy() && durable_waiters_.empty() && !sync_inflight_; }
  // Called when nothing is pending any more (after a retire).
  void SetDrainedHook(std::function<void()> hook) { drained_hook_ = std::move(hook); }

  // Whether a new request of `kind` must wait now, and the reason in words
  // for the log.
  bool GateClosed(IoKind kind) const;
  const char* GateReason() const;

  // Write-back appends (REQUIRES writeback()).
  enum class Append {
    kAccepted,     // `done` runs once the record is durable (or fails: EIO)
    kRefused,      // the request is invalid for the disk (*why): fail it alone
    kSwitchedOff,  // the append failed: journal off; send the request itself
  };
  Append AppendWrite(uint64_t offset, std::span<const uint8_t> data, DoneFn done, std::string* why);
  Append AppendTrim(uint64_t offset, uint64_t length, DoneFn done, std::string* why);
  // An fsync on a write-back disk: `done` once everything appended so far
  // is durable (at once if it is).
  void WaitDurable(DoneFn done);

  // Read-your-writes (write-back): the journal's bytes for a read.
  uint64_t Covered(uint64_t offset, uint64_t length) const {
    return journal_->Covered(offset, length);
  }
  Status Overlay(uint64_t offset, std::span<uint8_t> buf) { return journal_->Overlay(offset, buf); }
  std::vector<std::pair<uint64_t, uint64_t>> CoveredRanges(uint64_t offset, uint64_t length) const {
    return journal_->CoveredRanges(offset, length);
  }

  // A record to carry to the remote: a pending write, trim or flush
  // (seq != 0), or a background flush (seq 0, flush_target set) after
  // which everything up to flush_target is retired.
  struct Record {
    uint64_t seq = 0;
    IoKind kind = IoKind::kWrite;
    uint64_t offset = 0, length = 0;
    std::shared_ptr<std::vector<uint8_t>> data;  // a write's bytes
    uint64_t flush_target = 0;
  };
  // Appends the records to send now, in order. False if a record could not
  // be read back: nothing may be sent before it; try again in a second.
  bool Feed(uint64_t now_ms, std::vector<Record>* out);
  // A fed record's final answer from the remote (err 0 or an errno): done,
  // and retired in its turn. After Shutdown() only counted.
  void RecordDone(const Record& r, int err);
  // A fed record that was not answered by the remote: taken back unsent
  // (LinkLost comes next), or failed locally at shutdown. It stays pending.
  void Dropped(const Record& r);
  // The BLK_OPEN was lost. Write-back: everything not retired is fed again
  // (the disk has dropped the records still waiting); kRemote: nothing to do.
  void LinkLost();

  void Turn();  // once per loop turn: retire (kRemote), start a group commit
  void Tick();  // once a second: retry deleting a drained switched-off journal
  // Fails what waits for durability (EIO); retires what kRemote finished;
  // removes the journal if nothing is pending.
  void Shutdown();

 private:
  void SwitchOff(const std::string& why);
  Append Appended(const Result<uint64_t>& seq, DoneFn done, std::string* why);
  void MarkDone(uint64_t seq);
  void RetireUpTo(uint64_t seq);
  void StartSync();
  void FinishDurable();
  static void OnSyncWork(uv_work_t* w);
  static void OnSyncDone(uv_work_t* w, int status);

  uv_loop_t* loop_;
  std::string log_name_;
  SyncMode sync_;
  std::unique_ptr<Journal> journal_;
  std::function<void()> kick_;
  std::function<void()> drained_hook_;
  bool shut_down_ = false;

  bool ok_ = true;                // appends allowed
  uint64_t feed_next_ = 1;        // next seq to feed
  uint64_t feed_limit_ = 0;       // the backlog's last seq (new requests wait behind it)
  size_t feed_bytes_ = 0;         // write data of fed records not yet answered
  size_t fed_records_ = 0;        // fed records (and flushes) not yet answered
  std::set<uint64_t> completed_;  // seqs done on the remote, above done_prefix_
  uint64_t done_prefix_ = 0;      // every pending seq <= this is done remotely
  bool bg_flush_out_ = false;
  bool bg_flush_failed_ = false;
  uint64_t last_bg_flush_ms_ = 0;

  struct DurableWaiter {
    uint64_t seq;
    DoneFn done;
  };
  std::deque<DurableWaiter> durable_waiters_;
  uv_work_t sync_work_;
  Journal::SyncBatch sync_batch_;
  Status sync_status_;
  bool sync_inflight_ = false;
  bool sync_wanted_ = false;
  bool sync_failed_ = false;
};

}  // namespace xdisk
