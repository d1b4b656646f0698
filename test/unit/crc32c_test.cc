// CRC-32C against the vectors of dmsg-protocol.md §10, for the portable, the
// SSE4.2 and the folding (AVX-512 VPCLMULQDQ) implementation.
#include "proto/crc32c.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "test/unit/spec_vectors.h"

namespace {

using Bytes = std::vector<uint8_t>;

using xdisk::spec_vectors::FromHexDump;
using xdisk::spec_vectors::kTv3;
using xdisk::spec_vectors::kTv4;
using xdisk::spec_vectors::kTv5Header;

struct Impl {
  const char* name;
  uint32_t (*fn)(uint32_t, const void*, size_t);
};

// The implementations this machine can run; the hardware one is skipped
// (with a warning) on CPUs without SSE4.2.
std::vector<Impl> Impls() {
  std::vector<Impl> v{{"portable", xdisk::Crc32cPortable}};
  if (xdisk::Crc32cHardwareAvailable()) {
    v.push_back({"sse4.2", xdisk::Crc32cHardware});
  } else {
    WARN("SSE4.2 not available; hardware CRC not tested");
  }
  if (xdisk::Crc32cFoldAvailable()) v.push_back({"vpclmulqdq", xdisk::Crc32cFold});
  return v;
}

// The CRC a header must carry: over the padded header with hdr_crc zeroed.
uint32_t HeaderCrc(const Impl& impl, Bytes hdr) {
  std::memset(hdr.data() + 0x3C, 0, 4);
  return impl.fn(0, hdr.data(), hdr.size());
}

}  // namespace

TEST_CASE("CRC-32C of ASCII 123456789 is 0xE3069283 (TV1)", "[crc32c]") {
  for (const Impl& impl : Impls()) {
    INFO(impl.name);
    CHECK(impl.fn(0, "123456789", 9) == 0xE3069283u);
  }
  CHECK(xdisk::Crc32c("123456789", 9) == 0xE3069283u);
}

TEST_CASE("CRC-32C of 64 zero bytes is 0x03C8EB67 (TV2)", "[crc32c]") {
  const Bytes zeros(64, 0);
  for (const Impl& impl : Impls()) {
    INFO(impl.name);
    CHECK(impl.fn(0, zeros.data(), zeros.size()) == 0x03C8EB67u);
  }
  CHECK(xdisk::Crc32c(zeros.data(), zeros.size()) == 0x03C8EB67u);
}

TEST_CASE("CRC-32C of the TV3/TV4/TV5 headers with hdr_crc zeroed matches the spec", "[crc32c]") {
  const Bytes tv3 = FromHexDump(kTv3), tv4 = FromHexDump(kTv4), tv5 = FromHexDump(kTv5Header);
  REQUIRE(tv3.size() == 64);
  REQUIRE(tv4.size() == 128);
  REQUIRE(tv5.size() == 64);
  for (const Impl& impl : Impls()) {
    INFO(impl.name);
    CHECK(HeaderCrc(impl, tv3) == 0xF426A441u);
    CHECK(HeaderCrc(impl, tv4) == 0xC51077A8u);
    CHECK(HeaderCrc(impl, tv5) == 0x7559EA8Bu);
  }
}

TEST_CASE("CRC-32C of 100 x 0xA5 padded with 28 zeros is the TV5 aux_crc 0xB74DCC06", "[crc32c]") {
  Bytes aux(100, 0xA5);
  aux.resize(128, 0);
  for (const Impl& impl : Impls()) {
    INFO(impl.name);
    CHECK(impl.fn(0, aux.data(), aux.size()) == 0xB74DCC06u);
  }
}

TEST_CASE("CRC-32C of empty input is 0 and Extend over nothing is the identity", "[crc32c]") {
  CHECK(xdisk::Crc32c(nullptr, 0) == 0u);
  CHECK(xdisk::Crc32cExtend(0xE3069283u, nullptr, 0) == 0xE3069283u);
}

TEST_CASE("Crc32cExtend over any split equals the CRC of the whole buffer", "[crc32c]") {
  std::mt19937 rng(42);
  Bytes data(97);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  const uint32_t whole = xdisk::Crc32c(data.data(), data.size());
  for (size_t split = 0; split <= data.size(); ++split) {
    INFO("split " << split);
    uint32_t c = xdisk::Crc32c(data.data(), split);
    CHECK(xdisk::Crc32cExtend(c, data.data() + split, data.size() - split) == whole);
    for (const Impl& impl : Impls()) {
      CHECK(impl.fn(impl.fn(0, data.data(), split), data.data() + split, data.size() - split) ==
            whole);
    }
  }
}

TEST_CASE("Portable and hardware CRC-32C agree for every length and alignment", "[crc32c]") {
  if (!xdisk::Crc32cHardwareAvailable()) {
    WARN("SSE4.2 not available; skipped");
    return;
  }
  std::mt19937 rng(7);
  Bytes data(600);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t off = 0; off < 8; ++off) {
    for (size_t len = 0; off + len <= 520; ++len) {
      uint32_t seed = static_cast<uint32_t>(rng());
      REQUIRE(xdisk::Crc32cPortable(seed, data.data() + off, len) ==
              xdisk::Crc32cHardware(seed, data.data() + off, len));
    }
  }
}

TEST_CASE("the three-way hardware CRC agrees with the portable one on large buffers", "[crc32c]") {
  if (!xdisk::Crc32cHardwareAvailable()) return;
  std::mt19937 rng(7);
  std::vector<uint8_t> buf(300000 + 8);  // room for the largest length at the largest start
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  for (size_t len : {4095u, 4096u, 4097u, 4103u, 12289u, 65536u, 131072u, 131075u, 299999u}) {
    for (size_t start : {0u, 1u, 5u}) {
      uint32_t init = static_cast<uint32_t>(rng());
      INFO("len " << len << " start " << start);
      CHECK(xdisk::Crc32cHardware(init, buf.data() + start, len) ==
            xdisk::Crc32cPortable(init, buf.data() + start, len));
    }
  }
}

TEST_CASE("the folding CRC agrees with the portable one around every block edge", "[crc32c]") {
  if (!xdisk::Crc32cFoldAvailable()) {
    WARN("AVX-512 VPCLMULQDQ not available; folding CRC not tested");
    return;
  }
  std::mt19937 rng(11);
  std::vector<uint8_t> buf((1u << 20) + 512);  // the longest length at the last start
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  // 4096 is where Crc32c() starts folding; 256-byte blocks are folded, the
  // rest goes through the crc32 instruction: lengths on and around those
  // edges, and the 1 MiB aux of a whole-size BLK transaction.
  for (size_t len : {0u, 1u, 255u, 4095u, 4096u, 4097u, 4103u, 4351u, 4352u, 4353u, 4608u, 65536u,
                     131072u + 28u, 1048576u, 1048576u + 255u}) {
    for (size_t start : {0u, 1u, 7u, 63u}) {
      uint32_t init = static_cast<uint32_t>(rng());
      INFO("len " << len << " start " << start);
      CHECK(xdisk::Crc32cFold(init, buf.data() + start, len) ==
            xdisk::Crc32cPortable(init, buf.data() + start, len));
    }
  }
  // One bit flipped anywhere in a folded buffer changes the CRC.
  const uint32_t whole = xdisk::Crc32cFold(0, buf.data(), 8192);
  for (size_t bit : {0u, 31u, 32u, 127u, 2047u, 2048u, 40000u, 65535u}) {
    buf[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    CHECK(xdisk::Crc32cFold(0, buf.data(), 8192) != whole);
    buf[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
  }
}
