// LocalDisk: one opened export target (a regular file or a block device) and
// asynchronous, ordered disk I/O on it for the exporter.
//
// The exporter serves BLK_READ / BLK_WRITE / BLK_FLUSH / BLK_FREEBLKS
// (docs/dmsg-protocol.md §7) from a libuv loop. Disk system calls block, so
// every operation runs on the libuv threadpool (uv_queue_work) and completes
// on the loop thread. LocalDisk knows nothing about dmsg: the exporter
// validates requests, calls these methods, and maps the resulting Status to a
// dmsg error itself.
//
// THREAD MODEL
//   * Every public method REQUIRES the loop thread (the thread running
//     uv_run() on the loop given to Open()).
//   * Completion callbacks run on the loop thread, from uv_run(), never from
//     inside the method that submitted the operation. An operation that fails
//     before reaching the disk (read-only disk, range outside the device,
//     CloseWhenIdle() already called) still completes through its callback on
//     a later loop iteration.
//   * Worker threads touch only the operation's own buffers and the immutable
//     fields of the disk (fd, path, size); all bookkeeping stays on the loop
//     thread, so LocalDisk has no locks.
//
// ORDERING GUARANTEES
//   (1) Operations whose byte ranges overlap, and at least one of which
//       modifies data (Write or Trim), run in submission order: the later one
//       is held until every earlier overlapping operation has completed. This
//       gives read-after-write, write-after-write and write-after-read
//       consistency for one client. Operations that do not conflict run
//       concurrently and may complete in any order. Held operations are
//       released in submission order.
//   (2) Flush() is not ordered against other operations. It completes after
//       every Write/Trim whose callback ran before Flush() was called is
//       durable (fdatasync(2) on files, fsync(2) on block devices, issued
//       after the Flush() call). Writes still in flight when Flush() is called
//       are not covered; this is the usual block-device cache-flush contract
//       and what BLK_FLUSH promises (§7.4).
//   (3) At most kMaxJobsPerDisk operations of one disk occupy threadpool
//       threads at once; further ready operations wait in a FIFO on the loop
//       thread. The libuv pool is shared by every disk (and by uv_fs_* and
//       uv_getaddrinfo), and defaults to 4 threads: main() should call
//       SetDefaultThreadpoolSize() before its first libuv call.
//
// LIFETIME
//   * The loop must outlive the LocalDisk. LocalDisk creates no libuv
//     handles, so it never keeps uv_loop_close() from succeeding once its
//     operations have completed.
//   * The destructor REQUIRES in_flight() == 0 and aborts the process
//     otherwise, because worker threads would still use the descriptor and
//     the operation records.
//   * A LocalDisk may be destroyed from inside one of its own callbacks
//     provided in_flight() == 0 at that point (in particular from the
//     CloseWhenIdle() callback). The implementation touches nothing after
//     calling a user callback once the object is gone.
//   * CloseWhenIdle(cb) is the orderly way down: operations submitted after it
//     fail with Status::Unavailable, and cb runs once in_flight() reaches 0.
//
// ERRORS
//   System-call failures become Status::FromErrno with context naming the
//   path, the operation, the offset and the length. A Write or Trim on a
//   read-only disk fails with EROFS. A range that does not lie inside
//   [0, size()) fails with Status::InvalidArgument (the exporter is expected
//   to check ranges first; this is a second line of defence).
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "proto/dmsg.h"
#include "proto/status.h"

namespace xdisk {

class LocalDisk {
 public:
  // Called with the data on success; `data` is empty on error. On success
  // data.size() equals the requested length. Bytes past the end of a regular
  // file that shrank underneath us read as zeros.
  using ReadCallback = std::function<void(Status, dmsg::ByteBuffer data)>;
  using DoneCallback = std::function<void(Status)>;
  using CloseCallback = std::function<void()>;

  // Per-disk cap on threadpool jobs; see guarantee (3) above.
  static constexpr size_t kMaxJobsPerDisk = 8;
  // The threadpool size SetDefaultThreadpoolSize() asks for.
  static constexpr int kSuggestedThreadpoolSize = 16;

  // Sets UV_THREADPOOL_SIZE to kSuggestedThreadpoolSize unless the
  // environment already sets it. libuv reads the variable once, when the pool
  // starts (the first uv_queue_work, uv_fs_* or uv_getaddrinfo call), so this
  // only has an effect if called before that, e.g. first thing in main().
  static void SetDefaultThreadpoolSize();

  // Opens `path` with O_RDWR (O_RDONLY when `read_only`) | O_CLOEXEC. The
  // target must be a regular file or a block device. size() comes from
  // fstat(2) for files and BLKGETSIZE64 for block devices; block_size() is
  // BLKSSZGET for block devices and 512 for files. Runs synchronously on the
  // calling thread (one open and a few ioctls), intended for start-up.
  static Result<std::unique_ptr<LocalDisk>> Open(uv_loop_t* loop, const std::string& path,
                                                 bool read_only);

  ~LocalDisk();
  LocalDisk(const LocalDisk&) = delete;
  LocalDisk& operator=(const LocalDisk&) = delete;

  // Reads `length` bytes at `offset`. REQUIRES: loop thread.
  void Read(uint64_t offset, uint32_t length, ReadCallback cb);

  // Writes all of `data` at `offset` (a pwrite loop that resumes after short
  // writes and EINTR). An empty `data` succeeds without touching the disk.
  // REQUIRES: loop thread.
  void Write(uint64_t offset, dmsg::ByteBuffer data, DoneCallback cb);

  // Makes completed writes durable; see guarantee (2). On a read-only disk it
  // succeeds without a system call. REQUIRES: loop thread.
  void Flush(DoneCallback cb);

  // Discards [offset, offset+length). Afterwards the range reads as zeros.
  // Regular files: hole punching, falling back to writing zeros where the
  // file system cannot punch. Block devices: fallocate(PUNCH_HOLE), which
  // the kernel implements as "zero, unmapping if the device can"; then
  // BLKZEROOUT; then writing zeros. Parts of the range not aligned to
  // block_size() are zeroed with pwrite. REQUIRES: loop thread.
  void Trim(uint64_t offset, uint64_t length, DoneCallback cb);

  // Stops accepting operations and calls `cb` on the loop thread once
  // in_flight() is 0 (on a later loop iteration if it already is). `cb` may
  // destroy the LocalDisk. Calling it twice is a programming error (aborts).
  // REQUIRES: loop thread.
  void CloseWhenIdle(CloseCallback cb);

  // Operations submitted whose callbacks have not yet run, including
  // operations held for ordering and those that failed early.
  size_t in_flight() const { return in_flight_; }

  // True for a regular file on tmpfs or ramfs: its I/O never waits for a
  // device, so a caller may run it on the loop thread with ReadNow/WriteNow
  // when nothing else is in flight, saving two thread hand-offs a request.
  bool memory_backed() const { return memory_backed_; }
  // Synchronous pread/pwrite on the calling thread, bypassing the queue.
  // REQUIRES: loop thread, in_flight() == 0 (so no ordering is bypassed),
  // the range inside the disk, and not read_only() for WriteNow.
  Status ReadNow(uint64_t offset, uint32_t length, dmsg::ByteBuffer* out) const;
  Status WriteNow(uint64_t offset, std::span<const uint8_t> data) const;

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  uint32_t block_size() const { return block_size_; }
  bool is_block_device() const { return is_block_device_; }
  bool read_only() const { return read_only_; }

 private:
  struct Op;
  LocalDisk(uv_loop_t* loop, std::string path, int fd, bool read_only, bool is_block_device,
            uint64_t size, uint32_t block_size);

  void Submit(std::unique_ptr<Op> op);
  void MakeReady(Op* op);
  void Pump();
  void Complete(Op* op);
  static void WorkCb(uv_work_t* req);
  static void AfterWorkCb(uv_work_t* req, int status);
  // Worker-thread bodies; they only read the immutable fields of the disk.
  void DoRead(Op* op) const;
  void DoWrite(Op* op) const;
  void DoFlush(Op* op) const;
  void DoTrim(Op* op) const;
  Status ZeroFill(uint64_t offset, uint64_t length) const;
  std::string Context(const char* what, uint64_t offset, uint64_t length) const;

  uv_loop_t* const loop_;
  const std::string path_;
  const int fd_;
  const bool read_only_;
  const bool is_block_device_;
  const uint64_t size_;
  const uint32_t block_size_;
  bool memory_backed_ = false;

  // Submitted, not yet completed operations, in submission order. Owns them.
  std::list<std::unique_ptr<Op>> pending_;
  // Operations with no blockers left, waiting for a threadpool slot.
  std::list<Op*> ready_;
  size_t running_ = 0;
  size_t in_flight_ = 0;
  bool closing_ = false;
  CloseCallback close_cb_;
  // Expires when the object is destroyed; lets completion code notice that a
  // user callback destroyed the disk.
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

}  // namespace xdisk
