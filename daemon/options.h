// Command-line options of xdisk-fuse. ParseOptions() is pure (no I/O beyond
// printing --help/--version when asked) so that every error path is unit
// tested. Errors name the offending option; main() prints them and exits 2.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "proto/status.h"

namespace xdisk {

inline constexpr uint16_t kDefaultPort = 987;

// A parsed "ADDR[:PORT]" / "HOST[:PORT]": IPv6 literals as "[::1]:987",
// "[::1]" or a bare "::1" (no port then).
struct HostPort {
  std::string host;
  uint16_t port = kDefaultPort;
  std::string ToString() const;  // "host:port", "[v6]:port"
};
Result<HostPort> ParseHostPort(std::string_view text);

struct DaemonOptions {
  std::vector<HostPort> listen;
  std::vector<HostPort> connect;
  std::vector<std::string> exports;  // raw --export values (daemon/export_identity.h)
  std::string keys_dir = "/etc/xdisk-fuse";
  std::string state_dir = "/var/lib/xdisk-fuse";
  std::string mountpoint;                 // empty: no FUSE import
  std::vector<std::string> fuse_options;  // -o values, split on ','
  uint32_t file_mode = 0600;
  uint64_t io_timeout_s = 0;  // 0: block forever
  uint64_t ping_interval_ms = 1000;
  uint64_t link_timeout_ms = 10000;
  int verbosity = 2;     // LogLevel as int
  std::string hostname;  // empty: gethostname()
  // Journal of outstanding requests (daemon/journal.h).
  std::string journal_dir;  // empty: <state_dir>/journal; "none": no journal
  enum class SyncMode { kRemote, kJournal } sync = SyncMode::kRemote;
  uint64_t journal_max = 1ull << 30;
  bool journal_strict = false;
  std::string journal_dump;  // --journal-dump DIR: print and exit

  // The journal directory in effect ("" when journaling is off).
  std::string JournalDir() const;
};

enum class ParseOutcome { kRun, kExitOk };

// Parses argv. On kExitOk, --help or --version text was written to `out`.
// An error Status names the option ("--listen: bad port 'x'").
Result<ParseOutcome> ParseOptions(int argc, const char* const* argv, DaemonOptions* opts,
                                  std::string* out);

// The --help text.
std::string UsageText();

}  // namespace xdisk
