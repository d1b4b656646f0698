#include "daemon/import/request_queue.h"

#include <algorithm>
#include <cstdint>

namespace xdisk {

bool QueuedRequest::on_wire() const {
  return std::any_of(chunks.begin(), chunks.end(), [](auto& c) { return c->wire != nullptr; });
}

QueuedRequest* RequestQueue::Add(std::unique_ptr<QueuedRequest> r, uint64_t now_ms) {
  QueuedRequest* raw = r.get();
  raw->start_ms = now_ms;
  uint64_t off = 0;
  do {
    auto c = std::make_unique<QueuedChunk>();
    c->req = raw;
    c->offset = raw->offset + off;
    c->length = static_cast<uint32_t>(std::min<uint64_t>(max_chunk_, raw->length - off));
    c->req_off = off;
    off += c->length;
    c->pos = chunks_.insert(chunks_.end(), c.get());
    raw->chunks.push_back(std::move(c));
  } while (off < raw->length);
  raw->remaining = raw->chunks.size();
  raw->self = requests_.insert(requests_.end(), std::move(r));
  return raw;
}

bool RequestQueue::Conflicts(const QueuedChunk& a, const QueuedChunk& b) {
  return MustKeepOrder(a.req->kind, a.offset, a.length, b.req->kind, b.offset, b.length);
}

void RequestQueue::Split(std::list<QueuedChunk*>::iterator it, uint32_t limit) {
  // Chunks are cut lazily, once the path is known: the pieces take the
  // chunk's place in the queue, so the order of the data does not change.
  QueuedChunk* c = *it;
  QueuedRequest* r = c->req;
  auto next = std::next(it);
  uint64_t off = limit;
  while (off < c->length) {
    auto piece = std::make_unique<QueuedChunk>();
    piece->req = r;
    piece->offset = c->offset + off;
    piece->length = static_cast<uint32_t>(std::min<uint64_t>(limit, c->length - off));
    piece->req_off = c->req_off + off;
    piece->sent_before = c->sent_before;
    piece->pos = chunks_.insert(next, piece.get());
    off += piece->length;
    r->chunks.push_back(std::move(piece));
    ++r->remaining;
  }
  c->length = limit;
}

void RequestQueue::Dispatch(uint32_t limit, const SendFn& send) {
  bool modifying_before = false;
  bool background_modifying_before = false;
  for (auto it = chunks_.begin(); it != chunks_.end() && inflight_ < max_inflight_; ++it) {
    if ((*it)->wire == nullptr && (*it)->length > limit) Split(it, limit);
    QueuedChunk* c = *it;
    const bool mod = Modifies(c->req->kind);
    if (c->wire == nullptr) {
      bool blocked = false;
      // Only scan the earlier chunks when a conflict is possible at all.
      if (mod || modifying_before) {
        for (auto jt = chunks_.begin(); jt != it && !blocked; ++jt) blocked = Conflicts(**jt, *c);
      }
      // An application's fsync must cover journal records acknowledged
      // before it.
      if (c->req->kind == IoKind::kFlush && !c->req->background && background_modifying_before)
        blocked = true;
      if (!blocked) {
        void* wire = send(*c);
        if (wire == nullptr) return;  // the path is gone
        c->wire = wire;
        ++inflight_;
        if (c->sent_before) ++resent_;
        c->sent_before = true;
      }
    }
    modifying_before |= mod;
    background_modifying_before |= mod && c->req->background;
  }
}

std::unique_ptr<QueuedRequest> RequestQueue::ChunkDone(QueuedChunk* c, int err) {
  if (c->wire != nullptr) {
    c->wire = nullptr;
    --inflight_;
  }
  chunks_.erase(c->pos);
  c->done = true;
  QueuedRequest* r = c->req;
  if (err != 0 && r->error == 0) r->error = err;
  if (--r->remaining > 0) return nullptr;
  return Release(r);
}

void RequestQueue::Requeue(QueuedChunk* c) {
  if (c->wire == nullptr) return;
  c->wire = nullptr;
  --inflight_;
}

std::unique_ptr<QueuedRequest> RequestQueue::Release(QueuedRequest* r) {
  std::unique_ptr<QueuedRequest> owned = std::move(*r->self);
  requests_.erase(r->self);
  return owned;
}

std::vector<std::unique_ptr<QueuedRequest>> RequestQueue::FailExpired(uint64_t now_ms,
                                                                      uint64_t timeout_ms,
                                                                      int err) {
  std::vector<std::unique_ptr<QueuedRequest>> out;
  for (auto it = requests_.begin(); it != requests_.end();) {
    QueuedRequest* r = (it++)->get();  // Release() erases r's node
    if (r->background || now_ms - r->start_ms < timeout_ms || r->on_wire()) continue;
    for (auto& c : r->chunks) {
      if (c->done) continue;
      chunks_.erase(c->pos);
      c->done = true;
    }
    r->remaining = 0;
    if (r->error == 0) r->error = err;
    out.push_back(Release(r));
  }
  return out;
}

std::vector<std::unique_ptr<QueuedRequest>> RequestQueue::FailWaiting(int err) {
  std::vector<QueuedChunk*> waiting;
  for (QueuedChunk* c : chunks_)
    if (c->wire == nullptr) waiting.push_back(c);
  std::vector<std::unique_ptr<QueuedRequest>> out;
  for (QueuedChunk* c : waiting)
    if (auto r = ChunkDone(c, err)) out.push_back(std::move(r));
  return out;
}

std::vector<std::unique_ptr<QueuedRequest>> RequestQueue::TakeWaiting(
    const std::function<bool(const QueuedRequest&)>& pred) {
  std::vector<std::unique_ptr<QueuedRequest>> out;
  for (auto it = requests_.begin(); it != requests_.end();) {
    QueuedRequest* r = (it++)->get();
    if (!pred(*r) || r->on_wire()) continue;
    for (auto& c : r->chunks)
      if (!c->done) chunks_.erase(c->pos);
    out.push_back(Release(r));
  }
  return out;
}

uint64_t RequestQueue::oldest_start_ms() const {
  uint64_t oldest = UINT64_MAX;
  for (const auto& r : requests_) oldest = std::min(oldest, r->start_ms);
  return oldest;
}

}  // namespace xdisk
