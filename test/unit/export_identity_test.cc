// Unit tests for --export parsing and export identity defaults. File-system
// work happens in a private temporary directory, including a fake /sys and
// /run/udev tree for the kernel-serial lookup.
#include "daemon/export/export_identity.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

using xdisk::ExportSpec;
using xdisk::ParseExportSpec;
using xdisk::ResolvedExport;
using xdisk::Status;

namespace {

namespace fs = std::filesystem;

struct TempDir {
  std::string path;
  TempDir() {
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/export_identity_test.XXXXXX";
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string Make(const std::string& rel, const std::string& content) const {
    std::string p = path + "/" + rel;
    fs::create_directories(fs::path(p).parent_path());
    std::ofstream(p) << content;
    return p;
  }
};

std::string ReadFile(const std::string& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Expects ParseExportSpec(arg) to fail with InvalidArgument and a message
// containing `needle`.
void ExpectParseError(const std::string& arg, const std::string& needle) {
  INFO("arg: " << arg);
  auto r = ParseExportSpec(arg);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().kind() == Status::Kind::kInvalidArgument);
  INFO("message: " << r.status().message());
  CHECK(r.status().message().find(needle) != std::string::npos);
}

ResolvedExport ResolveOrFail(const ExportSpec& spec, const std::string& state,
                             const std::string& host) {
  auto r = xdisk::ResolveExport(spec, state, host);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  return std::move(r).value();
}

}  // namespace

TEST_CASE("A bare path parses with every field defaulted", "[export_identity]") {
  auto r = ParseExportSpec("/dev/sdb");
  REQUIRE(r.ok());
  CHECK(r->path == "/dev/sdb");
  CHECK(r->serial.empty());
  CHECK(r->label.empty());
  CHECK(r->uuid_text.empty());
  CHECK_FALSE(r->read_only);
  CHECK(r->blksize == 0);
}

TEST_CASE("Every option parses, and uuids are stored lowercase", "[export_identity]") {
  auto r = ParseExportSpec(
      "/srv/a.img,serno=ABC-123,label=host/a disk,uuid=0123ABCD-4567-89ab-CDEF-0123456789AB,ro,"
      "blksize=4096");
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->path == "/srv/a.img");
  CHECK(r->serial == "ABC-123");
  CHECK(r->label == "host/a disk");
  CHECK(r->uuid_text == "0123abcd-4567-89ab-cdef-0123456789ab");
  CHECK(r->read_only);
  CHECK(r->blksize == 4096);
}

TEST_CASE("Malformed --export arguments are rejected naming the problem", "[export_identity]") {
  ExpectParseError("", "empty path");
  ExpectParseError(",ro", "empty path");
  ExpectParseError("/d,,ro", "empty option");
  ExpectParseError("/d,", "empty option");
  ExpectParseError("/d,color=red", "unknown option 'color'");
  ExpectParseError("/d,ro,ro", "'ro' repeated");
  ExpectParseError("/d,serno=a,serno=b", "'serno' repeated");
  ExpectParseError("/d,ro=1", "'ro' takes no value");
  ExpectParseError("/d,serno", "'serno' needs =VALUE");
  ExpectParseError("/d,serno=", "serno is empty");
  ExpectParseError("/d,serno=" + std::string(64, 's'), "longer than 63");
  ExpectParseError("/d,serno=a/b", "'a/b' must be printable ASCII without '/'");
  ExpectParseError("/d,serno=a b", "without '/' or whitespace");
  ExpectParseError("/d,serno=a\tb", "without '/' or whitespace");
  ExpectParseError("/d,label=", "label is empty");
  ExpectParseError("/d,label=" + std::string(64, 'l'), "label '" + std::string(64, 'l'));
  ExpectParseError("/d,label=a\nb", "control character");
  // The importer's by-label rule: components that are empty, "." or "..".
  ExpectParseError("/d,label=x/../../y", "not usable as a by-label path");
  ExpectParseError("/d,label=h//d", "not usable as a by-label path");
  ExpectParseError("/d,label=/h/d", "not usable as a by-label path");
  ExpectParseError("/d,label=h/d/", "not usable as a by-label path");
  ExpectParseError("/d,label=.", "not usable as a by-label path");
  ExpectParseError("/d,uuid=xyz", "uuid 'xyz' is not 8-4-4-4-12");
  ExpectParseError("/d,uuid=0123abcd-4567-89ab-cdef-0123456789a", "is not 8-4-4-4-12");
  ExpectParseError("/d,uuid=0123abcd+4567-89ab-cdef-0123456789ab", "is not 8-4-4-4-12");
  ExpectParseError("/d,uuid=0123abcg-4567-89ab-cdef-0123456789ab", "is not 8-4-4-4-12");
  ExpectParseError("/d,uuid=00000000-0000-0000-0000-000000000000", "must not be nil");
  for (const char* bad : {"1000", "256", "131072", "0", "4k", "", "-512", "4096 "}) {
    ExpectParseError(std::string("/d,blksize=") + bad,
                     std::string("blksize '") + bad + "' must be a power of two from 512");
  }
}

TEST_CASE("Limits are inclusive: 63-character serial and label, blksize 512 and 65536",
          "[export_identity]") {
  auto r = ParseExportSpec("/d,serno=" + std::string(63, 's') + ",label=" + std::string(63, 'l') +
                           ",blksize=65536");
  REQUIRE(r.ok());
  CHECK(r->serial.size() == 63);
  CHECK(r->label.size() == 63);
  CHECK(r->blksize == 65536);
  auto small = ParseExportSpec("/d,blksize=512");
  REQUIRE(small.ok());
  CHECK(small->blksize == 512);
}

TEST_CASE("Derived serials are deterministic, prefixed and short", "[export_identity]") {
  const std::string s = xdisk::DeriveSerial("host1", "/srv/disk.img");
  // Pinned: FNV-1a-64 of "host1:/srv/disk.img". Changing the algorithm would
  // change every exported disk's identity.
  CHECK(s == "xf-eb921d0b80cf253f");
  CHECK(xdisk::DeriveSerial("host1", "/srv/disk.img") == s);
  CHECK(xdisk::DeriveSerial("host2", "/srv/disk.img") != s);
  CHECK(xdisk::DeriveSerial("host1", "/srv/disk2.img") != s);
  CHECK(s.size() == 19);
  CHECK(s.find('/') == std::string::npos);
}

TEST_CASE("Default labels are host/basename, truncated to 63 bytes", "[export_identity]") {
  CHECK(xdisk::DefaultLabel("node7", "/dev/disk/by-id/ata-X") == "node7/ata-X");
  CHECK(xdisk::DefaultLabel("node7", "disk.img") == "node7/disk.img");
  CHECK(xdisk::DefaultLabel("node7", "/srv/dir/") == "node7/dir");

  const std::string long_label = xdisk::DefaultLabel("h", "/srv/" + std::string(100, 'x'));
  CHECK(long_label.size() == 63);
  CHECK(long_label == "h/" + std::string(61, 'x'));

  // A two-byte UTF-8 character straddling byte 63 is dropped whole.
  const std::string utf = xdisk::DefaultLabel("h", "/" + std::string(60, 'a') + "\xC3\xA9z");
  CHECK(utf == "h/" + std::string(60, 'a'));
}

TEST_CASE("Uuid text is validated and generated as version 4", "[export_identity]") {
  std::string c;
  CHECK(xdisk::ParseUuidText("01234567-89AB-cdef-0123-456789abcdef", &c));
  CHECK(c == "01234567-89ab-cdef-0123-456789abcdef");
  CHECK_FALSE(xdisk::ParseUuidText("0123456789ABcdef0123456789abcdef", nullptr));
  CHECK_FALSE(xdisk::ParseUuidText("", nullptr));

  auto a = xdisk::GenerateUuidText();
  auto b = xdisk::GenerateUuidText();
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(*a != *b);
  CHECK(xdisk::ParseUuidText(*a, &c));
  CHECK(c == *a);  // Already lowercase.
  CHECK((*a)[14] == '4');
  CHECK(std::string("89ab").find((*a)[19]) != std::string::npos);
}

TEST_CASE("ResolveExport defaults are stable across runs with one state directory",
          "[export_identity]") {
  TempDir dir;
  const std::string img = dir.Make("disk.img", std::string(4096, 'x'));
  const std::string state = dir.path + "/state/sub";  // Created on demand.
  auto spec = ParseExportSpec(img);
  REQUIRE(spec.ok());

  ResolvedExport first = ResolveOrFail(*spec, state, "hostA");
  CHECK(first.serial == xdisk::DeriveSerial("hostA", fs::canonical(img).string()));
  CHECK(first.serial_source == "derived");
  CHECK(first.label == "hostA/disk.img");
  CHECK(first.blksize == 512);
  CHECK_FALSE(first.is_block_device);
  CHECK_FALSE(first.read_only);
  CHECK(first.canonical_path == fs::canonical(img).string());
  CHECK(xdisk::ParseUuidText(first.uuid_text, nullptr));

  const std::string uuid_file = state + "/exports/" + first.serial + ".uuid";
  CHECK(ReadFile(uuid_file) == first.uuid_text + "\n");

  ResolvedExport second = ResolveOrFail(*spec, state, "hostA");
  CHECK(second.serial == first.serial);
  CHECK(second.label == first.label);
  CHECK(second.uuid_text == first.uuid_text);

  // The serial does not depend on the state directory; the uuid does.
  TempDir other;
  ResolvedExport elsewhere = ResolveOrFail(*spec, other.path, "hostA");
  CHECK(elsewhere.serial == first.serial);
  CHECK(elsewhere.uuid_text != first.uuid_text);

  // No temp files are left next to the uuid.
  int entries = 0;
  for (auto& e : fs::directory_iterator(state + "/exports")) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 1);
}

TEST_CASE("Explicit options override every default", "[export_identity]") {
  TempDir dir;
  const std::string img = dir.Make("disk.img", "data");
  auto spec = ParseExportSpec(img +
                              ",serno=MY-SERIAL,label=custom,uuid=11111111-2222-4333-8444-"
                              "555555555555,ro,blksize=4096");
  REQUIRE(spec.ok());
  ResolvedExport r = ResolveOrFail(*spec, dir.path + "/state", "hostA");
  CHECK(r.serial == "MY-SERIAL");
  CHECK(r.serial_source == "config");
  CHECK(r.label == "custom");
  CHECK(r.uuid_text == "11111111-2222-4333-8444-555555555555");
  CHECK(r.read_only);
  CHECK(r.blksize == 4096);
  // An explicit uuid is not persisted: the configuration holds it.
  CHECK_FALSE(fs::exists(dir.path + "/state/exports/MY-SERIAL.uuid"));
}

TEST_CASE("ResolveExport errors name the path", "[export_identity]") {
  TempDir dir;
  ExportSpec missing;
  missing.path = dir.path + "/no-such-disk";
  auto r = xdisk::ResolveExport(missing, dir.path, "h");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().errno_value() == ENOENT);
  CHECK(r.status().message().find(missing.path) != std::string::npos);

  ExportSpec directory;
  directory.path = dir.path;
  auto d = xdisk::ResolveExport(directory, dir.path + "/state", "h");
  REQUIRE_FALSE(d.ok());
  CHECK(d.status().message().find(dir.path + ": not a regular file or block device") !=
        std::string::npos);

  if (geteuid() != 0) {
    const std::string locked = dir.Make("locked.img", "x");
    REQUIRE(chmod(locked.c_str(), 0) == 0);
    ExportSpec s;
    s.path = locked;
    auto l = xdisk::ResolveExport(s, dir.path + "/state", "h");
    REQUIRE_FALSE(l.ok());
    CHECK(l.status().message().find(locked) != std::string::npos);
  }
}

TEST_CASE("A damaged uuid file is an error, not a new identity", "[export_identity]") {
  TempDir dir;
  const std::string img = dir.Make("disk.img", "data");
  auto spec = ParseExportSpec(img + ",serno=S1");
  REQUIRE(spec.ok());
  dir.Make("state/exports/S1.uuid", "not-a-uuid\n");
  auto r = xdisk::ResolveExport(*spec, dir.path + "/state", "h");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().kind() == Status::Kind::kCorruption);
  CHECK(r.status().message().find("S1.uuid") != std::string::npos);
  CHECK(ReadFile(dir.path + "/state/exports/S1.uuid") == "not-a-uuid\n");
}

TEST_CASE("The host uuid is created once and read back later", "[export_identity]") {
  TempDir dir;
  auto a = xdisk::LoadOrCreateHostUuid(dir.path + "/st");
  REQUIRE(a.ok());
  CHECK(ReadFile(dir.path + "/st/host.uuid") == *a + "\n");
  auto b = xdisk::LoadOrCreateHostUuid(dir.path + "/st");
  REQUIRE(b.ok());
  CHECK(*b == *a);

  // A hand-written file in upper case with surrounding whitespace is accepted
  // and returned in canonical form.
  dir.Make("st2/host.uuid", "  AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE \n");
  auto c = xdisk::LoadOrCreateHostUuid(dir.path + "/st2");
  REQUIRE(c.ok());
  CHECK(*c == "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee");
}

TEST_CASE("Duplicate serials, uuids or targets are reported with both paths", "[export_identity]") {
  ResolvedExport a;
  a.path = "/dev/a";
  a.canonical_path = "/dev/sda";
  a.serial = "S";
  a.uuid_text = "11111111-1111-4111-8111-111111111111";
  ResolvedExport b = a;
  b.path = "/dev/b";
  b.canonical_path = "/dev/sdb";
  b.uuid_text = "22222222-2222-4222-8222-222222222222";

  Status dup = xdisk::CheckUniqueSerials({a, b});
  REQUIRE_FALSE(dup.ok());
  CHECK(dup.message().find("/dev/a") != std::string::npos);
  CHECK(dup.message().find("/dev/b") != std::string::npos);
  CHECK(dup.message().find("same serial 'S'") != std::string::npos);

  b.serial = "T";
  CHECK(xdisk::CheckUniqueSerials({a, b}).ok());
  CHECK(xdisk::CheckUniqueSerials({}).ok());

  ResolvedExport c = b;
  c.path = "/dev/c";
  c.serial = "U";
  c.canonical_path = "/dev/sdc";
  Status uuid = xdisk::CheckUniqueSerials({a, b, c});
  REQUIRE_FALSE(uuid.ok());
  CHECK(uuid.message().find("/dev/b and /dev/c have the same uuid") != std::string::npos);

  c.uuid_text = "33333333-3333-4333-8333-333333333333";
  c.canonical_path = "/dev/sda";
  Status same = xdisk::CheckUniqueSerials({a, b, c});
  REQUIRE_FALSE(same.ok());
  CHECK(same.message().find("/dev/a and /dev/c are the same target /dev/sda") != std::string::npos);
}

TEST_CASE("Kernel serials come from sysfs, then udev, with a suffix for partitions",
          "[export_identity]") {
  TempDir root;
  // A fake tree shaped like the real one: /sys/dev/block/MAJ:MIN links into
  // the device directory, partitions are subdirectories of their disk.
  root.Make("sys/block/sda/dev", "8:0\n");
  root.Make("sys/block/sda/device/serial", "  WD-WX11 A2B/3  \n");
  root.Make("sys/block/sda/sda2/partition", "2\n");
  root.Make("sys/block/sda/sda2/dev", "8:2\n");
  root.Make("sys/block/vdb/dev", "253:16\n");
  root.Make("sys/block/vdb/serial", "virtio-serial\n");
  root.Make("sys/block/sdc/dev", "8:32\n");
  root.Make("sys/block/sdc/sdc1/partition", "1\n");
  root.Make("sys/block/sdc/sdc1/dev", "8:33\n");
  root.Make("sys/block/loop0/dev", "7:0\n");
  root.Make("run/udev/data/b8:32",
            "S:disk/by-id/x\nE:ID_SERIAL=Vendor_Model_Z9\n"
            "E:ID_SERIAL_SHORT=Z9 9\n");
  fs::create_directories(root.path + "/sys/dev/block");
  fs::create_directory_symlink("../../block/sda", root.path + "/sys/dev/block/8:0");
  fs::create_directory_symlink("../../block/sda/sda2", root.path + "/sys/dev/block/8:2");
  fs::create_directory_symlink("../../block/vdb", root.path + "/sys/dev/block/253:16");
  fs::create_directory_symlink("../../block/sdc", root.path + "/sys/dev/block/8:32");
  fs::create_directory_symlink("../../block/sdc/sdc1", root.path + "/sys/dev/block/8:33");
  fs::create_directory_symlink("../../block/loop0", root.path + "/sys/dev/block/7:0");

  std::string source;
  CHECK(xdisk::KernelSerialOf(8, 0, root.path, &source) == "WD-WX11_A2B-3");
  CHECK(source == "sysfs");
  CHECK(xdisk::KernelSerialOf(8, 2, root.path) == "WD-WX11_A2B-3-part2");
  CHECK(xdisk::KernelSerialOf(253, 16, root.path) == "virtio-serial");
  source.clear();
  CHECK(xdisk::KernelSerialOf(8, 32, root.path, &source) == "Z9_9");
  CHECK(source == "udev");
  CHECK(xdisk::KernelSerialOf(8, 33, root.path) == "Z9_9-part1");
  CHECK(xdisk::KernelSerialOf(7, 0, root.path).empty());
  CHECK(xdisk::KernelSerialOf(9, 9, root.path).empty());

  // A serial that would push the partition suffix past 63 bytes is cut
  // before the suffix, so the suffix survives.
  root.Make("sys/block/sda/device/serial", std::string(70, 'Q'));
  const std::string part = xdisk::KernelSerialOf(8, 2, root.path);
  CHECK(part.size() == 63);
  CHECK(part.substr(part.size() - 6) == "-part2");
}
