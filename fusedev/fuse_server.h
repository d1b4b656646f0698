// FuseServer: serves a DiskTree through the low-level libfuse API, driven
// from a libuv loop that the caller owns. Each disk is a regular file whose
// reads, writes, fsyncs and hole punches go to its BlockDevice.
//
// THREAD MODEL
// - Every public method except RequestStop() must be called on the loop
//   thread. Every FUSE request is read and handled on the loop thread
//   (fuse_session_fd() watched by a uv_poll_t); every callback to the owner
//   (log, on_exit) runs on the loop thread.
// - One private helper thread sends kernel cache invalidations
//   (fuse_lowlevel_notify_inval_entry/_inode). They must not be written from
//   the thread that answers requests: the kernel takes the parent
//   directory's lock to invalidate, and a process holding that lock may be
//   waiting for a lookup only the loop thread can answer. The helper touches
//   nothing but a queue and the session, and is joined before unmount.
// - PR_SET_IO_FLUSHER is set on the thread that calls Start() (the loop
//   thread) so that memory reclaim never waits on the server that must make
//   progress for it (a loop device over our file is the classic case).
//
// LIFECYCLE
//
//   FuseServer(...)          nothing mounted, no handles.
//     |
//   Start() --error--> returns errno; nothing mounted; on_exit never runs;
//     |                the server may be destroyed at once.
//     | 0
//   RUNNING: requests served; DiskTree changes invalidate kernel caches.
//     |
//   Stop() (loop thread), RequestStop() (any thread, signal handler),
//   external unmount (`fusermount3 -u`, `umount`), or a fatal /dev/fuse error
//     |
//   STOPPING: 1. the notifier thread ends (requests are still served meanwhile);
//             2. stop reading /dev/fuse, fuse_session_unmount (lazy as root:
//                files still open, e.g. by a loop device, get ENOTCONN);
//             3. wait until every BlockDevice callback for a request already
//                handed to a device has run (their replies are dropped);
//             4. BlockDevice::Close() for each disk still open; DiskTree open
//                refs dropped; fuse_session_destroy; handles closed.
//     |
//   on_exit(status) -- the last thing the server does; the owner may destroy
//                      the server inside it. status is 0 for Stop, RequestStop
//                      and an external unmount, else a positive errno.
//
// Step 3 is bounded by the devices: a remote device completes with EIO after
// its I/O timeout, so Stop cannot outlast that.
//
// ADOPTION (a restarted daemon keeps the mount)
// The kernel keeps a FUSE connection while any process holds its /dev/fuse
// descriptor, and gives requests nobody read to whoever reads next. So a
// keeper process (daemon/import/keeper.h) or systemd's fd store holds a copy of the
// descriptor, and a restarted server takes the mount over instead of
// mounting: Options::adopt_fd names the inherited descriptor. The kernel
// sends FUSE_INIT only once, so the first server keeps its raw bytes
// (session_state().init_request) and a restarted one replays them through
// libfuse to reach the same negotiated state; before that it writes
// FUSE_NOTIFY_RESEND (if the kernel announced FUSE_HAS_RESEND) so that every
// request the dead server read but never answered comes again (with bit 63
// of its unique set; block reads and writes are safe to run twice). File
// handles are disk inode numbers, so the handles the kernel still holds
// (Options::restored_handles, from session_state().handles) mean the same
// device; a handle the new server does not know but whose number is a disk
// inode is taken as restored too. The DiskTree's identity (disk_tree.h)
// must be restored before Start().
//
// Detach() is the stop for a restart: requests are no longer read, nothing
// is unmounted, and device callbacks that fail after it (the importer's
// shutdown fails what is queued) are dropped instead of answered, so the
// kernel gives those requests to the next server; successful ones are
// answered. detached_fd() then holds a descriptor of the live mount.
//
// REQUESTS
// Each fuse_req_t is answered exactly once, often later from a BlockDevice
// callback. Writes are acknowledged only when BlockDevice::Write completed
// (no writeback cache: write-through). fsync and fdatasync map to
// BlockDevice::Flush; FUSE flush (close) answers at once, because every
// write was already acknowledged by the device. See fuse_server.cc for the
// per-operation error codes.
//
// LIFETIME
// - `loop` and `tree` must outlive the server. Every BlockDevice reachable
//   through the tree must stay alive until on_exit ran (or the disk was
//   closed and replaced).
// - While started, the server owns the tree's change hook.
// - libfuse's log function is process-global: the server routes it to its
//   LogFn between Start() and the end of the stop. Run one server per process.
#pragma once

#include <uv.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fusedev/block_device.h"
#include "fusedev/disk_tree.h"

struct fuse_session;
struct fuse_req;

namespace xdisk::fusedev {

// A libuv handle with exactly one owner; defined in fuse_server.cc.
template <typename H>
struct HandleBox;

enum class LogLevel { kDebug, kInfo, kWarning, kError };
using LogFn = std::function<void(LogLevel level, const std::string& message)>;

class FuseServer {
 public:
  struct Options {
    std::string mountpoint;
    // Each entry is passed to libfuse as `-o ENTRY` (allow_other, fsname=...,
    // max_read=...). The server always adds default_permissions (the kernel
    // enforces TreeAttrs' mode/uid/gid; without it allow_other would let every
    // user open every disk) and fsname=xdisk,subtype=xdisk unless overridden.
    std::vector<std::string> mount_options;
    // Open every disk with FOPEN_DIRECT_IO (see fuse_server.cc for why).
    bool direct_io = true;
    // Kernel cache lifetimes in seconds. Removals are invalidated explicitly,
    // so these only bound staleness if an invalidation races a lookup.
    double entry_timeout = 1.0;
    double attr_timeout = 1.0;
    // Kernel limit on outstanding async requests (async reads, async direct
    // I/O); the kernel default of 12 caps queue depth for loop devices.
    unsigned max_background = 64;
    bool debug = false;  // libfuse request tracing on stderr.
    // ADOPTION: the /dev/fuse descriptor of a live mount at `mountpoint`
    // made by an earlier process (-1: mount anew), the raw FUSE_INIT request
    // its first server saw, and the open handles the kernel holds (disk
    // inode -> count). The server owns adopt_fd from Start() on.
    int adopt_fd = -1;
    std::string init_request;
    std::map<Ino, int> restored_handles;
  };

  // What a restarted server needs from this one (see ADOPTION).
  struct SessionState {
    std::string init_request;  // empty until the kernel's FUSE_INIT arrived
    std::map<Ino, int> handles;  // open file handles by disk inode
  };

  // status: 0 for a clean stop or external unmount, else a positive errno.
  using ExitFn = std::function<void(int status)>;

  FuseServer(uv_loop_t* loop, DiskTree* tree, Options options, LogFn log, ExitFn on_exit);
  // Allowed before Start(), after a failed Start(), and from or after on_exit.
  // Handles still open are closed and freed by the loop later, so the owner
  // must run the loop before uv_loop_close().
  ~FuseServer();
  FuseServer(const FuseServer&) = delete;
  FuseServer& operator=(const FuseServer&) = delete;

  // Creates the session, mounts, and starts serving. Returns 0 or a positive
  // errno, with a message in *error. Call at most once.
  int Start(std::string* error);

  // Begins the stop sequence (see LIFECYCLE). Idempotent; safe from any loop
  // callback, including a uv_signal_t callback.
  void Stop();
  // Stop for a restart (see ADOPTION): no unmount, failed requests are left
  // to the kernel to resend. on_exit(0) as for Stop().
  void Detach();
  // After on_exit of a detached server: a descriptor of the still-mounted
  // connection, owned by the caller (O_CLOEXEC set); -1 otherwise.
  int detached_fd() const { return detached_fd_; }

  // Runs on the loop thread whenever session_state() changed: after the
  // kernel's FUSE_INIT, and after an open handle was counted (before the
  // open is answered) or released.
  void SetStateHook(std::function<void()> fn) { state_hook_ = std::move(fn); }
  SessionState session_state() const;
  // True once Start() adopted a mount rather than mounting.
  bool adopted() const { return adopted_; }
  // What the kernel announced in FUSE_INIT: whether it can resend requests
  // a dead server never answered (Linux 6.9+). False before INIT.
  bool resend_supported() const { return resend_supported_; }
  // The /dev/fuse descriptor while running (for a keeper or fd store to
  // hold a copy of); -1 otherwise.
  int fd() const;

  // Async-signal-safe and thread-safe: asks the loop to Stop(). Valid only
  // between a successful Start() and on_exit.
  void RequestStop();

  bool running() const { return state_ == State::kRunning; }

  // Warns through `log` for each `dir`/*request_timeout file holding a
  // non-zero value (Linux 6.15+ aborts the whole connection when a request
  // takes longer, which defeats parking I/O during an outage). Start() calls
  // it for /proc/sys/fs/fuse. Returns the number of warnings.
  static int WarnOnRequestTimeouts(const LogFn& log, const std::string& dir = "/proc/sys/fs/fuse");

  // Counters, for logs and tests (loop thread).
  struct Stats {
    uint64_t inflight = 0;  // Requests waiting for a BlockDevice callback.
    uint64_t reads = 0, writes = 0, flushes = 0, trims = 0, opens = 0;
    uint64_t notify_errors = 0;
    uint64_t resent = 0;  // requests the kernel gave again after a restart
  };
  Stats stats() const;

  // Internal: the libfuse trampolines (struct Ops in fuse_server.cc) and the
  // handle boxes reach the server through these. Not for owners.
  struct Ops;
  friend struct Ops;
  void OnHandleClosed(bool is_poll);
  void OnPoll(int status);
  void OnAsync();

 private:
  enum class State { kNew, kRunning, kDrainingNotifier, kTeardown, kClosing, kStopped };
  // Per-disk open state: the first open calls BlockDevice::Open and later
  // opens wait in `waiters` for its result.
  struct OpenDisk {
    BlockDevice* dev = nullptr;  // The device that was opened; used until Close.
    bool ready = false;          // Open() completed with 0.
    int handles = 0;             // Replied opens not yet released.
    std::vector<fuse_req*> waiters;
  };

  void BeginTeardown();
  // Answers an error, or drops the request after Detach() (see ADOPTION).
  void ReplyErr(fuse_req* req, int err);
  // The device of an open handle; after a restart, also of a handle the
  // kernel kept from the earlier server (fh = disk inode).
  BlockDevice* DeviceFor(uint64_t fh);
  void RestoreHandles(Ino ino, int count);
  void NotifyState() {
    if (state_hook_) state_hook_();
  }
  int Adopt(std::string* error);
  void MaybeFinish();
  void Finish();
  void Kick();  // Wakes the loop to re-check the stop sequence.
  void Log(LogLevel level, const std::string& msg) const {
    if (log_) log_(level, msg);
  }
  void Enqueue(const TreeChange& change);
  void NotifierMain(uv_async_t* wake);
  // The device of an open handle (fh = disk inode), or nullptr.
  BlockDevice* OpenDevice(uint64_t fh) const;
  void ReleaseHandle(Ino ino);
  void OnDeviceOpened(Ino ino, int err);
  // Replies to an open with a handle already counted in OpenDisk::handles;
  // false if the kernel rejected the reply (interrupted open).
  bool SendOpen(fuse_req* req, Ino ino);
  // Receive buffers: a write keeps its buffer until the device completes
  // and every BufferHold on it is gone; then it returns to the spare pool.
  // The pool outlives the server while holds remain.
  struct SparePool;
  void* TakeSpare();
  BlockDevice::BufferHold HoldBuffer(void* mem, bool pooled);

  uv_loop_t* loop_;
  DiskTree* tree_;
  Options opts_;
  LogFn log_;
  ExitFn on_exit_;
  State state_ = State::kNew;
  int exit_status_ = 0;
  struct fuse_session* se_ = nullptr;
  bool mounted_ = false;
  bool adopted_ = false;
  bool detach_ = false;
  int detached_fd_ = -1;
  bool resend_supported_ = false;
  std::string init_request_;
  std::function<void()> state_hook_;

  // Owned handles, freed by their close callbacks; nullptr once closed.
  HandleBox<uv_poll_t>* poll_ = nullptr;
  HandleBox<uv_async_t>* async_ = nullptr;
  std::atomic<bool> stop_requested_{false};

  // Current receive buffer (malloc'd by libfuse) and the length of the
  // request in it; spare buffers come back once their write's last
  // BufferHold is gone.
  void* rx_mem_ = nullptr;
  size_t rx_len_ = 0;
  std::shared_ptr<SparePool> spare_;

  uint64_t inflight_ = 0;
  Stats stats_;
  std::map<Ino, OpenDisk> open_;
  std::map<uint64_t, std::vector<DirEntry>> dir_handles_;
  uint64_t next_dir_handle_ = 1;

  // Notifier thread state (guarded by mu_ except the atomics).
  std::thread notifier_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<TreeChange> queue_;
  bool notifier_quit_ = false;
  std::atomic<bool> notifier_done_{false};
  std::atomic<uint64_t> notify_errors_{0};
};

}  // namespace xdisk::fusedev
