// UvHandle<H>: the one way the daemon owns and closes a libuv handle.
//
// The handle lives in a small heap box owned by one UvHandle. The owner opens
// it with the handle's init function and sets `get()->data` for its own
// callbacks, as with a plain handle:
//
//   UvHandle<uv_timer_t> timer_;
//   timer_.Open(uv_timer_init, loop);
//   timer_.get()->data = this;
//   uv_timer_start(timer_.get(), OnTimer, 100, 100);
//
// Close() closes it once (later calls, and closing a handle never opened, do
// nothing); the destructor closes too. The box is freed in libuv's close
// callback, so the owner may be destroyed right after Close(): no close
// callback ever reaches freed memory, and `data` is left as the owner set it
// for the requests libuv cancels while closing (their callbacks run first).
//
// An owner that must outlive its handles (it frees itself only once libuv
// is done with all of them) passes `on_closed(ctx)` to Close(); it runs
// from the close callback. Everyone else closes without one.
//
// Thread-compatible: loop thread only, like the handle.
#pragma once

#include <uv.h>

#include <cassert>
#include <type_traits>
#include <utility>

namespace xdisk {

template <typename H>
class UvHandle {
 public:
  using ClosedFn = void (*)(void* ctx);

  UvHandle() = default;
  UvHandle(const UvHandle&) = delete;
  UvHandle& operator=(const UvHandle&) = delete;
  ~UvHandle() { Close(); }

  // Runs init(loop, handle, args...) (uv_timer_init, uv_tcp_init,
  // uv_poll_init with its fd, ...) on a fresh handle. On failure nothing
  // stays open and the libuv error is returned. Must not be open already.
  template <typename Init, typename... Args>
  int Open(Init init, uv_loop_t* loop, Args&&... args) {
    assert(box_ == nullptr);  // opening twice would leak an open handle
    Box* box = new Box;
    int rc = init(loop, &box->h, std::forward<Args>(args)...);
    if (rc < 0) {
      delete box;
      return rc;
    }
    box_ = box;
    return 0;
  }

  bool is_open() const { return box_ != nullptr; }
  // The handle. REQUIRES: is_open().
  H* get() const {
    assert(box_ != nullptr);
    return &box_->h;
  }
  uv_handle_t* handle() const { return reinterpret_cast<uv_handle_t*>(get()); }
  uv_stream_t* stream() const { return reinterpret_cast<uv_stream_t*>(get()); }

  void Close(ClosedFn on_closed = nullptr, void* ctx = nullptr) {
    if (box_ == nullptr) return;
    Box* box = box_;
    box_ = nullptr;
    box->on_closed = on_closed;
    box->ctx = ctx;
    uv_close(reinterpret_cast<uv_handle_t*>(&box->h), &UvHandle::OnClosed);
  }

 private:
  // Standard layout with the handle first: the close callback finds the box
  // from the handle without touching `data`, which stays the owner's.
  struct Box {
    H h{};
    ClosedFn on_closed = nullptr;
    void* ctx = nullptr;
  };
  static_assert(std::is_standard_layout_v<Box>);

  static void OnClosed(uv_handle_t* h) {
    Box* box = reinterpret_cast<Box*>(h);
    ClosedFn fn = box->on_closed;
    void* ctx = box->ctx;
    delete box;
    if (fn != nullptr) fn(ctx);
  }

  Box* box_ = nullptr;
};

}  // namespace xdisk
