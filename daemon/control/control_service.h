// ControlService: the control API as a pure function from a request payload
// to a response (proto/control.proto). No sockets and no loop: the
// ControlServer (daemon/control/control_server.h) hands it the payload of each frame,
// and the daemon's side of every command sits behind the ControlBackend
// interface, so tests drive it with a fake backend.
//
// Validation happens before dispatch, in this order:
//   1. the payload parses as a Request           (else MALFORMED)
//   2. request.version == kControlVersion         (else VERSION_MISMATCH)
//   3. exactly one known command is set           (else MALFORMED)
//   4. the command's arguments parse: an export spec with ParseExportSpec,
//      an address with ParseHostPort, a serial of 1..63 bytes
//                                                 (else INVALID_ARGUMENT)
// Only then is the backend called, with parsed values. A backend failure
// (a Status) becomes Error{code, message} with the code mapped from the
// Status kind. Every response, error or not, carries kControlVersion.
//
// Threading: whatever the backend allows; in the daemon, the loop thread.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "daemon/base/export_spec.h"
#include "daemon/base/options.h"
#include "proto/control.pb.h"
#include "proto/status.h"

namespace xdisk::control {

// The daemon's side of the control API. Queries describe the current state;
// changes return a short sentence for the operator on success.
class ControlBackend {
 public:
  virtual ~ControlBackend() = default;

  virtual DaemonInfo DescribeDaemon() const = 0;
  virtual std::vector<LinkInfo> Links() const = 0;
  // Imported disks (empty when the daemon has no MOUNTPOINT).
  virtual std::vector<DiskInfo> Disks() const = 0;
  virtual std::vector<ExportInfo> Exports() const = 0;
  virtual std::vector<DiskStats> Stats() const = 0;
  // The spans relayed now (none with --no-relay).
  virtual std::vector<RelayedSpanInfo> RelayedSpans() const { return {}; }

  // `raw` is the spec as the operator wrote it, `spec` its parse.
  virtual Result<ExportInfo> AddExport(const std::string& raw, const ExportSpec& spec) = 0;
  virtual Result<std::string> RemoveExport(const std::string& serial) = 0;
  virtual Result<std::string> Connect(const HostPort& addr) = 0;
  virtual Result<std::string> Disconnect(const HostPort& addr) = 0;
  // Starts a live restart (RestartRequest); the answer goes out before the
  // daemon goes. Unavailable when the daemon cannot restart now.
  virtual Result<std::string> Restart() = 0;
};

class ControlService {
 public:
  // `backend` must outlive the service.
  explicit ControlService(ControlBackend* backend) : backend_(backend) {}

  // Decodes, validates and runs one request.
  Response Handle(std::string_view request_payload);
  // Runs an already decoded request (steps 2 to 4 above, then dispatch).
  Response Handle(const Request& request);

 private:
  ControlBackend* backend_;
};

// A response carrying only an error.
Response ErrorResponse(Error::Code code, std::string message);
// Status kind -> error code (kNotFound -> NOT_FOUND, ...).
Error::Code ErrorCodeFor(const Status& s);
// "version_mismatch", "not_found", ...: the stable lowercase name used in
// xdiskctl's JSON output.
std::string ErrorCodeName(Error::Code code);
// The name of the command set in `r` ("status", "export_add"), or "none".
std::string CommandName(const Request& r);

}  // namespace xdisk::control
