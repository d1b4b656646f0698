// DiskPaths: the ways to one imported disk (the RemoteSpans that carry its
// serial, over one link each) and the choice among them, as plain code.
//
// Choice: among the paths whose link is up, the lowest dist (hops to the
// exporter, spec §6.3); of equal ones, the one known longest. The disk
// stays on the path it opened on until that path is lost (no flapping
// between equal paths); the next open takes Best() again.
//
// Whether a link is up is asked through the IsUp function given at
// construction (Link::up() in the daemon, a fake in tests). Not
// thread-safe; one per disk.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace xdisk {

class Link;
class Transaction;

struct DiskPath {
  uint64_t span_id = 0;
  Link* link = nullptr;
  Transaction* span_txn = nullptr;  // the span our BLK_OPEN is stacked under
  uint32_t dist = 0;
};

class DiskPaths {
 public:
  using IsUp = std::function<bool(const Link*)>;
  explicit DiskPaths(IsUp is_up) : is_up_(std::move(is_up)) {}

  void Add(const DiskPath& p) { paths_.push_back(p); }
  // Forgets the path of that span; false if there was none.
  bool Remove(uint64_t span_id);
  // The path to open on now, or nullptr if no link is up.
  const DiskPath* Best() const;

  bool empty() const { return paths_.empty(); }
  size_t size() const { return paths_.size(); }
  const std::vector<DiskPath>& all() const { return paths_; }  // in the order added

 private:
  IsUp is_up_;
  std::vector<DiskPath> paths_;
};

}  // namespace xdisk
