// Export specs: the text form of one export, `PATH[,key=value]...`, as the
// daemon's --export option and xdiskctl's `export add` carry it. Parsing
// only: filling in the defaults from the file system is ResolveExport's job
// (daemon/export/export_identity.h). Pure functions; the control library and
// xdiskctl use them without the export code.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "proto/status.h"

namespace xdisk {

// Labels and serials travel in 128-byte fields, but xdisk copies them into
// 64-byte buffers (§6.3), so 63 bytes is the useful maximum.
inline constexpr size_t kMaxIdentityLength = 63;

// One `--export` argument as written. Empty strings and blksize 0 mean
// "use the default".
struct ExportSpec {
  std::string path;
  std::string serial;
  std::string label;
  std::string uuid_text;  // Lowercase canonical form when non-empty.
  bool read_only = false;
  uint32_t blksize = 0;  // 0 = the device's logical block size.
};

// Parses "PATH[,key=value]...". Keys: serno, label, uuid, blksize, and the
// bare flag ro. Rules, each violation reported as InvalidArgument naming the
// key and the value:
//   * PATH is non-empty; PATH, keys and values cannot contain ',' (there is
//     no escaping);
//   * each key at most once; unknown keys and empty items are errors;
//   * serno: 1..63 printable characters, no '/' and no whitespace;
//   * label: 1..63 bytes, no control characters;
//   * uuid: 8-4-4-4-12 hex digits, either case (stored lowercase), not nil;
//   * blksize: decimal power of two in 512..65536.
Result<ExportSpec> ParseExportSpec(std::string_view arg);

// True for 8-4-4-4-12 hex text (either case). Stores the lowercase form in
// `*canonical` when non-null.
bool ParseUuidText(std::string_view text, std::string* canonical);

}  // namespace xdisk
