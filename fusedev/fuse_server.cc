#include "fusedev/fuse_server.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <span>

#include "fusedev/fuse_compat.h"
#include "fusedev/fuse_wire.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

namespace xdisk::fusedev {

// Design choices, with reasons (the contracts are in fuse_server.h):
//
// direct_io: every open is answered with FOPEN_DIRECT_IO by default. The
// file stands for a disk; whatever sits on top (a loop device, mkfs, a
// filesystem) has its own cache, so a FUSE page cache would only double the
// memory and add a second place where dirty data can wait for a daemon that
// may be stuck on the network. With direct_io every read and write becomes a
// FUSE request sized by the caller (up to max_write = 1 MiB), O_DIRECT and
// `losetup --direct-io=on` work, and an EIO from the remote disk reaches the
// caller of that very write. keep_cache is therefore 0: there is no cached
// data to keep. The cost: no shared mmap of the file and no readahead for
// small buffered reads; neither matters for a disk image.
//
// Errors: out-of-range I/O behaves like a block device node. A read at or
// past the end returns 0 bytes; a read that crosses it is shortened. A write
// at or past the end fails with ENOSPC; a write that crosses it is
// shortened. ftruncate to another size fails with EINVAL (as on a block
// device); to the same size it succeeds. O_TRUNC on open is ignored, again
// as on a block device (FUSE_CAP_ATOMIC_O_TRUNC hands it to open instead of
// sending a truncate). chmod/chown that change anything fail with EPERM: mode
// and owner come from the daemon's configuration for every disk alike;
// timestamps are accepted and ignored. Creating, removing or renaming names
// fails with EPERM: the tree belongs to the daemon. fallocate: only
// PUNCH_HOLE|KEEP_SIZE (what a loop device sends for discard) reaches the
// device as Trim; mode 0 and KEEP_SIZE within the media succeed as no-ops
// (every byte is already allocated), mode 0 beyond it fails with EFBIG;
// anything else is EOPNOTSUPP.

enum class HandleState { kOpen, kClosing, kClosed };

// One libuv handle with one owner. Memory is freed only in the close
// callback; if the server is destroyed first, `owner` is cleared and the
// box frees itself when the loop runs the callback.
template <typename H>
struct HandleBox {
  H h{};
  HandleState state = HandleState::kOpen;
  FuseServer* owner = nullptr;
  bool is_poll = false;

  HandleBox() = default;
  HandleBox(const HandleBox&) = delete;
  HandleBox& operator=(const HandleBox&) = delete;

  void Close() {
    if (state != HandleState::kOpen) return;
    state = HandleState::kClosing;
    uv_close(reinterpret_cast<uv_handle_t*>(&h), &HandleBox::OnClose);
  }
  static void OnClose(uv_handle_t* handle) {
    auto* self = static_cast<HandleBox*>(handle->data);
    assert(self->state == HandleState::kClosing);
    self->state = HandleState::kClosed;
    FuseServer* owner = self->owner;
    bool is_poll = self->is_poll;
    delete self;
    if (owner) owner->OnHandleClosed(is_poll);
  }
};

namespace {

// 1 MiB requests. libfuse 3.14 has no max_pages knob: do_init derives
// max_pages from max_write ((max_write - 1) / page + 1 = 256) and its receive
// buffer is FUSE_MAX_MAX_PAGES (256) pages plus a header, so 1 MiB fits.
constexpr unsigned kMaxWrite = 1u << 20;
constexpr size_t kMaxSpareBuffers = 8;
// Bounded batch per poll wakeup so one busy mount cannot starve the rest of
// the loop; the poll is level-triggered and fires again.
constexpr int kMaxRequestsPerWakeup = 64;

// libfuse's log hook is process-global; it forwards to the running server.
LogFn* g_fuse_log = nullptr;

void FuseLogTrampoline(enum fuse_log_level level, const char* fmt, va_list ap) {
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  size_t n = strlen(buf);
  while (n > 0 && buf[n - 1] == '\n') buf[--n] = '\0';
  LogLevel l = level <= FUSE_LOG_ERR       ? LogLevel::kError
               : level == FUSE_LOG_WARNING ? LogLevel::kWarning
               : level == FUSE_LOG_DEBUG   ? LogLevel::kDebug
                                           : LogLevel::kInfo;
  if (g_fuse_log && *g_fuse_log) {
    (*g_fuse_log)(l, std::string("libfuse: ") + buf);
  } else {
    fprintf(stderr, "libfuse: %s\n", buf);
  }
}

FuseServer* Server(fuse_req_t req) { return static_cast<FuseServer*>(fuse_req_userdata(req)); }

bool HasOption(const std::vector<std::string>& opts, std::string_view key) {
  for (const std::string& o : opts) {
    size_t start = 0;
    while (start <= o.size()) {
      size_t comma = o.find(',', start);
      std::string_view item(o.data() + start,
                            (comma == std::string::npos ? o.size() : comma) - start);
      if (item.substr(0, key.size()) == key) return true;
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  return false;
}

}  // namespace

struct FuseServer::Ops {
  static void Init(void* userdata, struct fuse_conn_info* conn) {
    auto* s = static_cast<FuseServer*>(userdata);
    conn->max_write = kMaxWrite;
    auto want = [conn](unsigned cap) {
      if (conn->capable & cap) conn->want |= cap;
    };
    // Many reads and direct I/Os in flight at once; the loop device and the
    // remote disk both like queue depth.
    want(FUSE_CAP_ASYNC_READ);
    want(FUSE_CAP_ASYNC_DIO);
    want(FUSE_CAP_ATOMIC_O_TRUNC);
    // No writeback cache: a write is acknowledged only once the device has
    // it. No splice: requests are parsed from one plain buffer that a write
    // can keep until its device completion.
    conn->want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE |
                    FUSE_CAP_SPLICE_MOVE);
    conn->max_background = s->opts_.max_background;
    conn->congestion_threshold = s->opts_.max_background * 3 / 4;
    char msg[160];
    snprintf(msg, sizeof msg, "fuse: protocol %u.%u, max_write %u, max_background %u, want 0x%x",
             conn->proto_major, conn->proto_minor, conn->max_write, conn->max_background,
             conn->want);
    s->Log(LogLevel::kInfo, msg);
  }

  static void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    FuseServer* s = Server(req);
    auto ino = s->tree_->Lookup(parent, name);
    if (!ino) {
      // No negative caching: a disk that appears is found at once.
      fuse_reply_err(req, ENOENT);
      return;
    }
    struct fuse_entry_param e {};
    e.ino = *ino;
    s->tree_->GetAttr(*ino, &e.attr);
    e.attr_timeout = s->opts_.attr_timeout;
    e.entry_timeout = s->opts_.entry_timeout;
    s->tree_->AddLookup(*ino, 1);
    // A reply the kernel rejected (interrupted lookup) takes no reference.
    if (fuse_reply_entry(req, &e) != 0) s->tree_->Forget(*ino, 1);
  }

  static void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
    Server(req)->tree_->Forget(ino, nlookup);
    fuse_reply_none(req);
  }

  static void ForgetMulti(fuse_req_t req, size_t count, struct fuse_forget_data* forgets) {
    FuseServer* s = Server(req);
    for (size_t i = 0; i < count; i++) s->tree_->Forget(forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
  }

  static void GetAttr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info*) {
    FuseServer* s = Server(req);
    struct stat st;
    if (!s->tree_->GetAttr(ino, &st)) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    fuse_reply_attr(req, &st, s->opts_.attr_timeout);
  }

  static void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                      struct fuse_file_info*) {
    FuseServer* s = Server(req);
    struct stat st;
    if (!s->tree_->GetAttr(ino, &st)) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    if (((to_set & FUSE_SET_ATTR_MODE) && (attr->st_mode & 07777) != (st.st_mode & 07777)) ||
        ((to_set & FUSE_SET_ATTR_UID) && attr->st_uid != st.st_uid) ||
        ((to_set & FUSE_SET_ATTR_GID) && attr->st_gid != st.st_gid)) {
      fuse_reply_err(req, EPERM);
      return;
    }
    if (to_set & FUSE_SET_ATTR_SIZE) {
      if (S_ISDIR(st.st_mode)) {
        fuse_reply_err(req, EISDIR);
        return;
      }
      if (attr->st_size != st.st_size) {
        fuse_reply_err(req, EINVAL);
        return;
      }
    }
    fuse_reply_attr(req, &st, s->opts_.attr_timeout);
  }

  static void Access(fuse_req_t req, fuse_ino_t ino, int) {
    // default_permissions is always on, so the kernel checks modes itself and
    // rarely asks; answer for existence only.
    struct stat st;
    fuse_reply_err(req, Server(req)->tree_->GetAttr(ino, &st) ? 0 : ENOENT);
  }

  static void Open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info*) {
    FuseServer* s = Server(req);
    if (s->tree_->IsDir(ino)) {
      fuse_reply_err(req, EISDIR);
      return;
    }
    if (!s->tree_->IsDisk(ino)) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    auto it = s->open_.find(ino);
    BlockDevice* dev = s->tree_->device(ino);
    if (it == s->open_.end() && (!s->tree_->IsVisible(ino) || !dev)) {
      // The kernel still had a dentry for a disk that went away.
      fuse_reply_err(req, ENXIO);
      return;
    }
    // Take the tree reference now, so the disk stays visible while a slow
    // BlockDevice::Open is in flight.
    s->tree_->OpenRef(ino);
    s->stats_.opens++;
    OpenDisk& od = s->open_[ino];
    if (od.ready) {
      od.handles++;
      s->NotifyState();  // Saved before the kernel holds the handle.
      if (!s->SendOpen(req, ino)) s->ReleaseHandle(ino);
      return;
    }
    od.waiters.push_back(req);
    if (od.waiters.size() > 1) return;  // An Open() is already in flight.
    od.dev = dev;
    s->inflight_++;
    dev->Open([s, ino](int err) { s->OnDeviceOpened(ino, err); });
  }

  static void Release(fuse_req_t req, fuse_ino_t, struct fuse_file_info* fi) {
    Server(req)->ReleaseHandle(fi->fh);
    fuse_reply_err(req, 0);
  }

  // The device of an open handle for I/O at `off`; nullptr after answering
  // EBADF (not open) or EINVAL (negative offset).
  static BlockDevice* DeviceAt(fuse_req_t req, struct fuse_file_info* fi, off_t off) {
    BlockDevice* dev = Server(req)->DeviceFor(fi->fh);
    if (!dev) {
      fuse_reply_err(req, EBADF);
      return nullptr;
    }
    if (off < 0) {
      fuse_reply_err(req, EINVAL);
      return nullptr;
    }
    return dev;
  }

  static void Read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, struct fuse_file_info* fi) {
    FuseServer* s = Server(req);
    BlockDevice* dev = DeviceAt(req, fi, off);
    if (!dev) return;
    uint64_t end = dev->size();
    if (static_cast<uint64_t>(off) >= end || size == 0) {
      fuse_reply_buf(req, nullptr, 0);
      return;
    }
    auto len = static_cast<uint32_t>(std::min<uint64_t>(size, end - off));
    s->inflight_++;
    s->stats_.reads++;
    dev->Read(off, len, [s, req, len](int err, std::span<const uint8_t> data) {
      s->inflight_--;
      if (err || data.size() != len) {
        s->ReplyErr(req, err ? err : EIO);
      } else {
        fuse_reply_buf(req, reinterpret_cast<const char*>(data.data()), data.size());
      }
      s->Kick();
    });
  }

  static void Write(fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off,
                    struct fuse_file_info* fi) {
    FuseServer* s = Server(req);
    BlockDevice* dev = DeviceAt(req, fi, off);
    if (!dev) return;
    if (size == 0) {
      fuse_reply_write(req, 0);
      return;
    }
    uint64_t end = dev->size();
    if (static_cast<uint64_t>(off) >= end) {
      fuse_reply_err(req, ENOSPC);
      return;
    }
    size_t len = std::min<uint64_t>(size, end - off);
    // The data lives in the receive buffer. Rather than copy up to 1 MiB,
    // the write takes the whole buffer and the next receive gets another
    // one; the buffer comes back to the spare pool when the last
    // BufferHold on it goes (the socket may still be sending from it after
    // the write completed).
    void* owned;
    bool pooled;
    auto base = reinterpret_cast<uintptr_t>(s->rx_mem_);
    auto p = reinterpret_cast<uintptr_t>(buf);
    if (s->rx_mem_ && p >= base && p + len <= base + s->rx_len_) {
      owned = s->rx_mem_;
      pooled = true;
      s->rx_mem_ = nullptr;
    } else {
      owned = malloc(len);
      if (!owned) {
        fuse_reply_err(req, ENOMEM);
        return;
      }
      memcpy(owned, buf, len);
      buf = static_cast<const char*>(owned);
      pooled = false;
    }
    s->inflight_++;
    s->stats_.writes++;
    std::span<const uint8_t> data(reinterpret_cast<const uint8_t*>(buf), len);
    BlockDevice::BufferHold hold = s->HoldBuffer(owned, pooled);
    // The callback's copy of the hold keeps the data valid until it runs.
    dev->Write(off, data, hold, [s, req, len, hold](int err) {
      s->inflight_--;
      if (err) {
        s->ReplyErr(req, err);
      } else {
        fuse_reply_write(req, len);
      }
      s->Kick();
    });
  }

  static void Flush(fuse_req_t req, fuse_ino_t, struct fuse_file_info*) {
    // close(): every write was acknowledged by the device already; durability
    // is fsync's job, as for any file.
    fuse_reply_err(req, 0);
  }

  static void Fsync(fuse_req_t req, fuse_ino_t, int, struct fuse_file_info* fi) {
    FuseServer* s = Server(req);
    BlockDevice* dev = s->DeviceFor(fi->fh);
    if (!dev) {
      fuse_reply_err(req, EBADF);
      return;
    }
    // fsync and fdatasync alike: there is no metadata apart from the data.
    s->inflight_++;
    s->stats_.flushes++;
    dev->Flush([s, req](int err) {
      s->inflight_--;
      s->ReplyErr(req, err);
      s->Kick();
    });
  }

  static void Fallocate(fuse_req_t req, fuse_ino_t, int mode, off_t offset, off_t length,
                        struct fuse_file_info* fi) {
    FuseServer* s = Server(req);
    BlockDevice* dev = s->DeviceFor(fi->fh);
    if (!dev) {
      fuse_reply_err(req, EBADF);
      return;
    }
    if (offset < 0 || length <= 0) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    uint64_t end = dev->size();
    uint64_t off = offset, len = length;
    if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
      if (off >= end) {
        fuse_reply_err(req, 0);
        return;
      }
      len = std::min(len, end - off);
      s->inflight_++;
      s->stats_.trims++;
      dev->Trim(off, len, [s, req](int err) {
        s->inflight_--;
        s->ReplyErr(req, err);
        s->Kick();
      });
      return;
    }
    if (mode == 0 || mode == FALLOC_FL_KEEP_SIZE) {
      bool beyond = len > end || off > end - len;
      fuse_reply_err(req, mode == 0 && beyond ? EFBIG : 0);
      return;
    }
    fuse_reply_err(req, EOPNOTSUPP);
  }

  static void OpenDir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
    FuseServer* s = Server(req);
    std::vector<DirEntry> list;
    if (!s->tree_->ReadDir(ino, &list)) {
      fuse_reply_err(req, s->tree_->IsDisk(ino) ? ENOTDIR : ENOENT);
      return;
    }
    // A snapshot per opendir: offsets stay meaningful while disks come and go.
    uint64_t id = s->next_dir_handle_++;
    s->dir_handles_[id] = std::move(list);
    fi->fh = id;
    if (fuse_reply_open(req, fi) != 0) s->dir_handles_.erase(id);
  }

  static void ReadDir(fuse_req_t req, fuse_ino_t, size_t size, off_t off,
                      struct fuse_file_info* fi) {
    FuseServer* s = Server(req);
    auto it = s->dir_handles_.find(fi->fh);
    if (it == s->dir_handles_.end()) {
      fuse_reply_err(req, EBADF);
      return;
    }
    const std::vector<DirEntry>& list = it->second;
    std::vector<char> buf(size);
    size_t used = 0;
    for (size_t i = off < 0 ? 0 : static_cast<size_t>(off); i < list.size(); i++) {
      struct stat st {};
      st.st_ino = list[i].ino;
      st.st_mode = list[i].is_dir ? S_IFDIR : S_IFREG;
      size_t need = fuse_add_direntry(req, buf.data() + used, size - used, list[i].name.c_str(),
                                      &st, static_cast<off_t>(i + 1));
      if (need > size - used) break;
      used += need;
    }
    fuse_reply_buf(req, buf.data(), used);
  }

  static void ReleaseDir(fuse_req_t req, fuse_ino_t, struct fuse_file_info* fi) {
    Server(req)->dir_handles_.erase(fi->fh);
    fuse_reply_err(req, 0);
  }

  static void FsyncDir(fuse_req_t req, fuse_ino_t, int, struct fuse_file_info*) {
    fuse_reply_err(req, 0);
  }

  static void StatFs(fuse_req_t req, fuse_ino_t) {
    FuseServer* s = Server(req);
    struct statvfs sv {};
    sv.f_bsize = 4096;
    sv.f_frsize = 4096;
    sv.f_blocks = s->tree_->visible_bytes() / 4096;
    sv.f_files = s->tree_->visible_disks();
    sv.f_namemax = 255;
    fuse_reply_statfs(req, &sv);
  }

  // The namespace belongs to the daemon.
  static void Mknod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) {
    fuse_reply_err(req, EPERM);
  }
  static void Mkdir(fuse_req_t req, fuse_ino_t, const char*, mode_t) { fuse_reply_err(req, EPERM); }
  static void Unlink(fuse_req_t req, fuse_ino_t, const char*) { fuse_reply_err(req, EPERM); }
  static void Symlink(fuse_req_t req, const char*, fuse_ino_t, const char*) {
    fuse_reply_err(req, EPERM);
  }
  static void Rename(fuse_req_t req, fuse_ino_t, const char*, fuse_ino_t, const char*,
                     unsigned int) {
    fuse_reply_err(req, EPERM);
  }
  static void Link(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) {
    fuse_reply_err(req, EPERM);
  }
  static void Create(fuse_req_t req, fuse_ino_t, const char*, mode_t, struct fuse_file_info*) {
    fuse_reply_err(req, EPERM);
  }

  static const struct fuse_lowlevel_ops& Table() {
    static const struct fuse_lowlevel_ops ops = [] {
      struct fuse_lowlevel_ops o {};
      o.init = Init;
      o.lookup = Lookup;
      o.forget = Forget;
      o.forget_multi = ForgetMulti;
      o.getattr = GetAttr;
      o.setattr = SetAttr;
      o.access = Access;
      o.open = Open;
      o.release = Release;
      o.read = Read;
      o.write = Write;
      o.flush = Flush;
      o.fsync = Fsync;
      o.fallocate = Fallocate;
      o.opendir = OpenDir;
      o.readdir = ReadDir;
      o.releasedir = ReleaseDir;
      o.fsyncdir = FsyncDir;
      o.statfs = StatFs;
      o.mknod = Mknod;
      o.mkdir = Mkdir;
      o.unlink = Unlink;
      o.rmdir = Unlink;
      o.symlink = Symlink;
      o.rename = Rename;
      o.link = Link;
      o.create = Create;
      return o;
    }();
    return ops;
  }
};

struct FuseServer::SparePool {
  std::vector<void*> spare;
  bool closed = false;  // after the stop: buffers coming back are freed

  ~SparePool() { Close(); }
  void Close() {
    closed = true;
    for (void* m : spare) free(m);
    spare.clear();
  }
  void GiveBack(void* mem) {
    if (!closed && spare.size() < kMaxSpareBuffers) {
      spare.push_back(mem);
    } else {
      free(mem);
    }
  }
};

FuseServer::FuseServer(uv_loop_t* loop, DiskTree* tree, Options options, LogFn log, ExitFn on_exit)
    : loop_(loop),
      tree_(tree),
      opts_(std::move(options)),
      log_(std::move(log)),
      on_exit_(std::move(on_exit)),
      spare_(std::make_shared<SparePool>()) {}

FuseServer::~FuseServer() {
  // Normally everything below is already gone (on_exit ran, or Start never
  // succeeded). Destroying a running server is a contract violation; tear
  // down as well as possible rather than leave a mount behind.
  assert(state_ == State::kNew || state_ == State::kStopped || inflight_ == 0);
  if (notifier_.joinable()) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      notifier_quit_ = true;
    }
    cv_.notify_all();
    notifier_.join();
  }
  if (poll_) {
    poll_->owner = nullptr;
    poll_->Close();
  }
  if (async_) {
    async_->owner = nullptr;
    async_->Close();
  }
  if (se_) {
    fuse_session_exit(se_);
    if (mounted_) fuse_session_unmount(se_);
    fuse_session_destroy(se_);
  }
  if (tree_ && state_ != State::kNew && state_ != State::kStopped) tree_->SetChangeHook(nullptr);
  free(rx_mem_);
  spare_->Close();
  if (g_fuse_log == &log_) {
    fuse_set_log_func(nullptr);
    g_fuse_log = nullptr;
  }
}

int FuseServer::WarnOnRequestTimeouts(const LogFn& log, const std::string& dir) {
  glob_t g{};
  int warnings = 0;
  std::string pattern = dir + "/*request_timeout";
  if (glob(pattern.c_str(), 0, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; i++) {
      std::ifstream f(g.gl_pathv[i]);
      long long v = 0;
      if (!(f >> v) || v == 0) continue;
      warnings++;
      if (log) {
        log(LogLevel::kWarning, std::string(g.gl_pathv[i]) + " = " + std::to_string(v) +
                                    ": the kernel aborts the whole FUSE connection when a "
                                    "request takes longer, including I/O parked during a "
                                    "disk outage; set it to 0 or above the importer's I/O timeout");
      }
    }
  }
  globfree(&g);
  return warnings;
}

int FuseServer::Start(std::string* error) {
  auto fail = [&](int err, const std::string& msg) {
    if (error) *error = msg;
    if (se_) {
      if (mounted_) fuse_session_unmount(se_);
      mounted_ = false;
      fuse_session_destroy(se_);
      se_ = nullptr;
    }
    if (g_fuse_log == &log_) {
      fuse_set_log_func(nullptr);
      g_fuse_log = nullptr;
    }
    return err;
  };
  if (state_ != State::kNew) return fail(EALREADY, "FuseServer::Start called twice");

  WarnOnRequestTimeouts(log_);

  // Memory reclaim may need a loop device over our file to make progress;
  // marking this thread as an I/O flusher keeps reclaim from waiting on it.
  if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0) {
    int e = errno;
    Log(e == EPERM || e == EINVAL ? LogLevel::kInfo : LogLevel::kWarning,
        std::string("PR_SET_IO_FLUSHER not set: ") + strerror(e));
  }

  g_fuse_log = &log_;
  fuse_set_log_func(FuseLogTrampoline);

  std::vector<std::string> argv = {"xdisk-fuse", "-o", "default_permissions"};
  if (!HasOption(opts_.mount_options, "fsname=")) argv.insert(argv.end(), {"-o", "fsname=xdisk"});
  if (!HasOption(opts_.mount_options, "subtype=")) {
    argv.insert(argv.end(), {"-o", "subtype=xdisk"});
  }
  for (const std::string& o : opts_.mount_options) argv.insert(argv.end(), {"-o", o});
  if (opts_.debug) argv.push_back("-d");
  struct fuse_args args = FUSE_ARGS_INIT(0, nullptr);
  for (const std::string& a : argv) fuse_opt_add_arg(&args, a.c_str());
  se_ = fuse_session_new(&args, &Ops::Table(), sizeof(struct fuse_lowlevel_ops), this);
  fuse_opt_free_args(&args);
  if (!se_) return fail(EINVAL, "fuse_session_new failed (unknown mount option?)");

  if (opts_.adopt_fd >= 0) {
    std::string why;
    if (int e = Adopt(&why); e != 0) return fail(e, why);
  } else if (fuse_session_mount(se_, opts_.mountpoint.c_str()) != 0) {
    return fail(EIO, "cannot mount FUSE at " + opts_.mountpoint);
  }
  mounted_ = true;

  int fd = fuse_session_fd(se_);
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
    return fail(errno, std::string("cannot make /dev/fuse non-blocking: ") + strerror(errno));
  }

  auto* async = new HandleBox<uv_async_t>();
  if (int r = uv_async_init(
          loop_, &async->h,
          [](uv_async_t* h) { static_cast<HandleBox<uv_async_t>*>(h->data)->owner->OnAsync(); });
      r != 0) {
    delete async;  // Never initialized, so no close callback will come.
    return fail(-r, std::string("uv_async_init: ") + uv_strerror(r));
  }
  async->h.data = async;
  async->owner = this;
  async_ = async;

  auto* poll = new HandleBox<uv_poll_t>();
  poll->is_poll = true;
  if (int r = uv_poll_init(loop_, &poll->h, fd); r != 0) {
    delete poll;
    async_->owner = nullptr;
    async_->Close();
    async_ = nullptr;
    return fail(-r, std::string("uv_poll_init: ") + uv_strerror(r));
  }
  poll->h.data = poll;
  poll->owner = this;
  poll_ = poll;
  uv_poll_start(&poll_->h, UV_READABLE, [](uv_poll_t* h, int status, int) {
    static_cast<HandleBox<uv_poll_t>*>(h->data)->owner->OnPoll(status);
  });

  tree_->SetChangeHook([this](const TreeChange& c) { Enqueue(c); });
  uv_async_t* wake = &async_->h;
  notifier_ = std::thread([this, wake] { NotifierMain(wake); });
  state_ = State::kRunning;
  if (adopted_)
    for (const auto& [ino, count] : opts_.restored_handles) RestoreHandles(ino, count);
  Log(LogLevel::kInfo, (adopted_ ? "adopted the mount at " : "mounted at ") + opts_.mountpoint);
  return 0;
}

int FuseServer::Adopt(std::string* error) {
  wire::InitRequest init;
  if (!wire::ParseInitRequest(opts_.init_request, &init)) {
    *error =
        "adopting the mount needs the FUSE_INIT request of its first server, which was "
        "not saved";
    return EINVAL;
  }
  // libfuse takes a descriptor named /dev/fd/N as an already mounted
  // connection; the session then owns it and never unmounts by itself.
  std::string dev = "/dev/fd/" + std::to_string(opts_.adopt_fd);
  if (fuse_session_mount(se_, dev.c_str()) != 0) {
    *error = "cannot adopt the FUSE descriptor " + std::to_string(opts_.adopt_fd);
    return EBADF;
  }
  adopted_ = true;
  resend_supported_ = init.has_resend();
  // Resend first: the requests the dead server read go back to the pending
  // queue and reach us once we read. Nothing is read before the replayed
  // INIT below has put libfuse into the negotiated state.
  if (resend_supported_) {
    auto note = wire::ResendNotification();
    if (write(fuse_session_fd(se_), note.data(), note.size()) !=
        static_cast<ssize_t>(note.size())) {
      Log(LogLevel::kWarning, std::string("FUSE_NOTIFY_RESEND failed: ") + strerror(errno) +
                                  "; requests the earlier server read are lost");
      resend_supported_ = false;
    }
  } else {
    Log(LogLevel::kWarning,
        "this kernel cannot resend requests (FUSE_NOTIFY_RESEND, Linux 6.9+): requests the "
        "earlier server read but never answered wait forever");
  }
  // The kernel will not send FUSE_INIT again: replay the first server's.
  // libfuse answers it under the old unique, which the kernel refuses with
  // ENOENT (libfuse ignores that); uniques are never reused, so the answer
  // cannot land on another request.
  std::string copy = opts_.init_request;
  struct fuse_buf b {};
  b.mem = copy.data();
  b.size = copy.size();
  fuse_session_process_buf(se_, &b);
  init_request_ = opts_.init_request;
  // The handles are restored once Start() cannot fail any more: their
  // devices' Open() callbacks hold this server.
  return 0;
}

void FuseServer::RestoreHandles(Ino ino, int count) {
  BlockDevice* dev = tree_->IsDisk(ino) ? tree_->device(ino) : nullptr;
  if (dev == nullptr || count <= 0) {
    Log(LogLevel::kWarning, "open handles of inode " + std::to_string(ino) +
                                " from before the restart name no known disk; their I/O fails");
    return;
  }
  OpenDisk& od = open_[ino];
  if (od.ready) {
    od.handles += count;
  } else {
    od.dev = dev;
    od.ready = true;  // The device queues I/O until its Open() completes.
    od.handles = count;
    inflight_++;
    dev->Open([this, ino](int err) {
      inflight_--;
      if (err)
        Log(LogLevel::kWarning, "reopening disk inode " + std::to_string(ino) +
                                    " after the restart failed: " + strerror(err));
      Kick();
    });
  }
  for (int i = 0; i < count; i++) tree_->OpenRef(ino);
}

BlockDevice* FuseServer::DeviceFor(uint64_t fh) {
  if (BlockDevice* dev = OpenDevice(fh)) return dev;
  // A handle the kernel kept from before the restart that the saved state
  // missed (the server died between answering an open and saving).
  if (!adopted_ || !tree_->IsDisk(fh) || open_.count(fh) || !tree_->device(fh)) return nullptr;
  RestoreHandles(fh, 1);
  NotifyState();
  return OpenDevice(fh);
}

void FuseServer::ReplyErr(fuse_req* req, int err) {
  if (err != 0 && detach_) {
    fuse_reply_none(req);  // Frees the request; the kernel resends it later.
    return;
  }
  fuse_reply_err(req, err);
}

void FuseServer::Detach() {
  if (state_ != State::kRunning) return;
  detach_ = true;
  Stop();
  // No request is read any more: answering one now (a lookup of a disk
  // the shutdown took offline) would be an error the next server avoids.
  if (poll_) uv_poll_stop(&poll_->h);
}

int FuseServer::fd() const { return se_ && mounted_ ? fuse_session_fd(se_) : -1; }

FuseServer::SessionState FuseServer::session_state() const {
  SessionState st;
  st.init_request = init_request_;
  for (const auto& [ino, od] : open_)
    if (od.handles > 0) st.handles[ino] = od.handles;
  return st;
}

void FuseServer::Stop() {
  if (state_ != State::kRunning) return;
  state_ = State::kDrainingNotifier;
  // Keep serving requests until the notifier has left: its current
  // invalidation may wait for a directory lock held by a process that waits
  // for one of our replies.
  {
    std::lock_guard<std::mutex> lk(mu_);
    notifier_quit_ = true;
    queue_.clear();
  }
  cv_.notify_all();
}

void FuseServer::RequestStop() {
  stop_requested_.store(true);
  if (async_) uv_async_send(&async_->h);
}

void FuseServer::OnAsync() {
  if (stop_requested_.exchange(false)) Stop();
  if (state_ == State::kDrainingNotifier && notifier_done_.load()) {
    notifier_.join();
    BeginTeardown();
  }
  if (state_ == State::kTeardown) MaybeFinish();
}

void FuseServer::OnPoll(int status) {
  if (state_ != State::kRunning && state_ != State::kDrainingNotifier) return;
  if (detach_) return;  // What waits is the next server's.
  for (int i = 0; i < kMaxRequestsPerWakeup; i++) {
    if (!rx_mem_) rx_mem_ = TakeSpare();  // nullptr: libfuse allocates one.
    struct fuse_buf buf {};
    buf.mem = rx_mem_;
    int res = fuse_session_receive_buf(se_, &buf);
    rx_mem_ = buf.mem;
    if (res == -EINTR) continue;
    if (res == -EAGAIN) {
      if (status < 0) {
        // libuv stopped watching after POLLERR, yet the device is not gone.
        exit_status_ = EIO;
        Log(LogLevel::kError, std::string("poll on /dev/fuse: ") + uv_strerror(status));
        Stop();
      }
      return;
    }
    if (res == 0 || fuse_session_exited(se_)) {
      // ENODEV: unmounted from outside (fusermount3 -u, umount) or aborted.
      Log(LogLevel::kInfo, "FUSE session ended (unmounted)");
      Stop();
      return;
    }
    if (res < 0) {
      exit_status_ = -res;
      Log(LogLevel::kError, std::string("reading /dev/fuse: ") + strerror(-res));
      Stop();
      return;
    }
    rx_len_ = buf.size;
    wire::InHeader in;
    bool got_init = false;
    if (buf.mem && wire::ParseInHeader({static_cast<const char*>(buf.mem), buf.size}, &in)) {
      if (in.unique & wire::kUniqueResent) stats_.resent++;
      if (in.opcode == wire::kOpInit && init_request_.empty()) {
        wire::InitRequest init;
        init_request_.assign(static_cast<const char*>(buf.mem), buf.size);
        got_init = wire::ParseInitRequest(init_request_, &init);
        resend_supported_ = got_init && init.has_resend();
      }
    }
    // Saved before it is answered: a server that dies in between leaves an
    // INIT the kernel resends to a next one that can replay it.
    if (got_init) NotifyState();
    fuse_session_process_buf(se_, &buf);
    rx_len_ = 0;
    if (fuse_session_exited(se_)) {
      Log(LogLevel::kInfo, "FUSE session exited");
      Stop();
      return;
    }
  }
}

void FuseServer::BeginTeardown() {
  state_ = State::kTeardown;
  // Stop watching before unmount closes the fd.
  if (poll_) poll_->Close();
  fuse_session_exit(se_);
  if (mounted_ && detach_) {
    Log(LogLevel::kInfo, "detached from " + opts_.mountpoint + " (it stays mounted)");
  } else if (mounted_) {
    // As root this is a lazy umount2; closing the fd aborts the connection,
    // so anything still using the file (a loop device) gets ENOTCONN. An
    // adopted session has no mountpoint of its own in libfuse: unmount here.
    if (adopted_) {
      if (umount2(opts_.mountpoint.c_str(), MNT_DETACH) != 0)
        Log(LogLevel::kWarning, "umount " + opts_.mountpoint + ": " + strerror(errno));
    } else {
      fuse_session_unmount(se_);
    }
    mounted_ = false;
    Log(LogLevel::kInfo, "unmounted " + opts_.mountpoint);
  }
  MaybeFinish();
}

void FuseServer::MaybeFinish() {
  if (state_ != State::kTeardown || poll_ != nullptr || inflight_ != 0) return;
  Finish();
}

void FuseServer::Finish() {
  tree_->SetChangeHook(nullptr);
  // The kernel will never release handles of an aborted connection.
  std::map<Ino, OpenDisk> open = std::move(open_);
  open_.clear();
  for (auto& [ino, od] : open) {
    assert(od.waiters.empty());
    if (od.ready && od.dev) od.dev->Close();
    for (int i = 0; i < od.handles; i++) tree_->CloseRef(ino);
  }
  dir_handles_.clear();
  if (detach_ && mounted_) detached_fd_ = fcntl(fuse_session_fd(se_), F_DUPFD_CLOEXEC, 3);
  fuse_session_destroy(se_);
  se_ = nullptr;
  free(rx_mem_);
  rx_mem_ = nullptr;
  spare_->Close();
  if (uint64_t n = notify_errors_.load()) {
    Log(LogLevel::kInfo, std::to_string(n) + " kernel cache invalidations failed");
  }
  if (g_fuse_log == &log_) {
    fuse_set_log_func(nullptr);
    g_fuse_log = nullptr;
  }
  state_ = State::kClosing;
  async_->Close();  // OnHandleClosed reports on_exit.
}

void FuseServer::OnHandleClosed(bool is_poll) {
  if (is_poll) {
    poll_ = nullptr;
    MaybeFinish();
    return;
  }
  async_ = nullptr;
  if (state_ != State::kClosing) return;
  state_ = State::kStopped;
  // Last action: the owner may destroy us inside on_exit.
  ExitFn fn = std::move(on_exit_);
  int status = exit_status_;
  if (fn) fn(status);
}

void FuseServer::Kick() {
  if (state_ == State::kTeardown && async_) uv_async_send(&async_->h);
}

void FuseServer::Enqueue(const TreeChange& change) {
  // New names need no invalidation: misses are answered with ENOENT, which
  // the kernel does not cache. Removed names and changed attributes do.
  if (change.kind == TreeChange::Kind::kEntryAdded) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (notifier_quit_) return;
    queue_.push_back(change);
  }
  cv_.notify_one();
}

void FuseServer::NotifierMain(uv_async_t* wake) {
  prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0);  // Best effort; Start() logged the outcome.
  std::unique_lock<std::mutex> lk(mu_);
  while (true) {
    cv_.wait(lk, [this] { return notifier_quit_ || !queue_.empty(); });
    if (notifier_quit_) break;
    TreeChange c = std::move(queue_.front());
    queue_.pop_front();
    lk.unlock();
    int r;
    if (c.kind == TreeChange::Kind::kEntryRemoved) {
      r = fuse_lowlevel_notify_inval_entry(se_, c.parent, c.name.c_str(), c.name.size());
    } else {
      r = fuse_lowlevel_notify_inval_inode(se_, c.ino, 0, 0);
    }
    // ENOENT: the kernel had nothing cached. ENOSYS: before INIT.
    if (r < 0 && r != -ENOENT && r != -ENOSYS) notify_errors_++;
    lk.lock();
  }
  lk.unlock();
  notifier_done_.store(true);
  uv_async_send(wake);
}

BlockDevice* FuseServer::OpenDevice(uint64_t fh) const {
  auto it = open_.find(fh);
  return it == open_.end() || !it->second.ready ? nullptr : it->second.dev;
}

bool FuseServer::SendOpen(fuse_req* req, Ino ino) {
  struct fuse_file_info fi {};
  fi.fh = ino;
  fi.direct_io = opts_.direct_io ? 1 : 0;
  fi.keep_cache = 0;
  return fuse_reply_open(req, &fi) == 0;
}

void FuseServer::OnDeviceOpened(Ino ino, int err) {
  inflight_--;
  auto it = open_.find(ino);
  assert(it != open_.end());
  std::vector<fuse_req*> waiters = std::move(it->second.waiters);
  it->second.waiters.clear();
  if (err) {
    assert(it->second.handles == 0);
    open_.erase(it);
    Log(LogLevel::kWarning,
        "open of disk inode " + std::to_string(ino) + " failed: " + strerror(err));
    for (fuse_req* req : waiters) {
      tree_->CloseRef(ino);
      ReplyErr(req, err);  // after Detach(): resent to the next daemon
    }
  } else {
    it->second.ready = true;
    // Count every handle before replying: a reply the kernel rejects
    // (interrupted open) is released at once, and must not close the device
    // under the other waiters.
    it->second.handles += static_cast<int>(waiters.size());
    NotifyState();
    int rejected = 0;
    for (fuse_req* req : waiters) rejected += SendOpen(req, ino) ? 0 : 1;
    for (int i = 0; i < rejected; i++) ReleaseHandle(ino);
  }
  Kick();
}

void FuseServer::ReleaseHandle(Ino ino) {
  auto it = open_.find(ino);
  if (it == open_.end()) return;
  OpenDisk& od = it->second;
  assert(od.handles > 0);
  if (--od.handles == 0 && od.waiters.empty()) {
    BlockDevice* dev = od.dev;
    open_.erase(it);
    dev->Close();
  }
  // May hide an offline disk and queue invalidations.
  tree_->CloseRef(ino);
  NotifyState();
}

void* FuseServer::TakeSpare() {
  if (spare_->spare.empty()) return nullptr;
  void* m = spare_->spare.back();
  spare_->spare.pop_back();
  return m;
}

BlockDevice::BufferHold FuseServer::HoldBuffer(void* mem, bool pooled) {
  // The deleter runs when the last copy goes, possibly after this server:
  // it holds the pool, not the server.
  if (!pooled)
    return BlockDevice::BufferHold(mem, [](const void* m) { free(const_cast<void*>(m)); });
  return BlockDevice::BufferHold(
      mem, [pool = spare_](const void* m) { pool->GiveBack(const_cast<void*>(m)); });
}

FuseServer::Stats FuseServer::stats() const {
  Stats s = stats_;
  s.inflight = inflight_;
  s.notify_errors = notify_errors_.load();
  return s;
}

}  // namespace xdisk::fusedev
