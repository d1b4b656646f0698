#include "daemon/control/control_service.h"

#include "daemon/control/control_codec.h"

namespace xdisk::control {

Response ErrorResponse(Error::Code code, std::string message) {
  Response r;
  r.set_version(kControlVersion);
  r.mutable_error()->set_code(code);
  r.mutable_error()->set_message(std::move(message));
  return r;
}

Error::Code ErrorCodeFor(const Status& s) {
  switch (s.kind()) {
    case Status::Kind::kInvalidArgument:
      return Error::INVALID_ARGUMENT;
    case Status::Kind::kNotFound:
      return Error::NOT_FOUND;
    case Status::Kind::kPermissionDenied:
      return Error::PERMISSION_DENIED;
    case Status::Kind::kUnavailable:
      return Error::UNAVAILABLE;
    case Status::Kind::kProtocol:
      return Error::MALFORMED;
    case Status::Kind::kOk:
      return Error::UNKNOWN;
    default:
      return Error::FAILED;
  }
}

std::string ErrorCodeName(Error::Code code) {
  // Error_Code_Name gives the upper-case enum name; JSON keys and values in
  // xdiskctl's output are lowercase.
  std::string name = Error_Code_Name(code);
  if (name.empty()) return "code_" + std::to_string(static_cast<int>(code));
  for (char& c : name) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
  return name;
}

std::string CommandName(const Request& r) {
  switch (r.command_case()) {
    case Request::kStatus:
      return "status";
    case Request::kLinks:
      return "links";
    case Request::kDisks:
      return "disks";
    case Request::kStats:
      return "stats";
    case Request::kExportAdd:
      return "export_add";
    case Request::kExportRemove:
      return "export_remove";
    case Request::kConnect:
      return "connect";
    case Request::kDisconnect:
      return "disconnect";
    case Request::kRestart:
      return "restart";
    case Request::COMMAND_NOT_SET:
      break;
  }
  return "none";
}

Response ControlService::Handle(std::string_view request_payload) {
  Request req;
  if (!req.ParseFromArray(request_payload.data(), static_cast<int>(request_payload.size())))
    return ErrorResponse(Error::MALFORMED, "request does not parse as a control Request");
  return Handle(req);
}

namespace {

template <typename T>
Response FromResult(const Result<T>& r, T* out) {
  if (!r.ok()) return ErrorResponse(ErrorCodeFor(r.status()), r.status().message());
  *out = r.value();
  Response resp;
  resp.set_version(kControlVersion);
  return resp;
}

Response DoneResponse(const Result<std::string>& r) {
  if (!r.ok()) return ErrorResponse(ErrorCodeFor(r.status()), r.status().message());
  Response resp;
  resp.set_version(kControlVersion);
  resp.mutable_done()->set_message(r.value());
  return resp;
}

Result<HostPort> ParseAddress(const std::string& text) {
  if (text.empty()) return Status::InvalidArgument("missing address (HOST[:PORT])");
  auto hp = ParseHostPort(text);
  if (!hp.ok()) return Status::InvalidArgument(text + ": " + hp.status().message());
  return hp;
}

}  // namespace

Response ControlService::Handle(const Request& req) {
  // A client of another version may mean something else by the same fields;
  // refuse before looking at them. Version 0 is also what an empty or
  // version-less payload decodes to.
  if (req.version() != kControlVersion)
    return ErrorResponse(Error::VERSION_MISMATCH,
                         "control protocol version " + std::to_string(req.version()) +
                             " is not supported: this daemon speaks version " +
                             std::to_string(kControlVersion));
  Response resp;
  resp.set_version(kControlVersion);
  switch (req.command_case()) {
    case Request::kStatus: {
      StatusReply* s = resp.mutable_status();
      *s->mutable_daemon() = backend_->DescribeDaemon();
      for (auto& l : backend_->Links()) *s->add_links() = std::move(l);
      for (auto& d : backend_->Disks()) *s->add_disks() = std::move(d);
      for (auto& e : backend_->Exports()) *s->add_exports() = std::move(e);
      return resp;
    }
    case Request::kLinks: {
      LinksReply* l = resp.mutable_links();
      for (auto& x : backend_->Links()) *l->add_links() = std::move(x);
      for (auto& x : backend_->RelayedSpans()) *l->add_relayed() = std::move(x);
      return resp;
    }
    case Request::kDisks: {
      DisksReply* d = resp.mutable_disks();
      for (auto& x : backend_->Disks()) *d->add_disks() = std::move(x);
      for (auto& e : backend_->Exports()) *d->add_exports() = std::move(e);
      return resp;
    }
    case Request::kStats: {
      StatsReply* st = resp.mutable_stats();
      for (auto& x : backend_->Stats()) *st->add_disks() = std::move(x);
      for (auto& x : backend_->Links()) *st->add_links() = std::move(x);
      return resp;
    }
    case Request::kExportAdd: {
      const std::string& raw = req.export_add().spec();
      if (raw.empty()) return ErrorResponse(Error::INVALID_ARGUMENT, "export add: missing spec");
      auto spec = ParseExportSpec(raw);
      if (!spec.ok())
        return ErrorResponse(Error::INVALID_ARGUMENT,
                             "export add " + raw + ": " + spec.status().message());
      ExportInfo info;
      Response r = FromResult(backend_->AddExport(raw, spec.value()), &info);
      if (!r.has_error()) *r.mutable_export_added() = std::move(info);
      return r;
    }
    case Request::kExportRemove: {
      const std::string& serial = req.export_remove().serial();
      if (serial.empty() || serial.size() > kMaxIdentityLength)
        return ErrorResponse(
            Error::INVALID_ARGUMENT,
            "export remove: a serial has 1 to " + std::to_string(kMaxIdentityLength) + " bytes");
      return DoneResponse(backend_->RemoveExport(serial));
    }
    case Request::kConnect: {
      auto hp = ParseAddress(req.connect().address());
      if (!hp.ok())
        return ErrorResponse(Error::INVALID_ARGUMENT, "connect: " + hp.status().message());
      return DoneResponse(backend_->Connect(hp.value()));
    }
    case Request::kDisconnect: {
      auto hp = ParseAddress(req.disconnect().address());
      if (!hp.ok())
        return ErrorResponse(Error::INVALID_ARGUMENT, "disconnect: " + hp.status().message());
      return DoneResponse(backend_->Disconnect(hp.value()));
    }
    case Request::kRestart:
      return DoneResponse(backend_->Restart());
    case Request::COMMAND_NOT_SET:
      break;
  }
  // Also what a newer client's command (a oneof field we do not know) looks
  // like to us: protobuf keeps it as an unknown field.
  return ErrorResponse(Error::MALFORMED, "request has no command this daemon knows");
}

}  // namespace xdisk::control
