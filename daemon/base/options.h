// Command-line options and configuration file of xdisk-fuse. ParseOptions()
// does no I/O beyond reading the one configuration file; the text of that
// file is parsed by pure functions (ParseConfigText, ApplyConfigEntries), so
// that every error path is unit tested. Errors name the offending option, or
// the file and line; main() prints them and exits 2.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/base/sync_mode.h"
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
  std::vector<std::string> exports;  // raw --export values (daemon/base/export_spec.h)
  std::string keys_dir = "/etc/xdisk-fuse";
  std::string state_dir = "/var/lib/xdisk-fuse";
  std::string mountpoint;                 // empty: no FUSE import
  std::vector<std::string> fuse_options;  // -o values, split on ','
  uint32_t file_mode = 0600;
  uint64_t io_timeout_s = 0;  // 0: block forever
  uint64_t ping_interval_ms = 1000;
  uint64_t link_timeout_ms = 10000;
  int verbosity = 2;         // LogLevel as int
  std::string hostname;      // empty: gethostname()
  std::string control_path;  // --control: "" = /run/xdisk-fuse.sock, "none" = off
  // The configuration file (docs/xdisk-fuse.conf.5). While parsing:
  // --config FILE. After ParseOptions: the file that was read, "" if none.
  std::string config_file;
  bool no_config = false;  // --no-config: skip kDefaultConfigFile
  // Journal of outstanding requests (daemon/import/journal.h).
  std::string journal_dir;  // empty: <state_dir>/journal; "none": no journal
  SyncMode sync = SyncMode::kRemote;
  uint64_t journal_max = 1ull << 30;
  bool journal_strict = false;
  // --no-keeper: with MOUNTPOINT and no service manager, run without the
  // keeper process (daemon/import/keeper.h); a crash then ends the mount.
  bool no_keeper = false;
  // --no-relay: relay no spans and no transactions between our links
  // (daemon/link/relay.h); our own exports and imports work as before.
  bool no_relay = false;
  std::string journal_dump;  // --journal-dump DIR: print and exit

  // The journal directory in effect ("" when journaling is off).
  std::string JournalDir() const;
};

enum class ParseOutcome { kRun, kExitOk };

// Parses argv. On kExitOk, --help or --version text was written to `out`.
// An error Status names the option ("--listen: bad port 'x'").
//
// Besides argv, this reads one configuration file: the --config FILE given
// (an error if it cannot be read), else kDefaultConfigFile when it exists
// and --no-config is not given. --config with --no-config is an error.
// --help and --version are answered before any file is read. The file is
// applied first and the command line on top of it:
//   - a single-valued option given on the command line wins;
//   - for the repeatable lists (--listen, --connect, --export, -o), any
//     occurrence on the command line replaces the file's whole list, so
//     that `xdisk-fuse --listen X` never also listens on the file's address;
//   - -v raises the level from whatever the file set; a MOUNTPOINT argument
//     replaces the file's `mountpoint`.
// Errors from the file name it and the line ("FILE:7: unknown key 'lisen'").
// Calling it again on the same argv (SIGHUP) re-reads the file.
Result<ParseOutcome> ParseOptions(int argc, const char* const* argv, DaemonOptions* opts,
                                  std::string* out);

// ---- Configuration file (docs/xdisk-fuse.conf.5) ------------------------------

inline constexpr char kDefaultConfigFile[] = "/etc/xdisk-fuse/xdisk-fuse.conf";

// One non-blank, non-comment line of a configuration file: "key = value",
// "key value", "key=value" or a bare "key" (a flag; `value` is then empty).
struct ConfigEntry {
  int line = 0;  // 1-based
  std::string key;
  std::optional<std::string> value;
};

// Splits configuration text into entries; pure (no files). Only the syntax
// is checked here (a key is [a-z0-9][a-z0-9-]*); whether the key exists and
// its value is valid is checked by ApplyConfigEntries. `#` starts a comment
// at the start of a line or after whitespace; "a#b" is a value. Trailing
// whitespace and CRs are dropped; there is no quoting. Errors read
// "FILE:LINE: ..." with `file_name` as given.
Result<std::vector<ConfigEntry>> ParseConfigText(std::string_view text, std::string_view file_name);

// Applies entries to *opts in order, with the command-line meaning of each
// key (`listen` is --listen, `option` is -o, `mountpoint` is the MOUNTPOINT
// argument). Repeatable keys append. help, version, config, no-config and
// journal-dump are not valid keys. Errors read "FILE:LINE: ...". Performs
// none of the whole-configuration checks ("nothing to do"); ParseOptions
// does those after the command line has been applied.
Status ApplyConfigEntries(const std::vector<ConfigEntry>& entries, std::string_view file_name,
                          DaemonOptions* opts);

// "--name=value" splits into {"--name", "value", true}; anything else is
// {arg, "", false}. Shared by xdisk-fuse's and xdiskctl's parsers.
struct SplitOption {
  std::string_view name, value;
  bool has_inline = false;
};
SplitOption SplitLongOption(std::string_view arg);

// The --help text.
std::string UsageText();

}  // namespace xdisk
