// The spec's test vectors (docs/dmsg-protocol.md §10) as hex dumps,
// shared by the CRC and codec tests, and a parser for the dump format.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace xdisk::spec_vectors {

// Parses "0000: 32 48 ..." dump lines as printed in the spec.
inline std::vector<uint8_t> FromHexDump(std::string_view dump) {
  std::vector<uint8_t> out;
  std::istringstream in{std::string(dump)};
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::istringstream words(line.substr(colon + 1));
    std::string w;
    while (words >> w) out.push_back(static_cast<uint8_t>(std::stoul(w, nullptr, 16)));
  }
  return out;
}

inline constexpr std::string_view kTv3 = R"(
0000: 32 48 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0010: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0020: 01 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0030: 00 00 00 00 00 00 00 00 00 00 00 00 41 a4 26 f4
)";

inline constexpr std::string_view kTv4 = R"(
0000: 32 48 00 00 05 00 00 00 78 56 34 12 00 f8 ff ff
0010: ef be ad de 00 f8 ff ff 00 00 00 00 00 00 00 00
0020: 02 03 50 c4 00 00 00 00 00 00 00 00 00 00 00 00
0030: 00 00 00 00 00 00 00 00 00 00 00 00 a8 77 10 c5
0040: 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00
0050: 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00
0060: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0070: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
)";

inline constexpr std::string_view kTv5Header = R"(
0000: 32 48 00 00 07 00 00 00 78 56 34 12 00 f8 ff ff
0010: 00 10 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0020: 01 ff 0f ec 06 cc 4d b7 64 00 00 00 00 00 00 00
0030: 00 00 00 00 00 00 00 00 00 00 00 00 8b ea 59 75
)";

}  // namespace xdisk::spec_vectors
