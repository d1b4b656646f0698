// SyncMode: when an imported disk's write counts as done (--sync; the
// guarantees of each are in docs/journal-format.md).
#pragma once

namespace xdisk {

enum class SyncMode {
  kRemote,   // once the remote acknowledged it (default; no journal written)
  kJournal,  // once its record is durable in the local journal (write-back)
};

}  // namespace xdisk
