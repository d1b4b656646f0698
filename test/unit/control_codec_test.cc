// The control API's pure parts: the frame codec, request validation and
// dispatch (against a fake backend), the reload diff, xdiskctl's argument
// parsing and output formatting; and, at the end, the ControlServer on a
// real loop (bad requests, idle timeout, backpressure).
#include "daemon/control/control_codec.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "daemon/control/control_server.h"
#include "daemon/control/control_service.h"
#include "daemon/daemon_control.h"
#include "daemon/control/xdiskctl.h"

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
  Result<std::string> Restart() override {
    ++calls;
    if (!next_error.ok()) return next_error;
    return std::string("restarting");
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

// ---- untrusted text: invalid UTF-8 and control characters ----

TEST_CASE("JsonQuote replaces invalid UTF-8 with U+FFFD", "[control]") {
  // A Latin-1 file name, a lone continuation byte, a truncated sequence at
  // the end, an overlong '/', a UTF-16 surrogate and a byte never valid.
  CHECK(ctl::JsonQuote("caf\xe9.img") == "\"caf\\ufffd.img\"");
  CHECK(ctl::JsonQuote("a\x80z") == "\"a\\ufffdz\"");
  CHECK(ctl::JsonQuote("x\xe2\x82") == "\"x\\ufffd\"");
  CHECK(ctl::JsonQuote("\xc0\xaf") == "\"\\ufffd\\ufffd\"");
  CHECK(ctl::JsonQuote("\xed\xa0\x80") == "\"\\ufffd\\ufffd\\ufffd\"");
  CHECK(ctl::JsonQuote("\xff") == "\"\\ufffd\"");
  CHECK(ctl::JsonQuote("\xf4\x90\x80\x80") == "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
}

TEST_CASE("JsonQuote keeps valid multibyte UTF-8 as it is", "[control]") {
  const std::string s = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x92\xbe \xe6\x97\xa5";  // é € 💾 日
  CHECK(ctl::JsonQuote(s) == "\"" + s + "\"");
}

TEST_CASE("JsonQuote escapes control characters, DEL and quotes", "[control]") {
  CHECK(ctl::JsonQuote(std::string("\x1b[31m\x00\x7f\t\"", 9)) ==
        "\"\\u001b[31m\\u0000\\u007f\\t\\\"\"");
}

TEST_CASE("tables replace control characters and invalid UTF-8", "[control]") {
  CHECK(ctl::TerminalSafe("evil\x1b]0;pwned\x07\n") == "evil?]0;pwned??");
  CHECK(ctl::TerminalSafe("caf\xe9") == "caf?");
  CHECK(ctl::TerminalSafe("\xc2\x9b"
                          "2J") == "?2J");  // C1 CSI
  CHECK(ctl::TerminalSafe("caf\xc3\xa9") == "caf\xc3\xa9");
  Request req;
  req.set_version(kControlVersion);
  req.mutable_links();
  Response resp;
  resp.set_version(kControlVersion);
  LinkInfo* l = resp.mutable_links()->add_links();
  l->set_peer("10.0.0.2:987");
  l->set_direction("in");
  l->set_state("up");
  l->set_encryption("none");
  l->set_peer_label("h\x1b[2J\xff\nX");
  const std::string text = ctl::FormatHuman(req, resp, 0);
  CHECK(text.find('\x1b') == std::string::npos);
  CHECK(text.find("h?[2J??X\n") != std::string::npos);
  CHECK(std::count(text.begin(), text.end(), '\n') == 2);
}

TEST_CASE("a response with a non-UTF-8 serial round-trips and prints as JSON", "[control]") {
  Response resp;
  resp.set_version(kControlVersion);
  ExportInfo* e = resp.mutable_disks()->add_exports();
  e->set_serial("s\xe9\xff");
  e->set_path("/srv/caf\xe9.img");
  e->set_label("peer\x80label");
  std::string stream;
  REQUIRE(AppendMessageFrame(resp, &stream).ok());
  ControlFrameDecoder d;
  d.Feed(stream);
  std::string payload;
  REQUIRE(d.Next(&payload) == ControlFrameDecoder::Outcome::kFrame);
  Response back;
  REQUIRE(back.ParseFromString(payload));
  REQUIRE(back.disks().exports_size() == 1);
  CHECK(back.disks().exports(0).serial() == "s\xe9\xff");
  CHECK(back.disks().exports(0).path() == "/srv/caf\xe9.img");
  Request req;
  req.set_version(kControlVersion);
  req.mutable_disks();
  const std::string json = ctl::FormatJson(req, back, 0);
  CHECK(json.find("\"serial\":\"s\\ufffd\\ufffd\"") != std::string::npos);
  CHECK(json.find("\"path\":\"/srv/caf\\ufffd.img\"") != std::string::npos);
  for (unsigned char c : json) CHECK(c < 0x80);
}

TEST_CASE("a --control path too long for a socket address is a usage error", "[control]") {
  ctl::CtlArgs a;
  const std::string path = "/" + std::string(200, 'x');
  auto r = Parse({"--control", path.c_str(), "status"}, &a);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().starts_with("--control: path longer than"));
}

// ---- the server on a real loop ----

namespace {

// A ControlServer on its own loop at a temporary path, with a fake backend.
struct LoopServer {
  uv_loop_t loop;
  FakeBackend backend;
  ControlService service{&backend};
  std::string dir;
  std::string path;
  std::unique_ptr<ControlServer> server;

  explicit LoopServer(uint64_t idle_ms) {
    REQUIRE(uv_loop_init(&loop) == 0);
    char tmpl[] = "/tmp/xdisk-ctltest.XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    path = dir + "/ctl.sock";
    server = std::make_unique<ControlServer>(&loop, &service, idle_ms);
    REQUIRE(server->Start(path).ok());
  }
  ~LoopServer() {
    server->Close();
    uv_run(&loop, UV_RUN_DEFAULT);
    server.reset();
    CHECK(uv_loop_close(&loop) == 0);
    rmdir(dir.c_str());
  }
  int Connect() {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    REQUIRE(fd >= 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path.c_str(), path.size() + 1);
    REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    return fd;
  }
  // Runs the loop until `done` or `limit_ms` of wall time passed.
  template <typename F>
  bool RunUntil(F done, uint64_t limit_ms = 5000) {
    const uint64_t start = uv_hrtime();
    while (!done()) {
      if ((uv_hrtime() - start) / 1000000 > limit_ms) return false;
      uv_run(&loop, UV_RUN_NOWAIT);
      usleep(1000);
    }
    return true;
  }
};

// Reads what the server wrote to `fd` until EOF (true) or nothing more
// arrives for a moment (false).
bool ReadToEof(int fd, std::string* out) {
  char buf[4096];
  for (int idle = 0; idle < 200;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) return true;
    if (n > 0) {
      out->append(buf, static_cast<size_t>(n));
      continue;
    }
    ++idle;
    usleep(1000);
  }
  return false;
}

}  // namespace

TEST_CASE("a payload that does not parse gets MALFORMED and the connection closes", "[control]") {
  LoopServer s(0);
  int fd = s.Connect();
  std::string garbage = Frame(Bytes({0xff, 0xff, 0xff, 0xff, 0x0f}));
  // A flood of it: only the first is answered.
  for (int i = 0; i < 100; ++i) REQUIRE(send(fd, garbage.data(), garbage.size(), 0) > 0);
  REQUIRE(s.RunUntil([&] { return s.server->bad_requests() > 0 && s.server->connections() == 0; }));
  CHECK(s.server->bad_requests() == 1);
  std::string got;
  CHECK(ReadToEof(fd, &got));
  ControlFrameDecoder d;
  d.Feed(got);
  std::string payload;
  REQUIRE(d.Next(&payload) == ControlFrameDecoder::Outcome::kFrame);
  Response r;
  REQUIRE(r.ParseFromString(payload));
  CHECK(r.error().code() == Error::MALFORMED);
  CHECK(d.Next(&payload) == ControlFrameDecoder::Outcome::kNeedMore);
  close(fd);
}

TEST_CASE("another version gets an error and the connection stays usable", "[control]") {
  LoopServer s(0);
  int fd = s.Connect();
  Request v2 = StatusCommand();
  v2.set_version(2);
  std::string out = Frame(Serialize(v2)) + Frame(Serialize(v2)) + Frame(Serialize(StatusCommand()));
  REQUIRE(send(fd, out.data(), out.size(), 0) == static_cast<ssize_t>(out.size()));
  ControlFrameDecoder d;
  std::vector<Response> got;
  char buf[4096];
  REQUIRE(s.RunUntil([&] {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) d.Feed(std::string_view(buf, static_cast<size_t>(n)));
    std::string p;
    while (d.Next(&p) == ControlFrameDecoder::Outcome::kFrame) {
      got.emplace_back();
      REQUIRE(got.back().ParseFromString(p));
    }
    return got.size() == 3;
  }));
  CHECK(got[0].error().code() == Error::VERSION_MISMATCH);
  CHECK(got[1].error().code() == Error::VERSION_MISMATCH);
  CHECK(got[2].has_status());
  CHECK(s.server->connections() == 1);
  CHECK(s.server->bad_requests() == 2);
  close(fd);
  REQUIRE(s.RunUntil([&] { return s.server->connections() == 0; }));
}

TEST_CASE("idle connections are closed after the timeout", "[control]") {
  LoopServer s(100);
  std::vector<int> fds;
  // Before the connects: every timer starts later, at its accept.
  const uint64_t start = uv_hrtime();
  for (size_t i = 0; i < ControlServer::kMaxConnections; ++i) fds.push_back(s.Connect());
  REQUIRE(s.RunUntil([&] { return s.server->connections() == ControlServer::kMaxConnections; }));
  REQUIRE(s.RunUntil([&] { return s.server->connections() == 0; }));
  CHECK((uv_hrtime() - start) / 1000000 >= 90);
  for (int fd : fds) {
    std::string rest;
    CHECK(ReadToEof(fd, &rest));
    CHECK(rest.empty());
    close(fd);
  }
}

// Reads one reply frame from `fd` while running the loop.
bool ReadReply(LoopServer& s, int fd, uint64_t limit_ms = 5000) {
  std::string got;
  return s.RunUntil(
      [&] {
        char buf[4096];
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n > 0) got.append(buf, static_cast<size_t>(n));
        return got.size() >= kFrameHeaderBytes;
      },
      limit_ms);
}

TEST_CASE("with every slot taken by idle clients, a new client takes the slot idle for longest",
          "[control]") {
  LoopServer s(0);  // no idle timeout at all: only eviction frees a slot
  std::vector<int> fds;
  std::string req = Frame(Serialize(StatusCommand()));
  for (size_t i = 0; i < ControlServer::kMaxConnections; ++i) {
    fds.push_back(s.Connect());
    REQUIRE(s.RunUntil([&] { return s.server->connections() == fds.size(); }));
    // The first half has spoken (a request answered); the rest stay silent.
    if (i < ControlServer::kMaxConnections / 2) {
      REQUIRE(send(fds.back(), req.data(), req.size(), 0) > 0);
      REQUIRE(ReadReply(s, fds.back()));
    }
  }
  usleep(150 * 1000);  // older than kMinEvictAgeMs, all of them
  // Three more clients: each gets an answer at once, and the slots come from
  // the connections idle for longest.
  for (int k = 0; k < 3; ++k) {
    int fd = s.Connect();
    REQUIRE(send(fd, req.data(), req.size(), 0) > 0);
    REQUIRE(ReadReply(s, fd, 2000));
    fds.push_back(fd);
  }
  CHECK(s.server->connections() == ControlServer::kMaxConnections);
  for (size_t i = 0; i < ControlServer::kMaxConnections; ++i) {
    std::string rest;
    const bool closed = ReadToEof(fds[i], &rest);
    INFO("connection " << i);
    CHECK(closed == (i < 3));
  }
  for (int fd : fds) close(fd);
}

TEST_CASE("a connection that never sends a byte is closed after the short silent timeout",
          "[control]") {
  LoopServer s(60000);
  const uint64_t start = uv_hrtime();  // the silent timer starts later, at the accept
  int silent = s.Connect();
  int talker = s.Connect();
  REQUIRE(s.RunUntil([&] { return s.server->connections() == 2; }));
  std::string req = Frame(Serialize(StatusCommand()));
  REQUIRE(send(talker, req.data(), req.size(), 0) > 0);
  REQUIRE(ReadReply(s, talker));
  REQUIRE(s.RunUntil([&] { return s.server->connections() == 1; }, 10000));
  const uint64_t ms = (uv_hrtime() - start) / 1000000;
  CHECK(ms >= ControlServer::kSilentTimeoutMs);
  std::string rest;
  CHECK(ReadToEof(silent, &rest));
  close(silent);
  close(talker);
  REQUIRE(s.RunUntil([&] { return s.server->connections() == 0; }));
}

TEST_CASE("a client that never reads is closed when its replies make no progress", "[control]") {
  LoopServer s(200);
  int fd = s.Connect();
  int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  std::string req = Frame(Serialize(StatusCommand()));
  std::string burst;
  for (int i = 0; i < 1000; ++i) burst += req;
  REQUIRE(s.RunUntil([&] { return s.server->connections() == 1; }));
  const uint64_t start = uv_hrtime();
  // Send until the server stops reading (backpressure) and our buffer fills.
  size_t sent = 0;
  REQUIRE(s.RunUntil(
      [&] {
        ssize_t n = send(fd, burst.data(), burst.size(), MSG_NOSIGNAL);
        if (n > 0) sent += static_cast<size_t>(n);
        return s.server->connections() == 0;
      },
      20000));
  // Well past the 1 MiB cap of queued replies had the server kept reading.
  CHECK(sent > 0);
  CHECK((uv_hrtime() - start) / 1000000 >= 200);
  close(fd);
}
