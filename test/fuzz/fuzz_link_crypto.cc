// libFuzzer target for the link crypto codecs (docs/link-crypto.md): the
// handshake parser and the decrypting stream reader.
//
// Input layout: byte 0 bit 0 picks the target.
//   0: handshake. The next 512 bytes (zero-padded) are checked as a
//      decrypted block (VerifyHandshakeBlock) and as wire bytes
//      (OpenHandshake with fixed test keys); the whole input is also given
//      to LooksLikePlaintextDmsg. A block that verifies must carry a sess
//      whose fold is its verf; nothing may crash.
//   1: stream. Bit 1 picks variant A or B, bits 2-4 a chunking schedule
//      length; the rest is wire bytes for a StreamOpener with a fixed key,
//      fed in the scheduled chunks. Checks: the output is whole 64-byte
//      chunks, a reference opener fed everything at once releases the same
//      plaintext and fails the same way, and sealing the released plaintext
//      again with the same key gives back exactly the wire bytes it came
//      from (the opener released nothing it did not authenticate, for A).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "proto/gcm_stream.h"
#include "proto/rsa_handshake.h"

using namespace xdisk;
using namespace xdisk::dfcrypto;

namespace {

#define FUZZ_CHECK(cond)                                                        \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "check failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                             \
    }                                                                           \
  } while (0)

// The key of the spec's TV6/TV7, so that the seeds (test/fuzz/
// seeds_link_crypto) carry valid tags.
StreamKey FixedKey() {
  StreamKey k;
  for (size_t i = 0; i < kKeyBytes; ++i) k.key[i] = static_cast<uint8_t>(i);
  k.fixed_iv = {0xa0, 0xa1, 0xa2, 0xa3};
  return k;
}

struct TestKeys {
  RsaKey own, peer;
};

// Two 2048-bit keys, made once per fuzzing process.
const TestKeys& Keys() {
  static TestKeys* keys = [] {
    auto* k = new TestKeys;
    auto a = RsaKey::Generate(2048);
    auto b = RsaKey::Generate(2048);
    FUZZ_CHECK(a.ok() && b.ok());
    k->own = std::move(a.value());
    auto pub = RsaKey::FromPublicPem(b->PublicPem(), "peer.pub");
    FUZZ_CHECK(pub.ok());
    k->peer = std::move(pub.value());
    return k;
  }();
  return *keys;
}

void FuzzHandshake(std::span<const uint8_t> in) {
  HandshakeBlock block{};
  memcpy(block.data(), in.data(), std::min(in.size(), block.size()));
  auto sess = VerifyHandshakeBlock(block);
  if (sess.ok()) {
    for (size_t j = 0; j < kVerfBytes; ++j) {
      const uint8_t* s = sess->data() + 4 * j;
      FUZZ_CHECK((s[0] ^ s[1] ^ s[2] ^ s[3]) == block[kOffVerf + j]);
    }
  }
  auto opened = OpenHandshake(in, Keys().own, Keys().peer);
  if (in.size() < kHandshakeBytes) FUZZ_CHECK(!opened.ok());
  (void)LooksLikePlaintextDmsg(in);
}

void FuzzStream(uint8_t flags, std::span<const uint8_t> sched, std::span<const uint8_t> wire) {
  const StreamVariant v = (flags & 2) ? StreamVariant::kGcmB : StreamVariant::kGcmA;
  auto opener = StreamOpener::Create(v, FixedKey());
  auto ref = StreamOpener::Create(v, FixedKey());
  FUZZ_CHECK(opener.ok() && ref.ok());
  std::vector<uint8_t> out, ref_out;
  Status st, ref_st;
  size_t pos = 0, i = 0;
  while (pos < wire.size() && st.ok()) {
    size_t n = std::min<size_t>(1 + sched[i++ % sched.size()], wire.size() - pos);
    st = (*opener)->Open(wire.subspan(pos, n), &out);
    pos += n;
  }
  ref_st = (*ref)->Open(wire, &ref_out);
  FUZZ_CHECK(out.size() % kChunkBytes == 0);
  FUZZ_CHECK(out == ref_out);
  FUZZ_CHECK(st.ok() == ref_st.ok());
  if (!st.ok()) FUZZ_CHECK(v == StreamVariant::kGcmA && st.kind() == Status::Kind::kCorruption);

  auto sealer = StreamSealer::Create(v, FixedKey());
  FUZZ_CHECK(sealer.ok());
  std::vector<uint8_t> again;
  FUZZ_CHECK((*sealer)->Seal(out, &again).ok());
  FUZZ_CHECK(again.size() == SealedBytes(v, out.size()));
  FUZZ_CHECK(again.size() <= wire.size());
  // memcmp with a null pointer is undefined even for 0 bytes.
  FUZZ_CHECK(again.empty() || memcmp(again.data(), wire.data(), again.size()) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  if ((data[0] & 1) == 0) {
    FuzzHandshake({data + 1, size - 1});
    return 0;
  }
  size_t nsched = 1 + ((data[0] >> 2) & 7);
  if (size < 1 + nsched) return 0;
  FuzzStream(data[0], {data + 1, nsched}, {data + 1 + nsched, size - 1 - nsched});
  return 0;
}
