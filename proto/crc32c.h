// CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, initial value and
// final XOR 0xFFFFFFFF. This is the checksum of dmsg headers and aux data
// (docs/dmsg-wire.md, "Checksums") and of journal records.
//
// Crc32c() picks, per call, carry-less folding (AVX-512 VPCLMULQDQ, for
// buffers of 4 KiB and more) or the SSE4.2 instruction when the CPU has
// them (checked once, at first use), and a portable slicing table
// otherwise. Both are exposed so the
// tests can check each against the spec's vectors. All functions are pure and
// thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace xdisk {

// CRC-32C of `n` bytes at `data`.
uint32_t Crc32c(const void* data, size_t n);

// Continues a CRC: Crc32cExtend(Crc32c(a), b) == Crc32c(a ++ b).
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n);

// The two implementations behind Crc32c(). Crc32cHardware() REQUIRES
// Crc32cHardwareAvailable().
uint32_t Crc32cPortable(uint32_t crc, const void* data, size_t n);
uint32_t Crc32cHardware(uint32_t crc, const void* data, size_t n);
bool Crc32cHardwareAvailable();
// The folding implementation (smaller buffers go to the SSE4.2 one).
// Crc32cFold() REQUIRES Crc32cFoldAvailable().
uint32_t Crc32cFold(uint32_t crc, const void* data, size_t n);
bool Crc32cFoldAvailable();

}  // namespace xdisk
