#include "proto/status.h"

#include <cstring>

namespace xdisk {

Status Status::FromErrno(int err, std::string_view context) {
  std::string msg(context);
  msg += ": ";
  msg += std::strerror(err);
  return Status(Kind::kIoError, std::move(msg), err);
}

int Status::errno_value() const {
  switch (kind_) {
    case Kind::kOk:
      return 0;
    case Kind::kIoError:
      return err_ ? err_ : EIO;
    case Kind::kInvalidArgument:
      return EINVAL;
    case Kind::kNotFound:
      return ENOENT;
    case Kind::kPermissionDenied:
      return EACCES;
    case Kind::kUnavailable:
      return EAGAIN;
    case Kind::kProtocol:
    case Kind::kCorruption:
      return EIO;
  }
  return EIO;
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return message_;
}

}  // namespace xdisk
