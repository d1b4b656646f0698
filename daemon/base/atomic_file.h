// Replacing a small file whole: the host uuid, export identities
// (daemon/export/export_identity.h) and the mount state (daemon/import/mount_state.h).
#pragma once

#include <sys/types.h>

#include <string>

#include "proto/status.h"

namespace xdisk {

// Replaces `file` with `text`, created with `mode` (less the umask): written
// to a temporary file beside it, fsynced, renamed over `file`, and the
// directory synced (best effort). A crash leaves the old or the new content
// under `file`, never a torn one. The directory must exist.
Status WriteFileAtomically(const std::string& file, const std::string& text, mode_t mode);

}  // namespace xdisk
