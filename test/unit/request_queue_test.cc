// RequestQueue: chunking, overlap ordering, resend order and timeouts,
// without sockets, FUSE or a loop (times are plain numbers).
#include "daemon/import/request_queue.h"

#include <catch2/catch.hpp>
#include <cerrno>
#include <string>
#include <vector>

using namespace xdisk;

namespace {
constexpr uint32_t kKiB = 1024;

std::unique_ptr<QueuedRequest> Req(IoKind kind, uint64_t offset, uint64_t length,
                                   bool background = false) {
  auto r = std::make_unique<QueuedRequest>();
  r->kind = kind;
  r->offset = offset;
  r->length = length;
  r->background = background;
  return r;
}

// A fake wire: records what was sent ("w0+4096") and keeps the chunks.
struct Wire {
  std::vector<std::string> sent;
  std::vector<QueuedChunk*> on_wire;
  size_t refuse_after = SIZE_MAX;  // the path "dies" after this many sends
  int token = 0;

  RequestQueue::SendFn fn() {
    return [this](QueuedChunk& c) -> void* {
      if (sent.size() >= refuse_after) return nullptr;
      sent.push_back(std::string(1, IoKindName(c.req->kind)[0]) + std::to_string(c.offset) + "+" +
                     std::to_string(c.length));
      on_wire.push_back(&c);
      return &token;
    };
  }
  std::vector<std::string> Take() { return std::exchange(sent, {}); }
};
}  // namespace

TEST_CASE("requests are cut into chunks, and again for a path that takes less", "[request_queue]") {
  RequestQueue q(1024 * kKiB, 64);
  q.Add(Req(IoKind::kWrite, 0, 3 * 1024 * kKiB), 0);
  CHECK(q.chunks() == 3);
  q.Add(Req(IoKind::kFlush, 0, 0), 0);
  CHECK(q.chunks() == 4);  // a flush is one chunk of no length
  Wire w;
  q.Dispatch(512 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"w0+524288", "w524288+524288", "w1048576+524288",
                                             "w1572864+524288", "w2097152+524288",
                                             "w2621440+524288", "f0+0"});
  CHECK(q.inflight() == 7);
  // The pieces carry their place in the request's data.
  CHECK(w.on_wire[1]->req_off == 512 * kKiB);
  // The request completes with its last chunk, not before.
  QueuedRequest* write = w.on_wire[0]->req;
  for (int i = 0; i < 5; ++i) CHECK(q.ChunkDone(w.on_wire[i], 0) == nullptr);
  auto done = q.ChunkDone(w.on_wire[5], 0);
  REQUIRE(done != nullptr);
  CHECK(done.get() == write);
  CHECK(done->error == 0);
  CHECK(q.ChunkDone(w.on_wire[6], 0) != nullptr);
  CHECK(q.empty());
  CHECK(q.inflight() == 0);
}

TEST_CASE("overlapping requests where one modifies data keep their order", "[request_queue]") {
  RequestQueue q(1024 * kKiB, 64);
  Wire w;
  q.Add(Req(IoKind::kWrite, 0, 8 * kKiB), 0);         // A
  q.Add(Req(IoKind::kRead, 4 * kKiB, 8 * kKiB), 0);   // B overlaps A
  q.Add(Req(IoKind::kRead, 64 * kKiB, 4 * kKiB), 0);  // C elsewhere
  q.Add(Req(IoKind::kRead, 64 * kKiB, 4 * kKiB), 0);  // D: reads never wait for reads
  q.Add(Req(IoKind::kTrim, 6 * kKiB, 2 * kKiB), 0);   // E overlaps A and B
  q.Add(Req(IoKind::kWrite, 8 * kKiB, 4 * kKiB), 0);  // F overlaps B only
  q.Dispatch(1024 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"w0+8192", "r65536+4096", "r65536+4096"});
  // A answered: B may go, but E and F still wait for B.
  q.ChunkDone(w.on_wire[0], 0);
  q.Dispatch(1024 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"r4096+8192"});
  q.ChunkDone(w.on_wire[3], 0);
  q.Dispatch(1024 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"t6144+2048", "w8192+4096"});
}

TEST_CASE("at most max_inflight chunks are on the wire", "[request_queue]") {
  RequestQueue q(4 * kKiB, 3);
  Wire w;
  q.Add(Req(IoKind::kRead, 0, 20 * kKiB), 0);
  q.Dispatch(4 * kKiB, w.fn());
  CHECK(w.Take().size() == 3);
  CHECK(q.waiting() == 2);
  q.ChunkDone(w.on_wire[0], 0);
  q.Dispatch(4 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"r12288+4096"});
}

TEST_CASE("a lost path: chunks go again in their original order", "[request_queue]") {
  RequestQueue q(1024 * kKiB, 64);
  Wire w;
  q.Add(Req(IoKind::kWrite, 0, 4 * kKiB), 0);
  q.Add(Req(IoKind::kWrite, 4 * kKiB, 4 * kKiB), 0);
  q.Add(Req(IoKind::kWrite, 0, 4 * kKiB), 0);  // rewrites the first block: waits
  q.Dispatch(1024 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"w0+4096", "w4096+4096"});
  // The link dies: LOSTLINK for both, the second first.
  q.Requeue(w.on_wire[1]);
  q.Requeue(w.on_wire[0]);
  CHECK(q.inflight() == 0);
  CHECK(q.waiting() == 3);
  // The new path fails after one send: the rest keeps waiting, in order.
  w.refuse_after = 1;
  q.Dispatch(1024 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"w0+4096"});
  w.refuse_after = SIZE_MAX;
  q.Dispatch(1024 * kKiB, w.fn());
  // The third write still waits for the first: a resend never reorders
  // overlapping writes.
  CHECK(w.Take() == std::vector<std::string>{"w4096+4096"});
  CHECK(q.resent() == 2);
  q.ChunkDone(w.on_wire[2], 0);
  q.Dispatch(1024 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"w0+4096"});
}

TEST_CASE("a chunk cut for a smaller path after a loss keeps its place", "[request_queue]") {
  RequestQueue q(1024 * kKiB, 64);
  Wire w;
  q.Add(Req(IoKind::kWrite, 0, 256 * kKiB), 0);
  q.Add(Req(IoKind::kWrite, 128 * kKiB, 4 * kKiB), 0);
  q.Dispatch(1024 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"w0+262144"});
  q.Requeue(w.on_wire[0]);
  q.Dispatch(128 * kKiB, w.fn());  // failover to a DragonFly path
  CHECK(w.Take() == std::vector<std::string>{"w0+131072", "w131072+131072"});
  CHECK(q.resent() == 2);
  CHECK(q.ChunkDone(w.on_wire[1], 0) == nullptr);  // the first piece
  q.Dispatch(128 * kKiB, w.fn());
  CHECK(w.Take().empty());  // the small write overlaps the piece still out
  auto r = q.ChunkDone(w.on_wire[2], 0);
  CHECK(r != nullptr);  // both pieces done: the big write is complete
  q.Dispatch(128 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"w131072+4096"});
}

TEST_CASE("an application's flush waits for earlier background writes", "[request_queue]") {
  RequestQueue q(1024 * kKiB, 64);
  Wire w;
  q.Add(Req(IoKind::kWrite, 0, 4 * kKiB, true), 0);  // a journal record
  q.Add(Req(IoKind::kFlush, 0, 0, true), 0);         // a background flush does not wait
  q.Add(Req(IoKind::kFlush, 0, 0), 0);               // the application's fsync does
  q.Dispatch(1024 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"w0+4096", "f0+0"});
  q.ChunkDone(w.on_wire[0], 0);
  q.Dispatch(1024 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"f0+0"});
}

TEST_CASE("errors: the first chunk error is the request's", "[request_queue]") {
  RequestQueue q(4 * kKiB, 64);
  Wire w;
  q.Add(Req(IoKind::kRead, 0, 12 * kKiB), 0);
  q.Dispatch(4 * kKiB, w.fn());
  q.ChunkDone(w.on_wire[1], EIO);
  q.ChunkDone(w.on_wire[0], 0);
  auto r = q.ChunkDone(w.on_wire[2], EINVAL);
  REQUIRE(r != nullptr);
  CHECK(r->error == EIO);
}

TEST_CASE("timeouts: only requests with nothing on the wire expire", "[request_queue]") {
  RequestQueue q(1024 * kKiB, 64);
  Wire w;
  const uint64_t kTimeout = 30000;
  q.Add(Req(IoKind::kWrite, 0, 4 * kKiB), 1000);               // on the wire below
  q.Add(Req(IoKind::kWrite, 0, 4 * kKiB), 1000);               // waits for the first
  q.Add(Req(IoKind::kWrite, 8 * kKiB, 4 * kKiB, true), 1000);  // background: never expires
  q.Dispatch(1024 * kKiB, w.fn());
  CHECK(w.Take() == std::vector<std::string>{"w0+4096", "w8192+4096"});
  q.Add(Req(IoKind::kRead, 64 * kKiB, 4 * kKiB), 20000);  // younger
  CHECK(q.FailExpired(1000 + kTimeout - 1, kTimeout, EIO).empty());
  auto expired = q.FailExpired(1000 + kTimeout, kTimeout, EIO);
  REQUIRE(expired.size() == 1);
  CHECK(expired[0]->offset == 0);
  CHECK(expired[0]->error == EIO);
  CHECK(q.chunks() == 3);  // the first write, the background one, the read
  // Much later: the read expires; what is on the wire still waits for its answer.
  expired = q.FailExpired(20000 + kTimeout, kTimeout, EIO);
  REQUIRE(expired.size() == 1);
  CHECK(expired[0]->kind == IoKind::kRead);
  CHECK(q.oldest_start_ms() == 1000);
  // The path dies: the first write waits again and can now expire.
  q.Requeue(w.on_wire[0]);
  CHECK(q.FailExpired(20000 + kTimeout, kTimeout, EIO).size() == 1);
}

TEST_CASE("shutdown fails what waits; a feed restart takes its requests back", "[request_queue]") {
  RequestQueue q(1024 * kKiB, 64);
  Wire w;
  q.Add(Req(IoKind::kWrite, 0, 4 * kKiB, true), 0);
  q.Dispatch(1024 * kKiB, w.fn());
  q.Add(Req(IoKind::kWrite, 0, 4 * kKiB, true), 0);  // waits (overlap)
  q.Add(Req(IoKind::kRead, 64 * kKiB, 4 * kKiB), 0);
  auto taken = q.TakeWaiting([](const QueuedRequest& r) { return r.background; });
  REQUIRE(taken.size() == 1);  // the one on the wire stays
  CHECK(q.chunks() == 2);
  auto failed = q.FailWaiting(EIO);
  REQUIRE(failed.size() == 1);
  CHECK(failed[0]->kind == IoKind::kRead);
  CHECK(failed[0]->error == EIO);
  CHECK(q.chunks() == 1);
  CHECK(q.ChunkDone(w.on_wire[0], 0) != nullptr);
  CHECK(q.empty());
}
