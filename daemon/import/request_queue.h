// RequestQueue: the per-disk queue of an imported disk's requests, as plain
// code: no sockets, no FUSE, no libuv, no clock of its own (times are
// passed in). ImportedDisk (daemon/import/imported_disk.h) puts requests in, asks
// which chunks may go on the wire now, and says what became of each chunk;
// the queue keeps the rules that make replays safe:
//
// Chunking: Add() cuts a request into chunks of at most max_chunk bytes (a
// flush is one chunk of no length). Dispatch() cuts a waiting chunk further
// when the path in use takes less (ChunkLimit); the pieces take its place.
//
// Order: chunks stay in arrival order until they finish. Dispatch() offers
// the waiting ones in that order, at most max_inflight on the wire. A chunk
// that overlaps an earlier unfinished chunk, where either one modifies data
// (MustKeepOrder, daemon/base/io_kind.h), waits for it, on the wire or not;
// an application's flush waits for every earlier background (journal
// replay) write or trim.
//
// Resend: a chunk whose path died goes back with Requeue(): it keeps its
// place, so the next Dispatch() sends it again before anything after it,
// and the overlap rule keeps overlapping writes in their original order
// whatever the remote had done with the first copy.
//
// Timeouts: FailExpired() fails the requests older than a limit that have
// nothing on the wire (an answer may still come for those that do, and
// background requests wait for their remote however long it takes).
//
// Ownership: the queue owns each request from Add() until it is handed
// back, complete (ChunkDone, FailExpired, FailWaiting) or taken out
// (TakeWaiting). Requests handed back complete have every chunk finished;
// those taken out have none on the wire. Not thread-safe; one queue per
// disk.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <vector>

#include "daemon/base/io_kind.h"

namespace xdisk {

struct QueuedRequest;

struct QueuedChunk {
  QueuedRequest* req = nullptr;
  uint64_t offset = 0;   // on the disk (0 for a flush)
  uint32_t length = 0;   // 0 for a flush
  uint64_t req_off = 0;  // where the chunk starts inside the request's data
  void* wire = nullptr;  // the caller's handle while it is on the wire
  bool sent_before = false;
  bool done = false;
  std::list<QueuedChunk*>::iterator pos;  // in the queue, while unfinished
};

// The queue's part of a request; ImportedDisk derives its Op from it.
struct QueuedRequest {
  virtual ~QueuedRequest() = default;
  IoKind kind = IoKind::kRead;
  uint64_t offset = 0, length = 0;
  bool background = false;  // a journal record on its way to the remote
  uint64_t start_ms = 0;    // when it was added (Add's now_ms)
  int error = 0;            // the first chunk error
  size_t remaining = 0;     // unfinished chunks
  std::vector<std::unique_ptr<QueuedChunk>> chunks;
  std::list<std::unique_ptr<QueuedRequest>>::iterator self;  // the queue's
  bool on_wire() const;
};

class RequestQueue {
 public:
  RequestQueue(uint32_t max_chunk, size_t max_inflight)
      : max_chunk_(max_chunk), max_inflight_(max_inflight) {}
  RequestQueue(const RequestQueue&) = delete;
  RequestQueue& operator=(const RequestQueue&) = delete;

  // Queues `r` (kind, offset, length and background set) behind everything
  // queued, stamped with now_ms. Returns it, still owned by the queue.
  QueuedRequest* Add(std::unique_ptr<QueuedRequest> r, uint64_t now_ms);

  // Offers every chunk that may go now, in order, to `send`, first cut to
  // at most `limit` bytes. `send` puts it on the wire and returns its
  // handle (stored in chunk.wire), or nullptr if the path is gone: then
  // Dispatch stops at once and the chunk stays waiting. `send` must not
  // call back into the queue.
  using SendFn = std::function<void*(QueuedChunk&)>;
  void Dispatch(uint32_t limit, const SendFn& send);

  // The chunk's final answer came (err 0 or an errno): it leaves the queue.
  // Returns its request once every chunk of it has finished.
  std::unique_ptr<QueuedRequest> ChunkDone(QueuedChunk* c, int err);
  // The chunk's path died before it was answered: it waits again, in its
  // place, and counts as resent when it goes out again.
  void Requeue(QueuedChunk* c);

  // Fails (with err) every request older than timeout_ms at now_ms that is
  // not background and has nothing on the wire; returns them, oldest first.
  std::vector<std::unique_ptr<QueuedRequest>> FailExpired(uint64_t now_ms, uint64_t timeout_ms,
                                                          int err);
  // Fails every chunk not on the wire (shutdown); returns the requests
  // that finished by it.
  std::vector<std::unique_ptr<QueuedRequest>> FailWaiting(int err);
  // Takes out, unfinished, every request for which pred holds and that has
  // nothing on the wire (a journal feed starting over).
  std::vector<std::unique_ptr<QueuedRequest>> TakeWaiting(
      const std::function<bool(const QueuedRequest&)>& pred);

  bool empty() const { return requests_.empty(); }
  size_t chunks() const { return chunks_.size(); }  // unfinished, on the wire or not
  size_t inflight() const { return inflight_; }
  size_t waiting() const { return chunks_.size() - inflight_; }
  uint64_t resent() const { return resent_; }  // chunks sent again after a Requeue
  // The start_ms of the oldest request, or UINT64_MAX if empty.
  uint64_t oldest_start_ms() const;

 private:
  static bool Conflicts(const QueuedChunk& a, const QueuedChunk& b);
  void Split(std::list<QueuedChunk*>::iterator it, uint32_t limit);
  std::unique_ptr<QueuedRequest> Release(QueuedRequest* r);

  uint32_t max_chunk_;
  size_t max_inflight_;
  std::list<std::unique_ptr<QueuedRequest>> requests_;  // in arrival order
  std::list<QueuedChunk*> chunks_;                      // unfinished, in arrival order
  size_t inflight_ = 0;
  uint64_t resent_ = 0;
};

}  // namespace xdisk
