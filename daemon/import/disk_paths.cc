#include "daemon/import/disk_paths.h"

#include <algorithm>

namespace xdisk {

bool DiskPaths::Remove(uint64_t span_id) {
  auto it = std::find_if(paths_.begin(), paths_.end(),
                         [&](const DiskPath& p) { return p.span_id == span_id; });
  if (it == paths_.end()) return false;
  paths_.erase(it);
  return true;
}

const DiskPath* DiskPaths::Best() const {
  const DiskPath* best = nullptr;
  for (const DiskPath& p : paths_) {
    if (!is_up_(p.link)) continue;
    if (best == nullptr || p.dist < best->dist) best = &p;  // strict: the older wins a tie
  }
  return best;
}

}  // namespace xdisk
