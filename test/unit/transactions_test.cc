// The per-link transaction rules of spec §5, on TransactionTable alone.
#include "daemon/link/transactions.h"

#include <catch2/catch.hpp>

using namespace xdisk;
using namespace xdisk::dmsg;
using V = TransactionTable::Verdict;

namespace {
Header H(uint32_t cmd, uint64_t msgid, uint64_t circuit = 0) {
  Header h;
  h.cmd = cmd;
  h.msgid = msgid;
  h.circuit = circuit;
  return h;
}
}  // namespace

TEST_CASE("a peer CREATE opens a transaction in table R", "[transactions]") {
  TransactionTable t;
  auto r = t.Receive(H(kLnkSpan | kFlagCreate, 7));
  REQUIRE(r.verdict == V::kNew);
  CHECK(r.txn->msgid == 7);
  CHECK_FALSE(r.txn->ours);
  CHECK(r.txn->rx_create);
  CHECK(t.FindRemote(7) == r.txn);
}

TEST_CASE("a duplicate CREATE is a protocol error", "[transactions]") {
  TransactionTable t;
  REQUIRE(t.Receive(H(kLnkSpan | kFlagCreate, 7)).verdict == V::kNew);
  auto r = t.Receive(H(kLnkSpan | kFlagCreate, 7));
  CHECK(r.verdict == V::kProtocolError);
  CHECK_THAT(r.reason, Catch::Contains("duplicate CREATE"));
}

TEST_CASE("DELETE or REPLY for an unknown transaction without ABORT is a protocol error",
          "[transactions]") {
  TransactionTable t;
  CHECK(t.Receive(H(kLnkError | kFlagDelete, 9)).verdict == V::kProtocolError);
  CHECK(t.Receive(H(kLnkError | kFlagReply | kFlagRevTrans | kFlagCreate, 9)).verdict ==
        V::kProtocolError);
  CHECK(t.Receive(H(kLnkError | kFlagReply | kFlagRevTrans | kFlagDelete, 9)).verdict ==
        V::kProtocolError);
  SECTION("with ABORT it is dropped silently") {
    CHECK(t.Receive(H(kLnkError | kFlagDelete | kFlagAbort, 9)).verdict == V::kIgnore);
    CHECK(t.Receive(H(kLnkError | kFlagReply | kFlagRevTrans | kFlagDelete | kFlagAbort, 9))
              .verdict == V::kIgnore);
  }
}

TEST_CASE("a REPLY without REVTRANS is a protocol error", "[transactions]") {
  TransactionTable t;
  Transaction* ours = t.OpenLocal(kLnkSpan, nullptr);
  CHECK(t.Receive(H(kLnkError | kFlagReply | kFlagCreate, ours->msgid)).verdict ==
        V::kProtocolError);
}

TEST_CASE("sending computes CREATE, REPLY, REVTRANS and REVCIRC", "[transactions]") {
  TransactionTable t;
  // The peer's span S, our BLK_OPEN O under it, our read R under O (§9).
  auto s = t.Receive(H(kLnkSpan | kFlagCreate, 100)).txn;
  Transaction* o = t.OpenLocal(kBlkOpen, s);
  Header h;
  h.cmd = kBlkOpen;
  REQUIRE(t.PrepareSend(o, 0, &h));
  CHECK(h.cmd == (kBlkOpen | kFlagCreate | kFlagRevCirc));
  CHECK(h.circuit == 100);
  Transaction* r = t.OpenLocal(kBlkRead, o);
  h.cmd = kBlkRead;
  REQUIRE(t.PrepareSend(r, kFlagDelete, &h));
  CHECK(h.cmd == (kBlkRead | kFlagCreate | kFlagDelete));
  CHECK(h.circuit == o->msgid);
  // Our answer on the peer's span: result, then close.
  h.cmd = kLnkError;
  REQUIRE(t.PrepareSend(s, 0, &h));
  CHECK(h.cmd == (kLnkError | kFlagCreate | kFlagReply | kFlagRevTrans));
  h.cmd = kLnkError;
  REQUIRE(t.PrepareSend(s, kFlagDelete, &h));
  CHECK(h.cmd == (kLnkError | kFlagDelete | kFlagReply | kFlagRevTrans));
  // Nothing more may be sent on a closed side.
  h.cmd = kLnkError;
  CHECK_FALSE(t.PrepareSend(s, 0, &h));
}

TEST_CASE("a transaction is freed only after DELETE went both ways", "[transactions]") {
  TransactionTable t;
  Transaction* o = t.OpenLocal(kBlkRead, nullptr);
  Header h;
  h.cmd = kBlkRead;
  REQUIRE(t.PrepareSend(o, kFlagDelete, &h));
  uint64_t id = o->msgid;
  CHECK_FALSE(t.MaybeFree(o));
  auto r = t.Receive(H(kLnkError | kFlagReply | kFlagRevTrans | kFlagCreate | kFlagDelete, id));
  REQUIRE(r.verdict == V::kDeliver);
  CHECK(t.MaybeFree(o));
  CHECK(t.FindLocal(id) == nullptr);
  SECTION("a second reply is then a protocol error") {
    CHECK(t.Receive(H(kLnkError | kFlagReply | kFlagRevTrans | kFlagDelete, id)).verdict ==
          V::kProtocolError);
  }
}

TEST_CASE("a message after the peer's DELETE is a protocol error", "[transactions]") {
  TransactionTable t;
  auto s = t.Receive(H(kLnkSpan | kFlagCreate, 5)).txn;
  REQUIRE(t.Receive(H(kLnkError | kFlagDelete, 5)).verdict == V::kDeliver);
  CHECK(s->rx_delete);
  CHECK(t.Receive(H(kLnkError | kFlagDelete, 5)).verdict == V::kProtocolError);
}

TEST_CASE("a CREATE under an unknown parent is dropped, not fatal (E2+)", "[transactions]") {
  TransactionTable t;
  auto r = t.Receive(H(kBlkRead | kFlagCreate | kFlagDelete, 3, 999));
  CHECK(r.verdict == V::kIgnore);
  CHECK(t.size() == 0);
}

TEST_CASE("one-way messages are not tracked", "[transactions]") {
  TransactionTable t;
  CHECK(t.Receive(H(kLnkPing, 0)).verdict == V::kOneWay);
  CHECK(t.Receive(H(kLnkPing | kFlagReply, 0)).verdict == V::kOneWay);
  CHECK(t.size() == 0);
}

TEST_CASE("LOSTLINK synthesis mirrors what the peer would send", "[transactions]") {
  TransactionTable t;
  auto s = t.Receive(H(kLnkSpan | kFlagCreate, 100)).txn;
  Transaction* o = t.OpenLocal(kBlkOpen, s);
  Header h;
  h.cmd = kBlkOpen;
  REQUIRE(t.PrepareSend(o, 0, &h));
  Transaction* r = t.OpenLocal(kBlkRead, o);
  h.cmd = kBlkRead;
  REQUIRE(t.PrepareSend(r, kFlagDelete, &h));

  auto order = t.SubtreePostOrder(nullptr);
  REQUIRE(order.size() == 3);
  CHECK(order[0] == r);  // children before parents
  CHECK(order[1] == o);
  CHECK(order[2] == s);

  Frame fr = t.SynthesizeLostLink(r);
  CHECK(fr.hdr.error == kErrLostLink);
  CHECK(fr.hdr.cmd == (kLnkError | kFlagCreate | kFlagDelete | kFlagReply | kFlagAbort |
                       kFlagRevTrans | kFlagRevCirc));
  CHECK(r->dying);
  CHECK(r->rx_delete);
  // Sends on a dying transaction are discarded but close the side.
  h.cmd = kLnkError;
  CHECK_FALSE(t.PrepareSend(r, kFlagDelete, &h));
  CHECK(t.MaybeFree(r));

  Frame fs = t.SynthesizeLostLink(s);
  CHECK(fs.hdr.cmd == (kLnkError | kFlagDelete | kFlagAbort));  // peer-opened: no REPLY
}

TEST_CASE("a late reply on a locally terminated transaction is dropped, not fatal",
          "[transactions]") {
  TransactionTable t;
  Transaction* o = t.OpenLocal(kBlkRead, nullptr);
  Header h;
  h.cmd = kBlkRead;
  REQUIRE(t.PrepareSend(o, kFlagDelete, &h));
  uint64_t id = o->msgid;
  t.SynthesizeLostLink(o);
  REQUIRE(t.MaybeFree(o));
  CHECK(t.Receive(H(kLnkError | kFlagReply | kFlagRevTrans | kFlagCreate | kFlagDelete, id))
            .verdict == V::kIgnore);
  // Only once: the ghost is gone after its DELETE.
  CHECK(t.Receive(H(kLnkError | kFlagReply | kFlagRevTrans | kFlagCreate | kFlagDelete, id))
            .verdict == V::kProtocolError);
}

TEST_CASE("our msgids are never reused", "[transactions]") {
  TransactionTable t;
  uint64_t last = 0;
  for (int i = 0; i < 100; ++i) {
    Transaction* o = t.OpenLocal(kBlkRead, nullptr);
    CHECK(o->msgid > last);
    last = o->msgid;
    o->tx_delete = o->rx_delete = true;
    REQUIRE(t.MaybeFree(o));
  }
}

TEST_CASE("only transactions whose peer still owes a DELETE become ghosts", "[transactions]") {
  TransactionTable t;
  // The peer's one-message request: its DELETE is real, ours comes later.
  auto r = t.Receive(H(kBlkRead | kFlagCreate | kFlagDelete, 44));
  REQUIRE(r.verdict == V::kNew);
  Transaction* req = r.txn;
  req->dying = true;  // terminated locally (say, its span was withdrawn)
  req->tx_delete = true;
  REQUIRE(t.MaybeFree(req));
  // Nothing is owed, so a later message naming it is a real violation.
  CHECK(t.Receive(H(kLnkError | kFlagDelete, 44)).verdict == V::kProtocolError);
}
