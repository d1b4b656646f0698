#include "proto/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#include <nmmintrin.h>
#endif

// All entry points take and return a finished CRC (final XOR applied), so
// that Crc32cExtend(0, ...) is a fresh CRC and results chain directly. The
// inversion is undone on entry and redone on exit.

namespace xdisk {
namespace {

constexpr uint32_t kPoly = 0x82F63B78;  // reflected Castagnoli polynomial

// Slicing-by-8 tables: table[0] is the classic byte table; table[k][b] is the
// CRC of byte b followed by k zero bytes, which lets the loop fold eight
// input bytes per step with independent lookups.
using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables MakeTables() {
  Tables t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t c = b;
    for (int i = 0; i < 8; ++i) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[0][b] = c;
  }
  for (size_t k = 1; k < 8; ++k) {
    for (uint32_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFF];
  }
  return t;
}

constexpr Tables kTables = MakeTables();

// Assembling from bytes keeps the portable path correct on big-endian hosts;
// compilers turn it into a single load on little-endian ones.
inline uint32_t Load32Le(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

// GF(2) arithmetic modulo the (reflected) CRC-32C polynomial, used to join
// the CRCs of adjacent pieces: crc(A ++ B) = crc(A) * x^(8|B|) + crc(B).
constexpr uint32_t kPolyReflected = 0x82F63B78;

// Folding (below) pays from here on.
constexpr size_t kFoldMin = 4096;

uint32_t MultModP(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1) ? (b >> 1) ^ kPolyReflected : b >> 1;
  }
  return p;
}

// kX2n[k] = x^(2^k) mod P.
struct PowerTable {
  uint32_t x2n[32];
  PowerTable() {
    uint32_t p = 1u << 30;  // x^1
    x2n[0] = p;
    for (int k = 1; k < 32; ++k) x2n[k] = p = MultModP(p, p);
  }
};
const PowerTable kPowers;

// x^(8 * bytes) mod P.
uint32_t ShiftForBytes(uint64_t bytes) {
  uint32_t p = 1u << 31;  // x^0
  unsigned k = 3;         // 8 bits per byte
  for (uint64_t n = bytes; n != 0; n >>= 1, ++k)
    if (n & 1) p = MultModP(kPowers.x2n[k & 31], p);
  return p;
}

// x^bits mod P.
uint32_t XPowBits(uint64_t bits) {
  uint32_t p = 1u << 31;  // x^0
  for (unsigned k = 0; bits != 0; bits >>= 1, ++k)
    if (bits & 1) p = MultModP(kPowers.x2n[k & 31], p);
  return p;
}

// Joins finished CRCs of adjacent pieces A and B (B is `len_b` bytes).
uint32_t Combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  return MultModP(ShiftForBytes(len_b), crc_a) ^ crc_b;
}

// What the CPU offers, probed once.
struct CpuCrc {
  bool crc32 = false;  // SSE4.2
  bool fold = false;   // AVX-512F and VPCLMULQDQ as well
};

#if defined(__x86_64__)
// Below this size one stream is as fast as three plus the joins.
constexpr size_t kThreeWayMin = 4096;

// The crc32 instruction over `n` bytes from the raw register `c` (no
// inversions), one serial chain.
__attribute__((target("sse4.2"))) uint32_t Crc32Serial(uint32_t c, const uint8_t* p, size_t n) {
  uint64_t c64 = c;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);  // x86 loads are little-endian and may be unaligned
    c64 = _mm_crc32_u64(c64, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c64);
  while (n-- > 0) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

__attribute__((target("sse4.2"))) uint32_t HardwareImpl(uint32_t crc, const uint8_t* p, size_t n) {
  if (n >= kThreeWayMin) {
    // The crc32 instruction has a latency of three cycles but a throughput
    // of one: three independent streams over the thirds of the buffer keep
    // it busy, then the three CRCs are joined.
    const size_t third = (n / 3) & ~size_t{7};
    const uint8_t* p1 = p + third;
    const uint8_t* p2 = p + 2 * third;
    uint64_t c0 = static_cast<uint32_t>(~crc), c1 = 0xFFFFFFFFu, c2 = 0xFFFFFFFFu;
    for (size_t i = 0; i < third; i += 8) {
      uint64_t v0, v1, v2;
      std::memcpy(&v0, p + i, 8);
      std::memcpy(&v1, p1 + i, 8);
      std::memcpy(&v2, p2 + i, 8);
      c0 = _mm_crc32_u64(c0, v0);
      c1 = _mm_crc32_u64(c1, v1);
      c2 = _mm_crc32_u64(c2, v2);
    }
    uint32_t a = ~static_cast<uint32_t>(c0);
    uint32_t b = ~static_cast<uint32_t>(c1);
    // The last piece also takes the remainder, through the plain loop.
    uint32_t c = ~static_cast<uint32_t>(c2);
    const size_t rest = n - 3 * third;
    if (rest) c = ~Crc32Serial(~c, p2 + third, rest);
    return Combine(Combine(a, b, third), c, third + rest);
  }
  return ~Crc32Serial(~crc, p, n);
}

// Carry-less folding with VPCLMULQDQ over 512-bit registers, for large
// buffers (the dmsg aux of a 1 MiB BLK transaction): the crc32 instruction
// does 8 bytes per cycle at best, folding four 64-byte accumulators does
// 256 bytes in a few multiplies.
//
// Why it works: the CRC register after a message M is M(x) * x^32 mod P,
// with ~crc XORed into M's first 32 bits for the starting value. A 128-bit
// lane A that lies D bits before another one can be replaced by
// A * x^D mod P added into that later lane without changing M mod P. With A
// split into its first (higher) and second 64 bits, A_hi * x^(D+64) +
// A_lo * x^D, each product of a 64-bit half and a 32-bit remainder fits in
// the 128-bit lane. At the end the four accumulators (256 bytes) stand for
// everything folded so far; the crc32 instruction, from a zero register,
// finishes over them and the bytes that were not folded.
//
// Bit order: a lane loaded little-endian has the coefficient of x^(127-i)
// in bit i (the CRC is reflected). A carry-less product of a 64-bit half
// (x^(63-j) in bit j) and a constant holding x^e in bit 63-e has the
// coefficient of x^(126-m) in bit m: the lane's form divided by x. So the
// constants are x^(D+63) and x^(D-1) mod P, each in the top 32 bits.
constexpr size_t kFoldBlock = 256;  // four 64-byte accumulators

struct FoldConstants {
  uint64_t hi_half, lo_half;  // for the lane's first and second 64 bits
  FoldConstants() {
    const uint64_t d = kFoldBlock * 8;
    hi_half = uint64_t{XPowBits(d + 63)} << 32;
    lo_half = uint64_t{XPowBits(d - 1)} << 32;
  }
};
const FoldConstants kFold;

// x's four lanes moved kFoldBlock bytes on, plus `next`.
__attribute__((target("avx512f,vpclmulqdq"), always_inline)) inline __m512i Fold512(__m512i x,
                                                                                  __m512i k,
                                                                                  __m512i next) {
  __m512i a = _mm512_clmulepi64_epi128(x, k, 0x00);
  __m512i b = _mm512_clmulepi64_epi128(x, k, 0x11);
  return _mm512_ternarylogic_epi64(a, b, next, 0x96);  // a ^ b ^ next
}

__attribute__((target("avx512f,vpclmulqdq,sse4.2"))) uint32_t FoldImpl(uint32_t crc,
                                                                      const uint8_t* p,
                                                                      size_t n) {
  const __m512i k = _mm512_set_epi64(
      static_cast<long long>(kFold.lo_half), static_cast<long long>(kFold.hi_half),
      static_cast<long long>(kFold.lo_half), static_cast<long long>(kFold.hi_half),
      static_cast<long long>(kFold.lo_half), static_cast<long long>(kFold.hi_half),
      static_cast<long long>(kFold.lo_half), static_cast<long long>(kFold.hi_half));
  __m512i x0 = _mm512_loadu_si512(p);
  __m512i x1 = _mm512_loadu_si512(p + 64);
  __m512i x2 = _mm512_loadu_si512(p + 128);
  __m512i x3 = _mm512_loadu_si512(p + 192);
  // The starting value goes into the message's first 32 bits.
  x0 = _mm512_xor_si512(x0, _mm512_castsi128_si512(_mm_cvtsi32_si128(static_cast<int>(~crc))));
  const uint8_t* q = p + kFoldBlock;
  size_t left = n - kFoldBlock;
  while (left >= kFoldBlock) {
    x0 = Fold512(x0, k, _mm512_loadu_si512(q));
    x1 = Fold512(x1, k, _mm512_loadu_si512(q + 64));
    x2 = Fold512(x2, k, _mm512_loadu_si512(q + 128));
    x3 = Fold512(x3, k, _mm512_loadu_si512(q + 192));
    q += kFoldBlock;
    left -= kFoldBlock;
  }
  alignas(64) uint8_t acc[kFoldBlock];
  _mm512_store_si512(acc, x0);
  _mm512_store_si512(acc + 64, x1);
  _mm512_store_si512(acc + 128, x2);
  _mm512_store_si512(acc + 192, x3);
  return ~Crc32Serial(Crc32Serial(0, acc, kFoldBlock), q, left);
}

CpuCrc DetectCpu() {
  __builtin_cpu_init();
  CpuCrc c;
  c.crc32 = __builtin_cpu_supports("sse4.2");
  c.fold = c.crc32 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("vpclmulqdq");
  return c;
}
#else
CpuCrc DetectCpu() { return {}; }
#endif

const CpuCrc& Cpu() {
  // A function-local static makes the CPUID probe run once, thread-safely.
  static const CpuCrc cpu = DetectCpu();
  return cpu;
}

}  // namespace

uint32_t Crc32cPortable(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
  while (n >= 8) {
    uint32_t lo = Load32Le(p) ^ c;
    uint32_t hi = Load32Le(p + 4);
    c = kTables[7][lo & 0xFF] ^ kTables[6][(lo >> 8) & 0xFF] ^ kTables[5][(lo >> 16) & 0xFF] ^
        kTables[4][lo >> 24] ^ kTables[3][hi & 0xFF] ^ kTables[2][(hi >> 8) & 0xFF] ^
        kTables[1][(hi >> 16) & 0xFF] ^ kTables[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) c = (c >> 8) ^ kTables[0][(c ^ *p++) & 0xFF];
  return ~c;
}

bool Crc32cHardwareAvailable() { return Cpu().crc32; }

uint32_t Crc32cHardware(uint32_t crc, const void* data, size_t n) {
#if defined(__x86_64__)
  return HardwareImpl(crc, static_cast<const uint8_t*>(data), n);
#else
  // Unreachable by contract; falling back keeps a misuse from producing a
  // wrong checksum.
  return Crc32cPortable(crc, data, n);
#endif
}

bool Crc32cFoldAvailable() { return Cpu().fold; }

uint32_t Crc32cFold(uint32_t crc, const void* data, size_t n) {
#if defined(__x86_64__)
  if (n >= kFoldMin) return FoldImpl(crc, static_cast<const uint8_t*>(data), n);
  return HardwareImpl(crc, static_cast<const uint8_t*>(data), n);
#else
  return Crc32cPortable(crc, data, n);
#endif
}

uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n) {
  if (n >= kFoldMin && Crc32cFoldAvailable()) return Crc32cFold(crc, data, n);
  if (Crc32cHardwareAvailable()) return Crc32cHardware(crc, data, n);
  return Crc32cPortable(crc, data, n);
}

uint32_t Crc32c(const void* data, size_t n) { return Crc32cExtend(0, data, n); }

}  // namespace xdisk
