#include "engine/quant/packing.h"

#include "engine/core/error.h"

namespace ttq {

std::vector<uint8_t> pack_ternary_codes(const int8_t* codes, int64_t n) {
  std::vector<uint8_t> out(static_cast<size_t>((n + 3) / 4), 0);
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t bits = codes[i] > 0 ? 0b01 : (codes[i] < 0 ? 0b10 : 0b00);
    out[i / 4] |= static_cast<uint8_t>(bits << (2 * (i % 4)));
  }
  return out;
}

void unpack_ternary_codes(const uint8_t* packed, int64_t packed_bytes, int64_t n, int8_t* codes) {
  TTQ_CHECK(packed_bytes == (n + 3) / 4, "packed ternary codes: " << packed_bytes << " bytes for " << n << " weights");
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t bits = (packed[i / 4] >> (2 * (i % 4))) & 0b11;
    TTQ_CHECK(bits != 0b11, "packed ternary codes: invalid code 0b11 at weight " << i);
    codes[i] = bits == 0b01 ? 1 : (bits == 0b10 ? -1 : 0);
  }
}

}  // namespace ttq
