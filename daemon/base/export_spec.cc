#include "daemon/base/export_spec.h"

#include <charconv>
#include <map>

#include "fusedev/disk_tree.h"

namespace xdisk {

namespace {

constexpr std::string_view kKnownKeys = "serno, label, uuid, ro, blksize";

Status CheckSerial(std::string_view serial, std::string_view what) {
  if (serial.empty()) return Status::InvalidArgument(std::string(what) + ": serno is empty");
  if (serial.size() > kMaxIdentityLength) {
    return Status::InvalidArgument(std::string(what) + ": serno '" + std::string(serial) +
                                   "' is longer than 63 characters");
  }
  for (char c : serial) {
    unsigned char u = static_cast<unsigned char>(c);
    // The serial becomes a file name on both hosts (/dev/serno/<serial> on
    // the importer, <serial>.uuid in our state directory), hence no '/', and
    // whitespace would make logs and shell use ambiguous.
    if (u <= 0x20 || u >= 0x7F || c == '/') {
      return Status::InvalidArgument(std::string(what) + ": serno '" + std::string(serial) +
                                     "' must be printable ASCII without '/' or whitespace");
    }
  }
  return Status::Ok();
}

Status CheckLabel(std::string_view label, std::string_view what) {
  if (label.empty()) return Status::InvalidArgument(std::string(what) + ": label is empty");
  if (label.size() > kMaxIdentityLength) {
    return Status::InvalidArgument(std::string(what) + ": label '" + std::string(label) +
                                   "' is longer than 63 bytes");
  }
  for (char c : label) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7F) {
      return Status::InvalidArgument(std::string(what) + ": label contains a control character");
    }
  }
  // Importers split the label on '/' into by-label/ path components and
  // drop a label with an unusable one (fusedev/disk_tree.h): refuse it here,
  // where the operator sees it, instead of having it vanish there.
  if (std::string bad = fusedev::DiskTree::LabelProblem(label); !bad.empty()) {
    return Status::InvalidArgument(std::string(what) + ": label '" + std::string(label) +
                                   "' is not usable as a by-label path: " + bad);
  }
  return Status::Ok();
}

}  // namespace

bool ParseUuidText(std::string_view text, std::string* canonical) {
  if (text.size() != 36) return false;
  std::string out(text);
  for (size_t i = 0; i < out.size(); ++i) {
    char c = out[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
      continue;
    }
    if (c >= '0' && c <= '9') continue;
    if (c >= 'a' && c <= 'f') continue;
    if (c >= 'A' && c <= 'F') {
      out[i] = static_cast<char>(c - 'A' + 'a');
      continue;
    }
    return false;
  }
  if (canonical) *canonical = std::move(out);
  return true;
}

Result<ExportSpec> ParseExportSpec(std::string_view arg) {
  const std::string what = "--export '" + std::string(arg) + "'";
  ExportSpec spec;
  size_t comma = arg.find(',');
  spec.path = std::string(arg.substr(0, comma));
  if (spec.path.empty()) return Status::InvalidArgument(what + ": empty path");

  std::map<std::string, bool, std::less<>> seen;
  while (comma != std::string_view::npos) {
    size_t start = comma + 1;
    comma = arg.find(',', start);
    std::string_view item =
        arg.substr(start, comma == std::string_view::npos ? comma : comma - start);
    if (item.empty()) return Status::InvalidArgument(what + ": empty option between commas");
    size_t eq = item.find('=');
    std::string key(item.substr(0, eq));
    bool has_value = eq != std::string_view::npos;
    std::string value = has_value ? std::string(item.substr(eq + 1)) : std::string();
    if (seen.count(key)) return Status::InvalidArgument(what + ": option '" + key + "' repeated");
    seen[key] = true;

    if (key == "ro") {
      if (has_value) {
        return Status::InvalidArgument(what + ": option 'ro' takes no value (got 'ro=" + value +
                                       "')");
      }
      spec.read_only = true;
      continue;
    }
    if (key != "serno" && key != "label" && key != "uuid" && key != "blksize") {
      return Status::InvalidArgument(what + ": unknown option '" + key +
                                     "' (known: " + std::string(kKnownKeys) + ")");
    }
    if (!has_value) return Status::InvalidArgument(what + ": option '" + key + "' needs =VALUE");

    if (key == "serno") {
      Status s = CheckSerial(value, what);
      if (!s.ok()) return s;
      spec.serial = value;
    } else if (key == "label") {
      Status s = CheckLabel(value, what);
      if (!s.ok()) return s;
      spec.label = value;
    } else if (key == "uuid") {
      std::string canonical;
      if (!ParseUuidText(value, &canonical)) {
        return Status::InvalidArgument(what + ": uuid '" + value +
                                       "' is not 8-4-4-4-12 hex digits");
      }
      if (canonical == "00000000-0000-0000-0000-000000000000") {
        return Status::InvalidArgument(what + ": uuid must not be nil (omit it to generate one)");
      }
      spec.uuid_text = canonical;
    } else {
      uint64_t n = 0;
      auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      bool ok = ec == std::errc() && ptr == value.data() + value.size() && !value.empty();
      if (!ok || n < 512 || n > 65536 || (n & (n - 1)) != 0) {
        return Status::InvalidArgument(what + ": blksize '" + value +
                                       "' must be a power of two from 512 to 65536");
      }
      spec.blksize = static_cast<uint32_t>(n);
    }
  }
  return spec;
}

}  // namespace xdisk
