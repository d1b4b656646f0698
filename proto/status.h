// Status and Result<T>: the one error currency of xdisk-fuse.
//
// Every fallible call inside the project returns a [[nodiscard]] Status or
// Result<T>. A Status is cheap when OK (no allocation) and carries an error
// kind plus a message with context (command name, msgid, offsets, path).
// Conversion to the conventions of other libraries happens only at the edges:
// negative errno for libuv, fuse_reply_err() for FUSE, the dmsg `error` field
// for peers. Exceptions are not used and never cross a C callback.
//
// This header lives in proto/ because proto/ is the bottom of the dependency
// graph; daemon/ uses it too. fusedev/ speaks errno at its interface instead.
#pragma once

#include <cerrno>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace xdisk {

class [[nodiscard]] Status {
 public:
  enum class Kind {
    kOk = 0,
    kInvalidArgument,  // Bad option, bad request parameter.
    kNotFound,
    kIoError,     // A system call failed; errno_value() says which.
    kProtocol,    // The peer broke the dmsg protocol.
    kCorruption,  // Checksums or framing of stored data do not match.
    kPermissionDenied,
    kUnavailable,  // Try again later (no path, link down).
  };

  Status() = default;
  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string msg) {
    return Status(Kind::kInvalidArgument, std::move(msg));
  }
  static Status NotFound(std::string msg) { return Status(Kind::kNotFound, std::move(msg)); }
  static Status Protocol(std::string msg) { return Status(Kind::kProtocol, std::move(msg)); }
  static Status Corruption(std::string msg) { return Status(Kind::kCorruption, std::move(msg)); }
  static Status PermissionDenied(std::string msg) {
    return Status(Kind::kPermissionDenied, std::move(msg));
  }
  static Status Unavailable(std::string msg) { return Status(Kind::kUnavailable, std::move(msg)); }
  // `err` is a positive errno value; the message gets ": strerror" appended.
  static Status FromErrno(int err, std::string_view context);

  bool ok() const { return kind_ == Kind::kOk; }
  Kind kind() const { return kind_; }
  // Positive errno for kIoError statuses, EINVAL/EIO style mapping otherwise.
  int errno_value() const;
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  Status(Kind kind, std::string msg, int err = 0)
      : kind_(kind), err_(err), message_(std::move(msg)) {}
  Kind kind_ = Kind::kOk;
  int err_ = 0;
  std::string message_;
};

// Result<T> holds either a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}  // NOLINT: implicit by design
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace xdisk
