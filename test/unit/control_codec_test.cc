// The control API's pure parts: the frame codec, request validation and
// dispatch (against a fake backend), the reload diff, xdiskctl's argument
// parsing and output formatting.
#include "daemon/control_codec.h"

#include <catch2/catch.hpp>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "daemon/control_server.h"
#include "daemon/control_service.h"
#include "daemon/daemon_control.h"
#include "daemon/xdiskctl.h"

using namespace xdisk;
using namespace xdisk::control;

namespace {

std::string Bytes(std::initializer_list<int> v) {
  std::string s;
  for (int b : v) s += static_cast<char>(b);
  return s;
}

std::string Frame(std::string_view payload) {
  std::string out;
  AppendFrame(payload, &out);
  return out;
}

std::string Serialize(const google::protobuf::MessageLite& m) {
  std::string s;
  REQUIRE(m.SerializeToString(&s));
  return s;
}

// Feeds `stream` cut at every position in `cuts` and collects the payloads.
std::vector<std::string> DecodeAll(const std::string& stream, const std::vector<size_t>& cuts,
                                   ControlFrameDecoder::Outcome* last) {
  ControlFrameDecoder d;
  std::vector<std::string> out;
  size_t pos = 0;
  auto drain = [&] {
    std::string p;
    for (;;) {
      *last = d.Next(&p);
      if (*last != ControlFrameDecoder::Outcome::kFrame) return;
      out.push_back(p);
    }
  };
  for (size_t c : cuts) {
    d.Feed(std::string_view(stream).substr(pos, c - pos));
    pos = c;
    drain();
  }
  d.Feed(std::string_view(stream).substr(pos));
  drain();
  return out;
}

Request StatusCommand() {
  Request r;
  r.set_version(kControlVersion);
  r.mutable_status();
  return r;
}

// Records what reached it; answers with canned data.
class FakeBackend : public ControlBackend {
 public:
  int calls = 0;
  std::string last_raw;
  ExportSpec last_spec;
  std::string last_serial;
  std::string last_addr;
  Status next_error;

  DaemonInfo DescribeDaemon() const override {
    DaemonInfo d;
    d.set_hostname("h");
    d.set_pid(42);
    return d;
  }
  std::vector<LinkInfo> Links() const override {
    LinkInfo l;
    l.set_peer("10.0.0.2:987");
    l.set_state("up");
    l.set_bytes_in(10);
    return {l};
  }
  std::vector<DiskInfo> Disks() const override {
    DiskInfo d;
    d.set_serial("s1");
    d.set_state("blocked");
    d.set_queued(7);
    return {d};
  }
  std::vector<ExportInfo> Exports() const override { return {}; }
  std::vector<DiskStats> Stats() const override { return {}; }
  Result<ExportInfo> AddExport(const std::string& raw, const ExportSpec& spec) override {
    ++calls;
    last_raw = raw;
    last_spec = spec;
    if (!next_error.ok()) return next_error;
    ExportInfo e;
    e.set_serial(spec.serial.empty() ? "derived" : spec.serial);
    return e;
  }
  Result<std::string> RemoveExport(const std::string& serial) override {
    ++calls;
    last_serial = serial;
    if (!next_error.ok()) return next_error;
    return std::string("removed");
  }
  Result<std::string> Connect(const HostPort& addr) override {
    ++calls;
    last_addr = addr.ToString();
    return std::string("connecting");
  }
  Result<std::string> Disconnect(const HostPort& addr) override {
    ++calls;
    last_addr = addr.ToString();
    if (!next_error.ok()) return next_error;
    return std::string("disconnected");
  }
};

ResolvedExport Export(std::string serial, std::string path, bool ro = false) {
  ResolvedExport r;
  r.serial = std::move(serial);
  r.path = path;
  r.canonical_path = path;
  r.label = "h/" + r.serial;
  r.uuid_text = "uuid-" + r.serial;
  r.read_only = ro;
  r.blksize = 512;
  return r;
}

HostPort HP(const std::string& text) {
  auto hp = ParseHostPort(text);
  REQUIRE(hp.ok());
  return *hp;
}

}  // namespace

// ---- framing ----

TEST_CASE("a status request frames as the worked example in control_codec.h", "[control]") {
  std::string out;
  REQUIRE(AppendMessageFrame(StatusCommand(), &out).ok());
  CHECK(out == Bytes({0, 0, 0, 4, 0x08, 0x01, 0x12, 0x00}));
}

TEST_CASE("the length prefix is big-endian", "[control]") {
  std::string payload(0x010203, 'x');
  std::string f = Frame(payload);
  CHECK(f.substr(0, 4) == Bytes({0x00, 0x01, 0x02, 0x03}));
  CHECK(f.size() == payload.size() + 4);
}

TEST_CASE("frames decode the same in every chunking", "[control]") {
  const std::vector<std::string> payloads = {"abc", "", std::string(300, '\xff'), "z"};
  std::string stream;
  for (const auto& p : payloads) stream += Frame(p);
  ControlFrameDecoder::Outcome last;
  // All at once, then split at each single position, then byte by byte.
  CHECK(DecodeAll(stream, {}, &last) == payloads);
  CHECK(last == ControlFrameDecoder::Outcome::kNeedMore);
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    INFO("cut at " << cut);
    CHECK(DecodeAll(stream, {cut}, &last) == payloads);
  }
  std::vector<size_t> every;
  for (size_t i = 1; i < stream.size(); ++i) every.push_back(i);
  CHECK(DecodeAll(stream, every, &last) == payloads);
}

TEST_CASE("a truncated frame waits for more and reports mid_frame", "[control]") {
  ControlFrameDecoder d;
  std::string f = Frame("hello");
  d.Feed(std::string_view(f).substr(0, f.size() - 1));
  std::string p;
  CHECK(d.Next(&p) == ControlFrameDecoder::Outcome::kNeedMore);
  CHECK(d.mid_frame());
  d.Feed(std::string_view(f).substr(f.size() - 1));
  CHECK(d.Next(&p) == ControlFrameDecoder::Outcome::kFrame);
  CHECK(p == "hello");
  CHECK_FALSE(d.mid_frame());
}

TEST_CASE("an oversize length prefix is refused before its payload arrives", "[control]") {
  ControlFrameDecoder d;
  d.Feed(Bytes({0x00, 0x10, 0x00, 0x01}));  // 1 MiB + 1
  std::string p;
  CHECK(d.Next(&p) == ControlFrameDecoder::Outcome::kError);
  CHECK(d.error().kind() == Status::Kind::kProtocol);
  CHECK(d.error().message().find("1048577") != std::string::npos);
  // Poisoned: stays in error and keeps nothing of what follows.
  d.Feed(std::string(4096, 'x'));
  CHECK(d.Next(&p) == ControlFrameDecoder::Outcome::kError);
  CHECK(d.buffered() == 0);
}

TEST_CASE("garbage prefixes such as ASCII text are oversize lengths", "[control]") {
  ControlFrameDecoder d;
  d.Feed("GET / HTTP/1.1\r\n");
  std::string p;
  CHECK(d.Next(&p) == ControlFrameDecoder::Outcome::kError);
}

TEST_CASE("a frame of exactly the limit is accepted", "[control]") {
  ControlFrameDecoder d;
  std::string payload(kMaxControlFrameBytes, 'a');
  d.Feed(Frame(payload));
  std::string p;
  REQUIRE(d.Next(&p) == ControlFrameDecoder::Outcome::kFrame);
  CHECK(p.size() == kMaxControlFrameBytes);
}

TEST_CASE("a message too large to frame is an error, not a frame", "[control]") {
  Request r = StatusCommand();
  r.mutable_export_add()->set_spec(std::string(kMaxControlFrameBytes, 'p'));
  std::string out = "keep";
  CHECK_FALSE(AppendMessageFrame(r, &out).ok());
  CHECK(out == "keep");
}

// ---- validation and dispatch ----

TEST_CASE("a payload that is not a Request gets MALFORMED", "[control]") {
  FakeBackend b;
  ControlService svc(&b);
  Response r = svc.Handle(std::string_view("\xff\xff\xff\xff\x0f", 5));
  REQUIRE(r.has_error());
  CHECK(r.error().code() == Error::MALFORMED);
  CHECK(r.version() == kControlVersion);
  CHECK(b.calls == 0);
}

TEST_CASE("an empty payload is version 0 and gets VERSION_MISMATCH", "[control]") {
  FakeBackend b;
  ControlService svc(&b);
  Response r = svc.Handle(std::string_view());
  REQUIRE(r.has_error());
  CHECK(r.error().code() == Error::VERSION_MISMATCH);
}

TEST_CASE("another protocol version is refused naming both versions", "[control]") {
  FakeBackend b;
  ControlService svc(&b);
  Request req = StatusCommand();
  req.set_version(7);
  Response r = svc.Handle(Serialize(req));
  REQUIRE(r.has_error());
  CHECK(r.error().code() == Error::VERSION_MISMATCH);
  CHECK(r.error().message().find("version 7") != std::string::npos);
  CHECK(r.error().message().find("version 1") != std::string::npos);
  CHECK(r.version() == kControlVersion);
}

TEST_CASE("a request without a known command gets MALFORMED", "[control]") {
  FakeBackend b;
  ControlService svc(&b);
  Request req;
  req.set_version(kControlVersion);
  CHECK(svc.Handle(req).error().code() == Error::MALFORMED);
  // A newer client's command: an unknown field 99 (an empty message).
  std::string bytes = Serialize(req) + Bytes({0x9a, 0x06, 0x00});
  Response r = svc.Handle(bytes);
  REQUIRE(r.has_error());
  CHECK(r.error().code() == Error::MALFORMED);
}

TEST_CASE("status gathers the daemon, links, disks and exports", "[control]") {
  FakeBackend b;
  ControlService svc(&b);
  Response r = svc.Handle(Serialize(StatusCommand()));
  REQUIRE_FALSE(r.has_error());
  REQUIRE(r.has_status());
  CHECK(r.status().daemon().pid() == 42);
  CHECK(r.status().links_size() == 1);
  CHECK(r.status().disks(0).queued() == 7);
}

TEST_CASE("a bad export spec is refused before the backend sees it", "[control]") {
  FakeBackend b;
  ControlService svc(&b);
  Request req;
  req.set_version(kControlVersion);
  req.mutable_export_add()->set_spec("/x,bogus=1");
  Response r = svc.Handle(req);
  REQUIRE(r.has_error());
  CHECK(r.error().code() == Error::INVALID_ARGUMENT);
  CHECK(b.calls == 0);
  req.mutable_export_add()->set_spec("");
  CHECK(svc.Handle(req).error().code() == Error::INVALID_ARGUMENT);
  CHECK(b.calls == 0);
}

TEST_CASE("export add passes the raw and parsed spec and returns the export", "[control]") {
  FakeBackend b;
  ControlService svc(&b);
  Request req;
  req.set_version(kControlVersion);
  req.mutable_export_add()->set_spec("/img,serno=abc,ro");
  Response r = svc.Handle(req);
  REQUIRE_FALSE(r.has_error());
  CHECK(r.export_added().serial() == "abc");
  CHECK(b.last_raw == "/img,serno=abc,ro");
  CHECK(b.last_spec.path == "/img");
  CHECK(b.last_spec.read_only);
}

TEST_CASE("backend failures map to error codes by Status kind", "[control]") {
  FakeBackend b;
  ControlService svc(&b);
  Request req;
  req.set_version(kControlVersion);
  req.mutable_export_remove()->set_serial("nope");
  b.next_error = Status::NotFound("no export with serial 'nope'");
  Response r = svc.Handle(req);
  REQUIRE(r.has_error());
  CHECK(r.error().code() == Error::NOT_FOUND);
  CHECK(r.error().message() == "no export with serial 'nope'");
  CHECK(ErrorCodeFor(Status::FromErrno(EIO, "x")) == Error::FAILED);
  CHECK(ErrorCodeFor(Status::InvalidArgument("x")) == Error::INVALID_ARGUMENT);
  CHECK(ErrorCodeName(Error::NOT_FOUND) == "not_found");
}

TEST_CASE("serials and addresses are checked before dispatch", "[control]") {
  FakeBackend b;
  ControlService svc(&b);
  Request req;
  req.set_version(kControlVersion);
  req.mutable_export_remove()->set_serial(std::string(64, 's'));
  CHECK(svc.Handle(req).error().code() == Error::INVALID_ARGUMENT);
  req.mutable_connect()->set_address("host:99999");
  CHECK(svc.Handle(req).error().code() == Error::INVALID_ARGUMENT);
  req.mutable_disconnect()->set_address("");
  CHECK(svc.Handle(req).error().code() == Error::INVALID_ARGUMENT);
  CHECK(b.calls == 0);
  req.mutable_connect()->set_address("[::1]:1000");
  Response r = svc.Handle(req);
  REQUIRE_FALSE(r.has_error());
  CHECK(r.done().message() == "connecting");
  CHECK(b.last_addr == "[::1]:1000");
}

TEST_CASE("only root or the daemon's own uid may connect", "[control]") {
  CHECK(PeerAllowed(0, 0));
  CHECK(PeerAllowed(0, 1000));
  CHECK(PeerAllowed(1000, 1000));
  CHECK_FALSE(PeerAllowed(65534, 0));
  CHECK_FALSE(PeerAllowed(1001, 1000));
}

// ---- reload diff ----

TEST_CASE("a reload of the same configuration changes nothing", "[control]") {
  auto plan = PlanReload({Export("a", "/a")}, {HP("h1:1")}, {Export("a", "/a")}, {HP("h1:1")});
  CHECK(plan.empty());
}

TEST_CASE("a reload adds and removes only what changed", "[control]") {
  auto plan = PlanReload({Export("a", "/a"), Export("b", "/b")}, {HP("h1:1"), HP("h2:2")},
                         {Export("b", "/b"), Export("c", "/c")}, {HP("h2:2"), HP("h3:3")});
  REQUIRE(plan.remove_exports == std::vector<std::string>{"a"});
  REQUIRE(plan.add_exports.size() == 1);
  CHECK(plan.add_exports[0].serial == "c");
  REQUIRE(plan.disconnect.size() == 1);
  CHECK(plan.disconnect[0].ToString() == "h1:1");
  REQUIRE(plan.connect.size() == 1);
  CHECK(plan.connect[0].ToString() == "h3:3");
}

TEST_CASE("an export whose identity changed is withdrawn and added again", "[control]") {
  auto plan = PlanReload({Export("a", "/a")}, {}, {Export("a", "/a", true)}, {});
  CHECK(plan.remove_exports == std::vector<std::string>{"a"});
  REQUIRE(plan.add_exports.size() == 1);
  CHECK(plan.add_exports[0].read_only);
  // The same target under another name of the same file is the same export.
  ResolvedExport moved = Export("a", "/a");
  moved.path = "/link-to-a";
  CHECK(PlanReload({Export("a", "/a")}, {}, {moved}, {}).empty());
}

TEST_CASE("a target listed twice is connected once", "[control]") {
  auto plan = PlanReload({}, {}, {}, {HP("h:1"), HP("h:1")});
  CHECK(plan.connect.size() == 1);
}

// ---- xdiskctl ----

namespace {

Result<ctl::CtlOutcome> Parse(std::vector<const char*> words, ctl::CtlArgs* args) {
  words.insert(words.begin(), "xdiskctl");
  return ctl::ParseCtlArgs(static_cast<int>(words.size()), words.data(), args);
}

}  // namespace

TEST_CASE("xdiskctl parses each command into its request", "[control]") {
  ctl::CtlArgs a;
  REQUIRE(Parse({"status"}, &a).ok());
  CHECK(a.request.has_status());
  CHECK(a.request.version() == kControlVersion);
  ctl::CtlArgs b;
  REQUIRE(Parse({"--json", "export", "add", "/img,serno=x", "--control", "/s"}, &b).ok());
  CHECK(b.json);
  CHECK(b.control_path == "/s");
  CHECK(b.request.export_add().spec() == "/img,serno=x");
  ctl::CtlArgs c;
  REQUIRE(Parse({"export", "remove", "x", "--timeout=3"}, &c).ok());
  CHECK(c.request.export_remove().serial() == "x");
  CHECK(c.timeout_ms == 3000);
  ctl::CtlArgs d;
  REQUIRE(Parse({"disconnect", "[::1]:99"}, &d).ok());
  CHECK(d.request.disconnect().address() == "[::1]:99");
  ctl::CtlArgs e;
  REQUIRE(Parse({"--", "connect", "-weird-host"}, &e).ok());
  CHECK(e.request.connect().address() == "-weird-host");
}

TEST_CASE("xdiskctl usage errors name the problem", "[control]") {
  auto err = [](std::vector<const char*> w) {
    ctl::CtlArgs a;
    auto r = Parse(std::move(w), &a);
    REQUIRE_FALSE(r.ok());
    return r.status().message();
  };
  CHECK(err({}) == "missing command");
  CHECK(err({"frobnicate"}) == "unknown command 'frobnicate'");
  CHECK(err({"status", "extra"}) == "status: unexpected argument 'extra'");
  CHECK(err({"export"}).find("add") != std::string::npos);
  CHECK(err({"export", "add"}) == "export add: missing PATH[,options]");
  CHECK(err({"export", "add", "/x,nope=1"}).starts_with("export add: "));
  CHECK(err({"connect", "h:0"}).starts_with("connect: "));
  CHECK(err({"--timeout", "0", "status"}).starts_with("--timeout"));
  CHECK(err({"--json=1", "status"}) == "--json: takes no value");
  CHECK(err({"--bogus", "status"}) == "unknown option '--bogus'");
  ctl::CtlArgs h;
  CHECK(*Parse({"links", "--help"}, &h) == ctl::CtlOutcome::kHelp);
}

TEST_CASE("human units read the way an operator expects", "[control]") {
  CHECK(ctl::HumanBytes(0) == "0B");
  CHECK(ctl::HumanBytes(1023) == "1023B");
  CHECK(ctl::HumanBytes(1536) == "1.5KiB");
  CHECK(ctl::HumanBytes(1ull << 30) == "1.0GiB");
  CHECK(ctl::HumanBytes(100ull << 20) == "100MiB");
  CHECK(ctl::HumanAge(59000) == "59s");
  CHECK(ctl::HumanAge(3723000) == "1h2m");
  CHECK(ctl::HumanAge(3600000) == "1h");
  CHECK(ctl::HumanAge(90061000) == "1d1h");
  CHECK(ctl::HumanMicros(900) == "900us");
  CHECK(ctl::HumanMicros(1500) == "1.5ms");
  CHECK(ctl::HumanMicros(2500000) == "2.5s");
  CHECK(ctl::JsonQuote("a\"b\\c\n\x01") == "\"a\\\"b\\\\c\\n\\u0001\"");
}

TEST_CASE("disks shows state, blocked since with age, and queued per disk", "[control]") {
  setenv("TZ", "UTC", 1);
  tzset();
  Request req;
  req.set_version(kControlVersion);
  req.mutable_disks();
  Response resp;
  resp.set_version(kControlVersion);
  DiskInfo* d = resp.mutable_disks()->add_disks();
  d->set_serial("s1");
  d->set_state("blocked");
  d->set_size(1ull << 30);
  d->set_queued(12);
  d->set_inflight(0);
  d->set_blocked_since_ms(1700000000000);
  d->add_names("xa0");
  d->add_names("serno/s1");
  const uint64_t now = 1700000000000 + 125000;
  std::string text = ctl::FormatHuman(req, resp, now);
  CHECK(text ==
        "SERIAL  STATE    SIZE    INFLIGHT  QUEUED  JOURNAL  BLOCKED-SINCE                     "
        "PATHS  NAMES\n"
        "s1      blocked  1.0GiB  0         12      0B       2023-11-14T22:13:20+00:00 (2m5s)  -"
        "      xa0,serno/s1\n");
  std::string json = ctl::FormatJson(req, resp, now);
  CHECK(json.starts_with("{\"version\":1,\"ok\":true,\"disks\":[{\"serial\":\"s1\""));
  CHECK(json.find("\"blocked_since\":\"2023-11-14T22:13:20+00:00\"") != std::string::npos);
  CHECK(json.find("\"blocked_for_ms\":125000") != std::string::npos);
  CHECK(json.find("\"queued\":12") != std::string::npos);
  CHECK(json.back() == '\n');
  CHECK(json.find('\n') == json.size() - 1);
}

TEST_CASE("an error reply in JSON carries ok false, code and message", "[control]") {
  Request req;
  req.set_version(kControlVersion);
  req.mutable_export_remove()->set_serial("x");
  Response resp = ErrorResponse(Error::NOT_FOUND, "no export with serial 'x'");
  CHECK(ctl::FormatJson(req, resp, 0) ==
        "{\"version\":1,\"ok\":false,\"error\":{\"code\":\"not_found\","
        "\"message\":\"no export with serial 'x'\"}}\n");
}
