// ImportedDisk: one remote disk, identified by its serial (the spans'
// pfs_label), reachable over one or more paths (RemoteSpans). It implements
// fusedev::BlockDevice on top of dmsg BLK transactions (spec §7.3).
//
// I/O path: each BlockDevice call becomes an Op in the disk's RequestQueue
// (daemon/import/request_queue.h: chunking, overlap ordering, resend order,
// timeouts), cut into chunks of at most kMaxChunkBytes (DragonFly's server
// limit, MAXPHYS) — or kMaxAuxChunkBytes (the protocol's aux limit) when
// the server at the other end of the link is known to be xdisk-fuse, which
// accepts it; each chunk is one BLK_xxx|CREATE|DELETE transaction stacked
// under our BLK_OPEN on the active path, at most kMaxInflight per disk. An
// Op completes (its callback runs once) when all its chunks have.
//
// Paths and outages: the active path is the one DiskPaths picks
// (daemon/import/disk_paths.h: lowest dist). When it goes (span withdrawn, link
// lost, BLK_OPEN lost), every in-flight chunk gets LOSTLINK from the link
// and waits again in its original place; if another path exists the disk
// re-opens on it and resumes, else it blocks: no error reaches the
// application unless --io-timeout is set, in which case Ops older than that
// fail with EIO. When a span with the same serial comes back, the disk
// re-opens (if the FUSE file is open) and resumes.
//
// Unaligned I/O: the remote takes whole blocks only, but the disk file is a
// regular file to its users. A read at any offset and length reads the
// blocks that cover it and hands back the middle. A write that covers a
// block only partly reads those edge blocks (at most two), lays the new
// bytes over them and writes the whole blocks: the reads are queued like
// any read (after earlier overlapping writes), and every request that
// arrives until the whole-block write is queued waits (held, in order), so
// nothing can slip in between the read and the write. An unaligned trim
// trims the whole blocks inside its range and writes zeros over the rest.
// A request the remote refuses fails alone (EIO); it never closes or
// re-opens the disk's BLK_OPEN.
//
// Threading: loop thread only, except the write-back journal's group
// commit (Journal::RunSync, an fdatasync), which runs on the libuv
// threadpool (uv_queue_work) and touches nothing but its batch.
// Lifetime: ImportedDisks live as long as the
// Importer (never destroyed while the FUSE tree may reference them);
// Shutdown() closes the libuv handles before the loop is closed.
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "daemon/base/uv_handle.h"
#include "daemon/import/disk_paths.h"
#include "daemon/import/journal_driver.h"
#include "daemon/import/latency_histogram.h"
#include "daemon/import/request_queue.h"
#include "daemon/link/link.h"
#include "daemon/link/span_registry.h"
#include "fusedev/block_device.h"

namespace xdisk {

class ImportedDisk : public fusedev::BlockDevice, public TransactionHandler {
 public:
  static constexpr uint32_t kMaxChunkBytes = 128 * 1024;
  static constexpr uint32_t kMaxAuxChunkBytes = 1024 * 1024;
  // The largest request the server behind `link` accepts: xdisk-fuse peers
  // (LNK_CONN label "<host>/xdisk-fuse", directly connected) take 1 MiB;
  // anything else, a DragonFly relay in particular, gets 128 KiB.
  static uint32_t ChunkLimit(const Link& link);
  static constexpr size_t kMaxInflight = 64;

  struct Config {
    uint64_t io_timeout_ms = 0;      // 0: block forever
    uint64_t retry_delay_ms = 1000;  // after a refused BLK_OPEN
    SyncMode sync = SyncMode::kRemote;
    // Called (on the loop thread, possibly often) while requests wait for
    // a path: the daemon shortens the reconnect backoff then.
    std::function<void()> on_waiting_for_path;
  };
  ImportedDisk(uv_loop_t* loop, std::string serial, uint64_t size, uint32_t blksize, Config config);
  ~ImportedDisk() override;
  ImportedDisk(const ImportedDisk&) = delete;
  ImportedDisk& operator=(const ImportedDisk&) = delete;

  // Paths. AddPath/RemovePath are called by the Importer from span events.
  void AddPath(const RemoteSpan& span);
  void RemovePath(uint64_t span_id);
  size_t path_count() const { return paths_.size(); }
  bool online() const { return !paths_.empty(); }

  // Journal (daemon/import/journal_driver.h says what each --sync mode does with
  // it; docs/journal-format.md). Reads covered by pending write-back
  // records are answered from the journal; partly covered reads go to the
  // remote and get the journal's bytes (taken at submission) laid over the
  // reply. A write-back record the remote refuses is retried every second,
  // never dropped. If an append fails, the journal is switched off for this
  // disk (logged) and the disk continues as kRemote without one.
  void AttachJournal(std::unique_ptr<Journal> journal);
  const Journal* journal() const { return journal_ ? &journal_->journal() : nullptr; }
  // True while journal records wait to reach the remote.
  bool journal_busy() const;
  // True if reads and writes work without a path (write-back): such a disk
  // stays in the tree while its remote is away.
  bool usable_offline() const { return writeback(); }
  // True while requests (or an open(2)) wait because no path is left.
  bool waiting_for_path() const;
  // True when nothing refers to the disk's present size: no path, not open
  // (no FUSE handle, no open(2) waiting), no request queued, held or on the
  // wire, no journal record pending and no journal sync running. Such a disk
  // may be replaced by one of another size (Importer).
  bool idle() const;
  // Called when the journal has nothing pending any more (after a retire).
  void SetDrainedHook(std::function<void()> hook);

  // Shutdown: queued Ops fail with EIO now, in-flight ones when their link
  // closes (LOSTLINK is no longer retried), and the libuv handles close.
  void Shutdown();

  const std::string& serial() const { return serial_; }

  // Counters for logs, tests and xdiskctl. Ops are counted when submitted,
  // bytes and latency when they complete successfully.
  struct Stats {
    uint64_t queued = 0, inflight = 0;  // requests waiting (chunks or held) / chunks on the wire
    uint64_t reads = 0, writes = 0, flushes = 0, trims = 0;
    uint64_t read_bytes = 0, write_bytes = 0, trim_bytes = 0;
    uint64_t errors = 0;  // ops completed with an error
    uint64_t resent = 0, reopens = 0;
    // While the disk is blocked (no path while requests wait or the file
    // is open): wall-clock ms since the epoch when the oldest request (or
    // open(2)) that still waits was made (it may have waited on a link that hung before
    // the link was given up), or when the disk became blocked if no request
    // waits; 0 when not blocked.
    uint64_t blocked_since_ms = 0;
    // The disk's journal (0 without one): bytes of its segment files, and
    // pending (unretired) records and their write data.
    uint64_t journal_bytes = 0, journal_pending = 0, journal_pending_bytes = 0;
    LatencyHistogram latency[kIoKinds];  // by IoKind: read, write, flush, trim
    LatencyHistogram& latency_of(IoKind k) { return latency[static_cast<int>(k)]; }
    const LatencyHistogram& latency_of(IoKind k) const { return latency[static_cast<int>(k)]; }
  };
  Stats stats() const;
  enum class State { kOnline, kBlocked, kOffline };
  State state() const;
  struct PathInfo {
    std::string link;  // the link's name ("10.0.0.2:987")
    uint32_t dist;
    bool active;  // our BLK_OPEN is on it
  };
  std::vector<PathInfo> paths() const;

  // fusedev::BlockDevice
  uint64_t size() const override { return size_; }
  uint32_t block_size() const override { return blksize_; }
  void Open(DoneFn done) override;
  void Close() override;
  void Read(uint64_t offset, uint32_t length, ReadFn done) override;
  void Write(uint64_t offset, std::span<const uint8_t> data, BufferHold hold, DoneFn done) override;
  void Flush(DoneFn done) override;
  void Trim(uint64_t offset, uint64_t length, DoneFn done) override;

  // TransactionHandler: replies to our BLK_OPEN and to our I/O chunks.
  void OnMessage(Link& link, Transaction& t, dmsg::Frame& f) override;
  void OnFreed(Link& link, Transaction& t) override;

 private:
  enum class OpenState { kClosed, kOpening, kOpen };

  // Unaligned requests (see "Unaligned I/O" in the class comment).
  bool Aligned(uint64_t offset, uint64_t length) const {
    return offset % blksize_ == 0 && length % blksize_ == 0;
  }
  void WriteNow(uint64_t offset, std::span<const uint8_t> data, BufferHold hold, DoneFn done);
  void StartReadModifyWrite(uint64_t offset, std::span<const uint8_t> data, BufferHold hold,
                            DoneFn done);
  void TrimUnaligned(uint64_t offset, uint64_t length, DoneFn done);

  struct Op;  // a QueuedRequest with its callbacks and data (.cc)
  static std::unique_ptr<Op> AsOp(std::unique_ptr<QueuedRequest> r);
  void Submit(std::unique_ptr<Op> op);
  void Enqueue(std::unique_ptr<Op> op);  // Submit without dispatching

  // The journal's part of the request path (see AttachJournal).
  bool writeback() const;
  bool MustHold(IoKind kind) const;
  bool GateClosed(IoKind kind) const;
  void Hold(IoKind kind, std::function<void()> run, std::function<void(int)> fail);
  void ReleaseHeld();
  void DoWrite(uint64_t offset, std::span<const uint8_t> data, BufferHold hold, DoneFn done);
  void DoTrim(uint64_t offset, uint64_t length, DoneFn done);
  void DoFlush(DoneFn done);
  void DoRead(uint64_t offset, uint32_t length, ReadFn done);
  // A write-back append's outcome for `op`: true if the Op was taken care
  // of (refused alone, held behind the journal, or waiting for
  // durability), false if it is to be submitted (the journal went off).
  bool Journaled(std::unique_ptr<Op>& op, JournalDriver::Append append, const std::string& why,
                 std::function<void(DoneFn)> redo);
  // `done` with the request's latency recorded when it runs successfully.
  DoneFn Durable(IoKind kind, DoneFn done);
  void HoldDone(IoKind kind, DoneFn done, std::function<void(DoneFn)> run);
  void FeedJournal();  // the driver's records become background Ops
  void Kick();         // dispatch on the next loop turn, never re-entrantly
  void Dispatch();
  void EnsureOpen();
  Transaction* SendChunk(QueuedChunk& c);  // nullptr: the path is gone
  void ChunkDone(QueuedChunk* c, int err, dmsg::Frame* f);
  void CompleteOp(std::unique_ptr<Op> op);
  void OnOpenReply(const dmsg::Frame& f);
  void OnOpenLost();
  void FinishOpenWaiters(int err);
  void CheckTimeouts();
  void UpdateBlocked();
  static void OnKick(uv_idle_t* h);
  static void OnTick(uv_timer_t* h);

  uv_loop_t* loop_;
  std::string serial_;
  std::string log_name_;
  uint64_t size_;
  uint32_t blksize_;
  Config config_;

  DiskPaths paths_;
  // The path our BLK_OPEN is on, and its transaction.
  uint64_t active_span_ = 0;
  Link* open_link_ = nullptr;
  Transaction* open_txn_ = nullptr;
  OpenState open_state_ = OpenState::kClosed;
  bool wanted_open_ = false;          // between FUSE's Open() and Close()
  std::vector<DoneFn> open_waiters_;  // Open() calls waiting for BLK_OPEN
  uint64_t open_wait_since_ms_ = 0;   // loop time the first of them came
  uint64_t retry_at_ms_ = 0;

  RequestQueue queue_;
  Stats stats_;

  // Requests waiting for the journal's gate or behind a read-modify-write.
  struct HeldOp {
    IoKind kind;
    std::function<void()> run;
    std::function<void(int)> fail;
    uint64_t start_ms;  // for --io-timeout
  };
  std::deque<HeldOp> held_;
  std::unique_ptr<JournalDriver> journal_;
  uint64_t pause_until_ms_ = 0;  // a record to retry: nothing is sent before

  UvHandle<uv_idle_t> kick_;
  UvHandle<uv_timer_t> tick_;
  bool kicked_ = false;
  bool shut_down_ = false;
  // A read-modify-write is between its reads and its write: new requests
  // wait in held_.
  bool rmw_active_ = false;
  bool rmw_writing_ = false;  // its whole-block write is being queued
  // The BLK_OPEN was lost with the disk open: the next one is a re-open.
  bool lost_open_ = false;
};

}  // namespace xdisk
