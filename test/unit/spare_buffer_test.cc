// SpareBuffer (daemon/link/spare_buffer.h): the link's reused write buffers keep
// their capacity across writes but shrink after a burst.
#include "daemon/link/spare_buffer.h"

#include <catch2/catch.hpp>

using namespace xdisk;

namespace {

// One use of `need` bytes, as FlushWrites makes it.
void Use(SpareBuffer* s, size_t need) {
  std::vector<uint8_t> b = s->Take();
  b.resize(need);
  s->Give(std::move(b));
}

}  // namespace

TEST_CASE("a spare buffer keeps its capacity for the next write, without reallocating",
          "[spare_buffer]") {
  SpareBuffer s;
  std::vector<uint8_t> b = s.Take();
  b.resize(4 << 20);
  const uint8_t* data = b.data();
  s.Give(std::move(b));
  CHECK(s.capacity() >= (4u << 20));
  std::vector<uint8_t> again = s.Take();
  CHECK(again.empty());
  CHECK(again.data() == data);
  CHECK(s.capacity() == 0);  // lent out
  again.resize(3 << 20);     // a smaller write: no new allocation
  CHECK(again.data() == data);
  s.Give(std::move(again));
  CHECK(s.capacity() >= (4u << 20));
}

TEST_CASE("a spare buffer shrinks after a window of small writes, not before", "[spare_buffer]") {
  SpareBuffer s;
  Use(&s, 8 << 20);  // the burst
  for (unsigned i = 1; i < SpareBuffer::kWindow; ++i) Use(&s, 4096);
  CHECK(s.capacity() >= (8u << 20));  // the burst's window: its peak is 8 MiB
  for (unsigned i = 0; i + 1 < SpareBuffer::kWindow; ++i) Use(&s, 4096);
  CHECK(s.capacity() >= (8u << 20));  // one use short of a whole small window
  Use(&s, 4096);
  CHECK(s.capacity() < SpareBuffer::kKeepBytes);
  CHECK(s.capacity() >= 4096);
}

TEST_CASE("a spare buffer of writes that vary within 4x keeps its capacity", "[spare_buffer]") {
  SpareBuffer s;
  for (unsigned i = 0; i < 3 * SpareBuffer::kWindow; ++i) Use(&s, i % 2 ? (1 << 20) : (300 << 10));
  CHECK(s.capacity() >= (1u << 20));
}

TEST_CASE("an idle link's spare buffer is trimmed to nothing above the kept size",
          "[spare_buffer]") {
  SpareBuffer big, small;
  Use(&big, 2 << 20);
  Use(&small, 64 << 10);
  big.Trim();
  small.Trim();
  CHECK(big.capacity() == 0);
  CHECK(small.capacity() >= (64u << 10));
}
