// The relay rules of docs/dmsg-protocol.md §6.3, without links.
#include "daemon/link/span_relay.h"

#include <catch2/catch.hpp>
#include <map>
#include <tuple>

using namespace xdisk;
using Kind = SpanRelay::Change::Kind;

namespace {
constexpr uint32_t kR = 1000;  // the test's per-process rnss constant

SpanRelay::LinkView Router() { return {dmsg::kPeerRouter, ~0ull, {}}; }
// Links that asked for every span type.
void AddRouters(SpanRelay& r, std::initializer_list<uint64_t> links) {
  for (uint64_t l : links) r.AddLink(l, Router());
}
SpanRelay::LinkView Client(dmsg::Uuid peer_id = {}) {
  return {dmsg::kPeerClient, 1ull << dmsg::kPeerBlock, peer_id};
}

dmsg::LnkSpan Disk(const std::string& serial, uint32_t dist = 0, uint32_t rnss = 0) {
  dmsg::LnkSpan s;
  s.peer_type = dmsg::kPeerBlock;
  s.peer_id[0] = 7;
  s.pfs_id[0] = 9;
  s.peer_label = "a/" + serial;
  s.pfs_label = serial;
  s.dist = dist;
  s.rnss = rnss;
  s.media_bytes = 1 << 20;
  s.blksize = 512;
  return s;
}

int Count(const std::vector<SpanRelay::Change>& v, Kind k, uint64_t link) {
  int n = 0;
  for (auto& c : v) n += c.kind == k && c.link == link;
  return n;
}
const SpanRelay::Change* Find(const std::vector<SpanRelay::Change>& v, Kind k, uint64_t link) {
  for (auto& c : v)
    if (c.kind == k && c.link == link) return &c;
  return nullptr;
}
}  // namespace

TEST_CASE("relay: a span goes to every other admitting link with dist+1 and rnss+R, never back",
          "[relay]") {
  SpanRelay r(kR);
  CHECK(r.AddLink(1, Router()).empty());
  CHECK(r.AddLink(2, Router()).empty());
  CHECK(r.AddLink(3, Router()).empty());
  auto ch = r.AddSpan(100, 1, Disk("s1", 2, 5));
  REQUIRE(ch.size() == 2);
  CHECK(Count(ch, Kind::kAdvertise, 1) == 0);  // split horizon
  const auto* c = Find(ch, Kind::kAdvertise, 2);
  REQUIRE(c != nullptr);
  CHECK(c->source == 100);
  CHECK(c->info.dist == 3);
  CHECK(c->info.rnss == 1005);
  CHECK(c->info.pfs_label == "s1");
  CHECK(Find(ch, Kind::kAdvertise, 3) != nullptr);
  // A link that comes up later gets it too.
  ch = r.AddLink(4, Router());
  REQUIRE(ch.size() == 1);
  CHECK(ch[0].link == 4);
  CHECK(r.relayed().size() == 3);
}

TEST_CASE("relay: only the single best span of a node per link, by dist then rnss", "[relay]") {
  SpanRelay r(kR);
  AddRouters(r, {1, 2, 3});
  r.AddSpan(100, 1, Disk("s1", 3));
  // A better path on link 2: link 3 switches, advertising first, then
  // withdrawing; link 1 now gets the copy of the link-2 span; link 2 keeps
  // the copy of the link-1 span (its own is split-horizoned).
  auto ch = r.AddSpan(200, 2, Disk("s1", 1));
  REQUIRE(ch.size() == 3);
  CHECK(ch[0].kind == Kind::kAdvertise);
  CHECK(ch[0].link == 1);
  CHECK(ch[0].info.dist == 2);
  const auto* adv3 = Find(ch, Kind::kAdvertise, 3);
  const auto* wd3 = Find(ch, Kind::kWithdraw, 3);
  REQUIRE(adv3 != nullptr);
  REQUIRE(wd3 != nullptr);
  CHECK(adv3 < wd3);
  CHECK(adv3->source == 200);
  CHECK(wd3->source == 100);
  CHECK(Count(ch, Kind::kAdvertise, 2) == 0);
  CHECK(Count(ch, Kind::kWithdraw, 2) == 0);
  // Another dist-1 span on link 1: link 2 moves to it (dist 1 beats 3);
  // link 3 stays with span 200 (same dist, lower rnss).
  auto moved = r.AddSpan(300, 1, Disk("s1", 1, 99));
  CHECK(moved.size() == 2);
  CHECK(Count(moved, Kind::kAdvertise, 2) == 1);
  CHECK(Count(moved, Kind::kWithdraw, 2) == 1);
}

TEST_CASE("relay: equal dist is decided by rnss, a worse span changes nothing", "[relay]") {
  SpanRelay r(kR);
  AddRouters(r, {1, 2, 9});
  r.AddSpan(100, 1, Disk("s1", 1, 50));
  CHECK(r.AddSpan(200, 2, Disk("s1", 1, 60)).size() == 1);  // only link 1 gains a copy
  auto ch = r.AddSpan(300, 2, Disk("s1", 1, 40));
  // Link 9 and link 1 move to span 300 (rnss 40 < 50); advertise + withdraw each.
  CHECK(Count(ch, Kind::kAdvertise, 9) == 1);
  CHECK(Count(ch, Kind::kWithdraw, 9) == 1);
  CHECK(Count(ch, Kind::kAdvertise, 1) == 1);
  CHECK(Count(ch, Kind::kWithdraw, 1) == 1);
  CHECK(r.AddSpan(400, 2, Disk("s1", 4)).empty());
}

TEST_CASE("relay: withdrawal re-advertises the next best, and the last one goes", "[relay]") {
  SpanRelay r(kR);
  AddRouters(r, {1, 2, 3});
  r.AddSpan(100, 1, Disk("s1", 0));
  r.AddSpan(200, 2, Disk("s1", 2));
  auto ch = r.RemoveSpan(100);
  const auto* adv = Find(ch, Kind::kAdvertise, 3);
  REQUIRE(adv != nullptr);
  CHECK(adv->source == 200);
  CHECK(adv->info.dist == 3);
  CHECK(Find(ch, Kind::kWithdraw, 3) != nullptr);
  CHECK(Find(ch, Kind::kWithdraw, 2) != nullptr);   // link 2 had span 100's copy; none left for it
  CHECK(Find(ch, Kind::kAdvertise, 1) == nullptr);  // it already has span 200's copy
  ch = r.RemoveSpan(200);
  CHECK(Count(ch, Kind::kWithdraw, 1) == 1);
  CHECK(Count(ch, Kind::kWithdraw, 3) == 1);
  CHECK(Count(ch, Kind::kAdvertise, 1) + Count(ch, Kind::kAdvertise, 3) == 0);
  CHECK(r.relayed().empty());
  CHECK(r.RemoveSpan(200).empty());  // twice is harmless
}

TEST_CASE("relay: no copy carries a dist above 16", "[relay]") {
  SpanRelay r(kR);
  AddRouters(r, {1, 2});
  auto ch = r.AddSpan(100, 1, Disk("s1", 15));
  REQUIRE(ch.size() == 1);
  CHECK(ch[0].info.dist == 16);
  CHECK(r.AddSpan(200, 1, Disk("s2", 16)).empty());
  CHECK(r.AddSpan(300, 1, Disk("s3", 0xFFFFFFFF)).empty());  // no wrap to 0
}

TEST_CASE("relay: peer_mask, client isolation and the client's peer_id filter", "[relay]") {
  SpanRelay r(kR);
  dmsg::Uuid other{};
  other[0] = 1;
  r.AddLink(1, Router());
  r.AddLink(2, {dmsg::kPeerBlock, 0, {}});  // a server asking for nothing
  r.AddLink(3, Client());                   // a client asking for BLOCK
  r.AddLink(4, Client(other));              // a client of another server only
  dmsg::Uuid same{};
  same[0] = 7;
  r.AddLink(5, Client(same));
  auto ch = r.AddSpan(100, 1, Disk("s1"));
  CHECK(Count(ch, Kind::kAdvertise, 2) == 0);
  CHECK(Count(ch, Kind::kAdvertise, 3) == 1);
  CHECK(Count(ch, Kind::kAdvertise, 4) == 0);
  CHECK(Count(ch, Kind::kAdvertise, 5) == 1);
  dmsg::LnkSpan client_span = Disk("c1");
  client_span.peer_type = dmsg::kPeerClient;
  ch = r.AddSpan(200, 1, client_span);
  CHECK(Count(ch, Kind::kAdvertise, 3) == 0);  // clients never see clients
  CHECK(Count(ch, Kind::kAdvertise, 5) == 0);
  dmsg::LnkSpan odd = Disk("x");
  odd.peer_type = 64;  // outside the mask's width: never relayed
  CHECK(r.AddSpan(300, 1, odd).empty());
}

TEST_CASE("relay: nodes differ by cluster and node key, each relayed once", "[relay]") {
  SpanRelay r(kR);
  AddRouters(r, {1, 2});
  dmsg::LnkSpan a = Disk("s1");
  dmsg::LnkSpan b = Disk("s1");
  b.pfs_id[0] = 10;  // same serial, other node
  dmsg::LnkSpan c = Disk("s1");
  c.peer_label = "b/s1";  // other cluster
  CHECK(r.AddSpan(100, 1, a).size() == 1);
  CHECK(r.AddSpan(200, 1, b).size() == 1);
  CHECK(r.AddSpan(300, 1, c).size() == 1);
  CHECK(r.relayed().size() == 3);
}

TEST_CASE("relay: a node we export ourselves is not relayed", "[relay]") {
  SpanRelay r(kR);
  AddRouters(r, {1, 2});
  r.AddSpan(100, 1, Disk("s1", 2));
  auto ch = r.AddLocalNode(Disk("s1"));
  REQUIRE(ch.size() == 1);
  CHECK(ch[0].kind == Kind::kWithdraw);
  CHECK(r.AddSpan(200, 1, Disk("s1", 1)).empty());
  ch = r.RemoveLocalNode(Disk("s1"));
  CHECK(Count(ch, Kind::kAdvertise, 2) == 1);
}

TEST_CASE("relay: a link going away forgets its copies and re-homes its spans", "[relay]") {
  SpanRelay r(kR);
  AddRouters(r, {1, 2, 3});
  r.AddSpan(100, 1, Disk("s1", 0));
  r.AddSpan(200, 2, Disk("s1", 3));
  // Link 2 goes; its span is removed first (as the link does).
  auto ch = r.RemoveSpan(200);
  CHECK(Count(ch, Kind::kWithdraw, 1) == 1);  // link 1 had span 200's copy
  ch = r.RemoveLink(2);
  CHECK(ch.empty());
  for (auto& rel : r.relayed()) CHECK(rel.link != 2);
  // Link 1 goes without its spans removed first: they go now.
  ch = r.RemoveLink(1);
  CHECK(Count(ch, Kind::kWithdraw, 3) == 1);
  CHECK(r.relayed().empty());
  CHECK(r.span_count() == 0);
}

TEST_CASE("relay: a ring converges and empties when the origin goes", "[relay]") {
  // Three relays X, Y, Z in a ring, each a SpanRelay; X also hears the
  // exporter E. Links are named (owner * 10 + neighbour); the message
  // loop below delivers every change to the neighbour's table.
  struct Node {
    SpanRelay table{kR};
  };
  Node n[3];
  const int kE = 3;  // the exporter, seen by node 0 only
  auto link_id = [](int from, int to) { return static_cast<uint64_t>(from * 10 + to); };
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      if (i != j) n[i].table.AddLink(link_id(i, j), Router());
  // A received span's id in the receiver's table, per (receiver, sender, source).
  std::map<std::tuple<int, int, uint64_t>, uint64_t> ids;
  std::vector<std::tuple<int, SpanRelay::Change>> queue;
  auto post = [&](int from, const std::vector<SpanRelay::Change>& ch) {
    for (auto& c : ch) queue.emplace_back(from, c);
  };
  size_t steps = 0;
  uint32_t max_dist = 0;
  auto run = [&] {
    while (!queue.empty()) {
      REQUIRE(++steps < 10000);
      auto [from, c] = queue.front();
      queue.erase(queue.begin());
      int to = static_cast<int>(c.link % 10);
      auto key = std::make_tuple(to, from, c.source);
      if (!ids.count(key)) ids[key] = ids.size() + 10;
      uint64_t id = ids[key];
      if (c.kind == Kind::kAdvertise) {
        max_dist = std::max(max_dist, c.info.dist);
        post(to, n[to].table.AddSpan(id, link_id(to, from), c.info));
      } else {
        post(to, n[to].table.RemoveSpan(id));
      }
    }
  };
  post(0, n[0].table.AddSpan(1, link_id(0, kE), Disk("s1")));
  run();
  CHECK(max_dist <= SpanRelay::kMaxDist);
  for (auto& x : n) CHECK(x.table.span_count() > 0);
  post(0, n[0].table.RemoveSpan(1));
  run();
  CHECK(max_dist <= SpanRelay::kMaxDist);
  for (auto& x : n) {
    CHECK(x.table.span_count() == 0);
    CHECK(x.table.relayed().empty());
  }
}

TEST_CASE("relay: at most kMaxSpansPerLink spans of one link are taken, until some go",
          "[relay]") {
  SpanRelay r(kR);
  AddRouters(r, {1, 2});
  constexpr size_t kMax = SpanRelay::kMaxSpansPerLink;
  std::vector<SpanRelay::Change> out;
  for (size_t i = 0; i < kMax; ++i) {
    std::string serial = "s";  // piece by piece: gcc 12 -O3 warns on "s" + string
    serial += std::to_string(i);
    REQUIRE(r.AddSpan(1000 + i, 1, Disk(serial), &out));
  }
  CHECK(Count(out, Kind::kAdvertise, 2) == static_cast<int>(kMax));
  out.clear();
  CHECK_FALSE(r.AddSpan(1, 1, Disk("over"), &out));
  CHECK(out.empty());
  CHECK(r.span_count() == kMax);
  CHECK(r.RemoveSpan(1).empty());  // refused: nothing to remove
  // Another link has its own allowance; a span that goes makes room.
  CHECK(r.AddSpan(2, 2, Disk("other"), &out));
  r.RemoveSpan(1000);
  CHECK(r.AddSpan(3, 1, Disk("over"), &out));
  CHECK(Find(out, Kind::kAdvertise, 2) != nullptr);
}

TEST_CASE("relay: many spans of one node on one link: the best elsewhere wins, in order",
          "[relay]") {
  // 4000 copies of one node on link 1 (the case a quadratic search made
  // slow), one worse one on link 2: link 2 gets link 1's best, link 1 gets
  // link 2's span; removing link 1's bests one by one moves link 2's copy
  // to the next best of link 1.
  SpanRelay r(kR);
  AddRouters(r, {1, 2});
  for (uint32_t i = 0; i < 4000; ++i) r.AddSpan(10 + i, 1, Disk("s1", 1, 4000 - i));
  r.AddSpan(5, 2, Disk("s1", 3));
  auto copies = [&] {
    std::map<uint64_t, uint64_t> m;
    for (auto& rel : r.relayed()) m[rel.link] = rel.source;
    return m;
  };
  CHECK(copies()[2] == 10 + 3999);  // dist 1, lowest rnss
  CHECK(copies()[1] == 5);
  r.RemoveSpan(10 + 3999);
  CHECK(copies()[2] == 10 + 3998);
  for (uint32_t i = 0; i < 3999; ++i) r.RemoveSpan(10 + i);
  CHECK(copies().count(2) == 0);
  CHECK(copies()[1] == 5);
}
