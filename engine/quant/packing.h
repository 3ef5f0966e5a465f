// 2-bit packing of ternary codes for the deployable model: four codes per byte, weight i in bits
// 2*(i%4)..2*(i%4)+1 of byte i/4; 0b00 = 0, 0b01 = +1 (Wp), 0b10 = -1 (-Wn). 0b11 is invalid.
#pragma once

#include <cstdint>
#include <vector>

namespace ttq {

std::vector<uint8_t> pack_ternary_codes(const int8_t* codes, int64_t n);
// Throws on an invalid 0b11 code or a buffer of the wrong size.
void unpack_ternary_codes(const uint8_t* packed, int64_t packed_bytes, int64_t n, int8_t* codes);

}  // namespace ttq
