// DragonFly's link crypto (docs/link-crypto.md): the spec's stream vectors
// TV6/TV7 byte for byte, the 512-byte handshake block, a handshake between
// two in-process ends, and every malformed handshake refused.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "proto/gcm_stream.h"
#include "proto/rsa_handshake.h"
#include "proto/tls_stream.h"
#include "test/unit/spec_vectors.h"

using namespace xdisk;
using namespace xdisk::dfcrypto;

namespace {

std::vector<uint8_t> Hex(std::string_view text) {
  std::vector<uint8_t> out;
  std::string digits;
  for (char c : text)
    if (isxdigit(static_cast<unsigned char>(c))) digits += c;
  for (size_t i = 0; i + 1 < digits.size(); i += 2)
    out.push_back(static_cast<uint8_t>(std::stoul(digits.substr(i, 2), nullptr, 16)));
  return out;
}

StreamKey SpecKey() {
  StreamKey k;
  for (size_t i = 0; i < kKeyBytes; ++i) k.key[i] = static_cast<uint8_t>(i);
  k.fixed_iv = {0xa0, 0xa1, 0xa2, 0xa3};
  return k;
}

std::vector<uint8_t> Ping() { return spec_vectors::FromHexDump(spec_vectors::kTv3); }

// TV6: two variant A chunks, counter 0 and 1, each ciphertext || tag.
const std::vector<uint8_t> kTv6 =
    Hex("2ef15c362364b5bcb93bbb3351da65db 92901d45f94d95156335c5343b5a4a5c"
        "ced37da8539ea3ec80fbc1ce528a738c 7924b96fcb09bbedcd371be6a1402e9e"
        "8feb9a263fd62095e0e3294ea2471313"
        "82e7b88e6c74c6b41bdaad6a7b6b0d8a 4d1a995d68601c2da9d58d5e2efe2793"
        "eaff2b1e65bbbad66055e04b0f688817 27c1e8110cb26a9ceafa038533319b73"
        "95f05455c07e22f3104bdc3b51db027c");
// TV7: the PING twice as one continuous variant B keystream.
const std::vector<uint8_t> kTv7 =
    Hex("2ef15c362364b5bcb93bbb3351da65db 92901d45f94d95156335c5343b5a4a5c"
        "ced37da8539ea3ec80fbc1ce528a738c 7924b96fcb09bbedcd371be6a1402e9e"
        "8495fb581dfad6b77b31cdf5a98ea745 8ea430a5fc81b466005374088d500bd5"
        "826a8d6a1a20dc7d2e430c41d98028be 499c034a10eac4dea66501ff0ce8bb8a");

std::vector<uint8_t> PingTwice() {
  std::vector<uint8_t> p = Ping();
  std::vector<uint8_t> two = p;
  two.insert(two.end(), p.begin(), p.end());
  return two;
}

std::vector<uint8_t> SealAll(StreamVariant v, const StreamKey& k, std::span<const uint8_t> in) {
  auto s = StreamSealer::Create(v, k);
  REQUIRE(s.ok());
  std::vector<uint8_t> out;
  REQUIRE((*s)->Seal(in, &out).ok());
  CHECK((*s)->pending() == 0);
  return out;
}

// Key pairs are slow to make (above all under ASan): three, made once.
struct Keys {
  RsaKey priv, pub;
};
const Keys& KeyPair(int n) {
  static std::vector<Keys> keys = [] {
    std::vector<Keys> v;
    for (int i = 0; i < 3; ++i) {
      auto k = RsaKey::Generate(2048);
      REQUIRE(k.ok());
      auto priv = RsaKey::FromPrivatePem(k->PrivatePem(), "rsa.prv");
      auto pub = RsaKey::FromPublicPem(k->PublicPem(), "rsa.pub");
      REQUIRE(priv.ok());
      REQUIRE(pub.ok());
      v.push_back(Keys{std::move(priv.value()), std::move(pub.value())});
    }
    return v;
  }();
  return keys[static_cast<size_t>(n)];
}

HandshakeBlock FreshBlock() {
  std::array<uint8_t, kHandshakeBytes> r;
  REQUIRE(RAND_bytes(r.data(), static_cast<int>(r.size())) == 1);
  return BuildHandshakeBlock(r);
}

// Seals `block` from key pair `from` to key pair `to` and opens it at `to`.
Result<SessionMaterial> SendBlock(HandshakeBlock block, int from, int to) {
  auto wire = SealHandshake(&block, KeyPair(from).priv, KeyPair(to).pub);
  REQUIRE(wire.ok());
  return OpenHandshake(*wire, KeyPair(to).priv, KeyPair(from).pub);
}

}  // namespace

// ---- The stream ----

TEST_CASE("variant A seals the spec's PING as TV6, chunk by chunk with tags", "[link_crypto]") {
  std::vector<uint8_t> two = PingTwice();
  CHECK(SealAll(StreamVariant::kGcmA, SpecKey(), two) == kTv6);
  CHECK(SealedBytes(StreamVariant::kGcmA, 128) == 160);
}

TEST_CASE("variant B seals the spec's two PINGs as TV7, one keystream without tags",
          "[link_crypto]") {
  std::vector<uint8_t> two = PingTwice();
  CHECK(SealAll(StreamVariant::kGcmB, SpecKey(), two) == kTv7);
  CHECK(SealedBytes(StreamVariant::kGcmB, 128) == 128);
}

TEST_CASE("session keys come from sess[0..31] and sess[32..35]", "[link_crypto]") {
  std::array<uint8_t, 64> sess;
  for (size_t i = 0; i < sess.size(); ++i) sess[i] = static_cast<uint8_t>(100 + i);
  StreamKey k = StreamKeyFromSess(sess);
  CHECK(k.key[0] == 100);
  CHECK(k.key[31] == 131);
  CHECK(k.fixed_iv == std::array<uint8_t, 4>{132, 133, 134, 135});
}

TEST_CASE("sealing and opening give the same bytes in every chunking", "[link_crypto]") {
  for (StreamVariant v : {StreamVariant::kGcmA, StreamVariant::kGcmB}) {
    std::vector<uint8_t> plain(64 * 7);
    for (size_t i = 0; i < plain.size(); ++i) plain[i] = static_cast<uint8_t>(i * 7 + 3);
    std::vector<uint8_t> whole = SealAll(v, SpecKey(), plain);
    for (size_t step : {1, 7, 63, 64, 65, 79, 80, 81, 200}) {
      // Sealing in pieces (a message split over buffers) ...
      auto s = StreamSealer::Create(v, SpecKey());
      REQUIRE(s.ok());
      std::vector<uint8_t> sealed;
      for (size_t pos = 0; pos < plain.size(); pos += step) {
        size_t n = std::min(step, plain.size() - pos);
        REQUIRE((*s)->Seal(std::span(plain).subspan(pos, n), &sealed).ok());
      }
      CHECK(sealed == whole);
      // ... and opening in pieces (a socket's reads).
      auto o = StreamOpener::Create(v, SpecKey());
      REQUIRE(o.ok());
      std::vector<uint8_t> opened;
      for (size_t pos = 0; pos < whole.size(); pos += step) {
        size_t n = std::min(step, whole.size() - pos);
        REQUIRE((*o)->Open(std::span(whole).subspan(pos, n), &opened).ok());
      }
      CHECK((*o)->pending() == 0);
      CHECK(opened == plain);
    }
  }
}

TEST_CASE("variant A: a flipped byte anywhere in a chunk is a bad tag, nothing is released",
          "[link_crypto]") {
  std::vector<uint8_t> plain = PingTwice();
  for (size_t at : {0, 63, 64, 79, 80, 159}) {
    std::vector<uint8_t> wire = kTv6;
    wire[at] ^= 0x01;
    auto o = StreamOpener::Create(StreamVariant::kGcmA, SpecKey());
    REQUIRE(o.ok());
    std::vector<uint8_t> opened;
    Status st = (*o)->Open(wire, &opened);
    REQUIRE(!st.ok());
    CHECK(st.kind() == Status::Kind::kCorruption);
    CHECK_THAT(st.message(), Catch::Contains("bad tag on chunk " + std::to_string(at / 80)));
    // Only the chunks before the damaged one came out.
    CHECK(opened.size() == at / 80 * 64);
    // The opener stays failed: nothing after a forgery is trusted.
    CHECK(!(*o)->Open(std::span(kTv6).subspan(0, 80), &opened).ok());
  }
}

TEST_CASE("variant A: the wrong key or reordered chunks fail the tag", "[link_crypto]") {
  StreamKey other = SpecKey();
  other.key[5] ^= 1;
  auto o = StreamOpener::Create(StreamVariant::kGcmA, other);
  REQUIRE(o.ok());
  std::vector<uint8_t> out;
  CHECK(!(*o)->Open(kTv6, &out).ok());
  std::vector<uint8_t> swapped(kTv6.begin() + 80, kTv6.end());
  swapped.insert(swapped.end(), kTv6.begin(), kTv6.begin() + 80);
  auto o2 = StreamOpener::Create(StreamVariant::kGcmA, SpecKey());
  REQUIRE(o2.ok());
  CHECK(!(*o2)->Open(swapped, &out).ok());
}

TEST_CASE("variant B has no integrity: a flipped byte flips the same plaintext bit",
          "[link_crypto]") {
  std::vector<uint8_t> wire = kTv7;
  wire[70] ^= 0x10;
  auto o = StreamOpener::Create(StreamVariant::kGcmB, SpecKey());
  REQUIRE(o.ok());
  std::vector<uint8_t> opened;
  REQUIRE((*o)->Open(wire, &opened).ok());
  std::vector<uint8_t> want = PingTwice();
  want[70] ^= 0x10;
  CHECK(opened == want);
}

TEST_CASE("a stream cut inside a chunk leaves bytes pending", "[link_crypto]") {
  auto o = StreamOpener::Create(StreamVariant::kGcmA, SpecKey());
  REQUIRE(o.ok());
  std::vector<uint8_t> out;
  REQUIRE((*o)->Open(std::span(kTv6).subspan(0, 100), &out).ok());
  CHECK(out.size() == 64);
  CHECK((*o)->pending() == 20);
}

// ---- The handshake block ----

TEST_CASE("BuildHandshakeBlock sets magic, version, verf and quickmsg and masks the pads",
          "[link_crypto]") {
  std::array<uint8_t, kHandshakeBytes> r;
  r.fill(0xFF);
  HandshakeBlock b = BuildHandshakeBlock(r);
  CHECK(b[0x000] == 0x3F);
  CHECK(b[0x100] == 0x3F);
  CHECK(b[0x008] == 0x32);
  CHECK(b[0x009] == 0x48);
  CHECK(b[0x00A] == 1);
  CHECK(b[0x00B] == 0);
  CHECK(b[0x00C] == 0);
  CHECK(b[0x00F] == 0);
  // sess is all 0xFF: each fold of four equal bytes is 0.
  for (size_t j = 0; j < 16; ++j) CHECK(b[0x050 + j] == 0);
  CHECK(std::string(reinterpret_cast<const char*>(b.data() + 0x060)) == "Testing 1 2 3");
  CHECK(b[0x1FF] == 0xFF);
  auto sess = VerifyHandshakeBlock(b);
  REQUIRE(sess.ok());
  CHECK((*sess)[0] == 0xFF);
}

TEST_CASE(
    "VerifyHandshakeBlock refuses a wrong magic, a swapped magic, a wrong version and a "
    "bad fold",
    "[link_crypto]") {
  HandshakeBlock good = FreshBlock();
  REQUIRE(VerifyHandshakeBlock(good).ok());

  HandshakeBlock b = good;
  b[0x008] = 0x33;
  auto r = VerifyHandshakeBlock(b);
  REQUIRE(!r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("wrong magic (0x4833)"));

  b = good;
  b[0x008] = 0x48;
  b[0x009] = 0x32;
  r = VerifyHandshakeBlock(b);
  REQUIRE(!r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("byte-swapped magic"));

  b = good;
  b[0x00A] = 2;
  r = VerifyHandshakeBlock(b);
  REQUIRE(!r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("wrong version (2, want 1)"));

  b = good;
  b[0x010 + 13] ^= 0x40;  // sess byte 13 belongs to verf byte 3
  r = VerifyHandshakeBlock(b);
  REQUIRE(!r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("verifier mismatch (at byte 3)"));
  CHECK(r.status().kind() == Status::Kind::kProtocol);
}

// ---- Keys ----

TEST_CASE("keys: PKCS#1 and PKCS#8 private keys and SPKI public keys parse; junk does not",
          "[link_crypto]") {
  const Keys& k = KeyPair(0);
  std::string pkcs1 = k.priv.PrivatePem();
  CHECK_THAT(pkcs1, Catch::Contains("BEGIN RSA PRIVATE KEY"));
  CHECK_THAT(k.priv.PublicPem(), Catch::Contains("BEGIN PUBLIC KEY"));
  // PKCS#8, as `openssl genpkey` writes it.
  BIO* bio = BIO_new(BIO_s_mem());
  REQUIRE(PEM_write_bio_PrivateKey(bio, k.priv.pkey(), nullptr, nullptr, 0, nullptr, nullptr));
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string pkcs8(data, static_cast<size_t>(n));
  BIO_free(bio);
  CHECK_THAT(pkcs8, Catch::Contains("BEGIN PRIVATE KEY"));
  auto p8 = RsaKey::FromPrivatePem(pkcs8, "rsa.prv");
  REQUIRE(p8.ok());
  CHECK(p8->SamePublicKey(k.pub));

  auto junk = RsaKey::FromPrivatePem("hello", "x/rsa.prv");
  REQUIRE(!junk.ok());
  CHECK_THAT(junk.status().message(), Catch::StartsWith("x/rsa.prv: not a PEM private key"));
  CHECK(!RsaKey::FromPublicPem(pkcs1, "x.pub").ok());
  CHECK(!RsaKey::FromPrivatePem(k.priv.PublicPem(), "rsa.prv").ok());
  CHECK(!RsaKey::Generate(1024).ok());
}

TEST_CASE("CheckHandshakeKeys refuses a mismatched pair and a wrong modulus size",
          "[link_crypto]") {
  CHECK(CheckHandshakeKeys(KeyPair(0).priv, KeyPair(0).pub, KeyPair(1).pub).ok());
  Status st = CheckHandshakeKeys(KeyPair(0).priv, KeyPair(1).pub, KeyPair(1).pub);
  CHECK_THAT(st.message(), Catch::Contains("not the public half"));
  EVP_PKEY* small = EVP_RSA_gen(1024);
  REQUIRE(small != nullptr);
  BIO* bio = BIO_new(BIO_s_mem());
  REQUIRE(PEM_write_bio_PUBKEY(bio, small));
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  auto small_pub = RsaKey::FromPublicPem(std::string(data, static_cast<size_t>(n)), "p.pub");
  BIO_free(bio);
  EVP_PKEY_free(small);
  REQUIRE(small_pub.ok());
  st = CheckHandshakeKeys(KeyPair(0).priv, KeyPair(0).pub, *small_pub);
  CHECK_THAT(st.message(), Catch::Contains("wrong modulus size: the peer's key has 1024 bits"));
}

// ---- The exchange ----

TEST_CASE("a handshake between two in-process ends gives each the other's session keys",
          "[link_crypto]") {
  HandshakeBlock a = FreshBlock();
  HandshakeBlock b = FreshBlock();
  auto a_wire = SealHandshake(&a, KeyPair(0).priv, KeyPair(1).pub);
  auto b_wire = SealHandshake(&b, KeyPair(1).priv, KeyPair(0).pub);
  REQUIRE(a_wire.ok());
  REQUIRE(b_wire.ok());
  // The wire shows nothing of the block.
  CHECK(std::search(a_wire->begin(), a_wire->end(), a.begin() + 0x10, a.begin() + 0x50) ==
        a_wire->end());
  auto a_at_b = OpenHandshake(*a_wire, KeyPair(1).priv, KeyPair(0).pub);
  auto b_at_a = OpenHandshake(*b_wire, KeyPair(0).priv, KeyPair(1).pub);
  REQUIRE(a_at_b.ok());
  REQUIRE(b_at_a.ok());
  CHECK(std::equal(a_at_b->begin(), a_at_b->end(), a.begin() + 0x10));
  CHECK(std::equal(b_at_a->begin(), b_at_a->end(), b.begin() + 0x10));

  // Each side sends with its own sess and receives with the peer's.
  std::span<const uint8_t, 64> a_sess(a.data() + 0x10, 64);
  auto seal_a = StreamSealer::Create(StreamVariant::kGcmA, StreamKeyFromSess(a_sess));
  auto open_b = StreamOpener::Create(StreamVariant::kGcmA, StreamKeyFromSess(*a_at_b));
  REQUIRE(seal_a.ok());
  REQUIRE(open_b.ok());
  std::vector<uint8_t> ping = Ping(), wire, plain;
  REQUIRE((*seal_a)->Seal(ping, &wire).ok());
  REQUIRE((*open_b)->Open(wire, &plain).ok());
  CHECK(plain == ping);
}

TEST_CASE("malformed handshakes are refused: short, RSA failure, wrong key", "[link_crypto]") {
  HandshakeBlock a = FreshBlock();
  auto wire = SealHandshake(&a, KeyPair(0).priv, KeyPair(1).pub);
  REQUIRE(wire.ok());

  auto r = OpenHandshake(std::span(*wire).subspan(0, 511), KeyPair(1).priv, KeyPair(0).pub);
  REQUIRE(!r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("short handshake (511 of 512 bytes)"));

  // All 0xFF is above every modulus: the first raw RSA step fails.
  std::vector<uint8_t> ff(512, 0xFF);
  r = OpenHandshake(ff, KeyPair(1).priv, KeyPair(0).pub);
  REQUIRE(!r.ok());
  CHECK_THAT(r.status().message(), Catch::StartsWith("bad handshake: RSA failure"));

  // Sealed for the wrong peer, or opened with the wrong peer key: refused.
  r = OpenHandshake(*wire, KeyPair(2).priv, KeyPair(0).pub);
  REQUIRE(!r.ok());
  CHECK_THAT(r.status().message(), Catch::StartsWith("bad handshake: "));
  CHECK_THAT(r.status().message(), Catch::Contains("wrong key"));
  r = OpenHandshake(*wire, KeyPair(1).priv, KeyPair(2).pub);
  REQUIRE(!r.ok());
  CHECK_THAT(r.status().message(), Catch::StartsWith("bad handshake: "));
}

TEST_CASE("malformed handshakes are refused after decryption: magic, version, fold",
          "[link_crypto]") {
  HandshakeBlock good = FreshBlock();
  REQUIRE(SendBlock(good, 0, 1).ok());
  struct Damage {
    size_t off;
    uint8_t value;
    const char* want;
  };
  for (Damage d : {Damage{0x008, 0x00, "wrong magic"},
                   Damage{0x00A, 0x07, "bad handshake: wrong version (a wrong key"},
                   Damage{0x050, static_cast<uint8_t>(good[0x050] ^ 1), "verifier mismatch"}}) {
    HandshakeBlock b = good;
    b[d.off] = d.value;
    auto r = SendBlock(b, 0, 1);
    REQUIRE(!r.ok());
    CHECK_THAT(r.status().message(), Catch::Contains(d.want));
  }
}

TEST_CASE("a plaintext dmsg frame where the handshake should be is recognised", "[link_crypto]") {
  std::vector<uint8_t> ping = Ping();
  CHECK(LooksLikePlaintextDmsg(ping));
  CHECK(!LooksLikePlaintextDmsg(std::span(ping).subspan(0, 63)));
  HandshakeBlock a = FreshBlock();
  auto wire = SealHandshake(&a, KeyPair(0).priv, KeyPair(1).pub);
  REQUIRE(wire.ok());
  CHECK(!LooksLikePlaintextDmsg(*wire));
}

// ---- TLS 1.3 between xdisk-fuse daemons ----

namespace {

struct TlsPair {
  std::unique_ptr<TlsStream> client, server;
  std::vector<uint8_t> client_plain, server_plain;
  Status client_st, server_st;
};

// Client with key pair `c` expecting `server_key`, server with key pair `s`
// expecting `client_key`; shuttles bytes until nothing moves.
TlsPair Handshake(int c, int server_key, int s, int client_key) {
  TlsPair p;
  auto client =
      TlsStream::Create(TlsStream::Role::kClient, KeyPair(c).priv, KeyPair(server_key).pub);
  auto server =
      TlsStream::Create(TlsStream::Role::kServer, KeyPair(s).priv, KeyPair(client_key).pub);
  REQUIRE(client.ok());
  REQUIRE(server.ok());
  p.client = std::move(client.value());
  p.server = std::move(server.value());
  std::vector<uint8_t> to_server, to_client;
  REQUIRE(p.client->Start(&to_server).ok());
  CHECK(!to_server.empty());
  for (int round = 0; round < 10 && (!to_server.empty() || !to_client.empty()); ++round) {
    std::vector<uint8_t> next_to_client, next_to_server;
    if (!to_server.empty() && p.server_st.ok())
      p.server_st = p.server->Receive(to_server, &p.server_plain, &next_to_client);
    if (!to_client.empty() && p.client_st.ok())
      p.client_st = p.client->Receive(to_client, &p.client_plain, &next_to_server);
    to_server = std::move(next_to_server);
    to_client = std::move(next_to_client);
  }
  return p;
}

// Two ends with matching keys, handshake done.
TlsPair Connected() {
  TlsPair p = Handshake(0, 1, 1, 0);
  REQUIRE(p.client_st.ok());
  REQUIRE(p.server_st.ok());
  return p;
}

}  // namespace

TEST_CASE("TLS 1.3: two ends pinning each other's key shake hands and carry data both ways",
          "[link_crypto]") {
  TlsPair p = Connected();
  CHECK(p.client->handshake_done());
  CHECK(p.server->handshake_done());
  std::vector<uint8_t> ping = Ping(), wire, got, none;
  REQUIRE(p.client->Seal(ping, &wire).ok());
  // The record does not show the plaintext.
  CHECK(std::search(wire.begin(), wire.end(), ping.begin() + 0x20, ping.begin() + 0x24) ==
        wire.end());
  // Fed one byte at a time, as a slow socket would.
  for (uint8_t b : wire) REQUIRE(p.server->Receive({&b, 1}, &got, &none).ok());
  CHECK(got == ping);
  CHECK(none.empty());
  wire.clear();
  got.clear();
  std::vector<uint8_t> big(300000, 0x5a);
  REQUIRE(p.server->Seal(big, &wire).ok());
  REQUIRE(p.client->Receive(wire, &got, &none).ok());
  CHECK(got == big);

  // A flipped byte in a record fails it, for good.
  wire.clear();
  got.clear();
  REQUIRE(p.client->Seal(ping, &wire).ok());
  wire[wire.size() / 2] ^= 1;
  Status st = p.server->Receive(wire, &got, &none);
  CHECK(!st.ok());
  CHECK_THAT(st.message(), Catch::StartsWith("TLS record failed"));
  CHECK(got.empty());
}

TEST_CASE("TLS 1.3: a peer whose certificate carries another key is refused as a key mismatch",
          "[link_crypto]") {
  // The server expects key 2 from the client, which has key 0.
  TlsPair p = Handshake(0, 1, 1, 2);
  CHECK(!p.server_st.ok());
  CHECK_THAT(p.server_st.message(), Catch::StartsWith("key mismatch"));
  CHECK(p.client_plain.empty());
  // The client expects key 2 from the server, which has key 1.
  TlsPair q = Handshake(0, 2, 1, 0);
  CHECK(!q.client_st.ok());
  CHECK_THAT(q.client_st.message(), Catch::StartsWith("key mismatch"));
  CHECK(!q.server->handshake_done());
}

namespace {

// Opens one TLS 1.3 record (RFC 8446 §5.2) with OpenSSL's AES-GCM and the
// exported keys, as the kernel would: nonce = IV xor sequence number, the
// record header as additional data, the inner content type stripped.
std::vector<uint8_t> OpenRecordWith(const TlsStream::TrafficKeys& k, uint64_t seq,
                                    std::span<const uint8_t> record) {
  REQUIRE(record.size() > 5 + 16);
  REQUIRE(record[0] == 23);  // application_data, the outer type of every 1.3 record
  size_t len = size_t{record[3]} << 8 | record[4];
  REQUIRE(record.size() == 5 + len);
  std::array<uint8_t, 12> nonce = k.iv;
  for (int i = 0; i < 8; ++i) nonce[11 - i] ^= static_cast<uint8_t>(seq >> (8 * i));
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  REQUIRE(EVP_DecryptInit_ex(ctx, k.key_bytes == 32 ? EVP_aes_256_gcm() : EVP_aes_128_gcm(),
                             nullptr, k.key.data(), nonce.data()) == 1);
  int n = 0;
  REQUIRE(EVP_DecryptUpdate(ctx, nullptr, &n, record.data(), 5) == 1);
  std::vector<uint8_t> plain(len - 16);
  REQUIRE(EVP_DecryptUpdate(ctx, plain.data(), &n, record.data() + 5, static_cast<int>(len - 16)) ==
          1);
  REQUIRE(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16,
                              const_cast<uint8_t*>(record.data() + 5 + len - 16)) == 1);
  int ok = EVP_DecryptFinal_ex(ctx, plain.data() + n, &n);
  EVP_CIPHER_CTX_free(ctx);
  if (ok != 1) return {};
  while (!plain.empty() && plain.back() == 0) plain.pop_back();  // padding
  REQUIRE(!plain.empty());
  CHECK(plain.back() == 23);  // inner type: application data
  plain.pop_back();
  return plain;
}

}  // namespace

TEST_CASE("TLS 1.3: exported traffic keys and sequence numbers open the next records (kTLS)",
          "[link_crypto]") {
  TlsPair p = Connected();
  std::vector<uint8_t> ping = Ping(), wire, got, none;
  // Some records both ways first, so that the sequence numbers are not 0.
  REQUIRE(p.client->Seal(ping, &wire).ok());
  REQUIRE(p.server->Receive(wire, &got, &none).ok());
  wire.clear();
  got.clear();
  std::vector<uint8_t> big(100000, 0x5a);
  REQUIRE(p.server->Seal(big, &wire).ok());
  // Half the records: the client is inside a record, not at a boundary.
  REQUIRE(p.client->Receive({wire.data(), wire.size() / 2}, &got, &none).ok());
  CHECK(!p.client->at_record_boundary());
  REQUIRE(p.client->Receive({wire.data() + wire.size() / 2, wire.size() - wire.size() / 2}, &got,
                            &none)
              .ok());
  CHECK(got == big);
  CHECK(p.client->at_record_boundary());
  CHECK(p.server->at_record_boundary());

  using D = TlsStream::Direction;
  auto c_tx = p.client->ExportKeys(D::kSend), s_rx = p.server->ExportKeys(D::kReceive);
  auto s_tx = p.server->ExportKeys(D::kSend), c_rx = p.client->ExportKeys(D::kReceive);
  REQUIRE(c_tx.ok());
  REQUIRE(s_rx.ok());
  REQUIRE(s_tx.ok());
  REQUIRE(c_rx.ok());
  CHECK(c_tx->key_bytes == 32);  // TLS_AES_256_GCM_SHA384 is preferred
  CHECK(c_tx->seq == 1);
  CHECK(s_tx->seq == 7);  // 100000 bytes in 16 KiB records
  // What one side sends with is what the other receives with.
  CHECK(c_tx->key == s_rx->key);
  CHECK(c_tx->iv == s_rx->iv);
  CHECK(c_tx->seq == s_rx->seq);
  CHECK(s_tx->key == c_rx->key);
  CHECK(s_tx->iv == c_rx->iv);
  CHECK(s_tx->seq == c_rx->seq);
  CHECK(c_tx->key != s_tx->key);

  // The next record each side seals opens with its exported keys at the
  // exported sequence number, and with no other.
  wire.clear();
  REQUIRE(p.client->Seal(ping, &wire).ok());
  CHECK(OpenRecordWith(*c_tx, c_tx->seq, wire) == ping);
  CHECK(OpenRecordWith(*c_tx, c_tx->seq + 1, wire).empty());
  wire.clear();
  REQUIRE(p.server->Seal(ping, &wire).ok());
  CHECK(OpenRecordWith(*c_rx, c_rx->seq, wire) == ping);
}
