#include <algorithm>
#include <sstream>

#include "engine/core/error.h"
#include "kernels/op_shapes.h"

namespace ttq {

void Conv2dShape::validate(const std::string& who) const {
  TTQ_CHECK(n > 0 && c_in > 0 && h > 0 && w > 0 && c_out > 0 && kh > 0 && kw > 0,
            who << ": non-positive size in conv " << str());
  TTQ_CHECK(stride_h > 0 && stride_w > 0, who << ": stride must be positive in conv " << str());
  TTQ_CHECK(pad_t >= 0 && pad_l >= 0 && pad_b >= 0 && pad_r >= 0,
            who << ": negative padding in conv " << str());
  TTQ_CHECK(groups > 0 && c_in % groups == 0 && c_out % groups == 0,
            who << ": groups=" << groups << " must divide in_channels=" << c_in
                << " and out_channels=" << c_out);
  TTQ_CHECK(h + pad_t + pad_b >= kh && w + pad_l + pad_r >= kw,
            who << ": kernel " << kh << "x" << kw << " larger than padded input " << h << "x" << w);
}

std::string Conv2dShape::str() const {
  std::ostringstream os;
  os << "{in " << n << "x" << c_in << "x" << h << "x" << w << ", out_channels " << c_out
     << ", kernel " << kh << "x" << kw << ", stride " << stride_h << "x" << stride_w << ", pad "
     << pad_t << "," << pad_l << "," << pad_b << "," << pad_r << ", groups " << groups
     << (channels_last ? ", channels_last" : "") << "}";
  return os.str();
}

void Pool2dShape::validate(const std::string& who) const {
  TTQ_CHECK(n > 0 && c > 0 && h > 0 && w > 0 && kh > 0 && kw > 0 && stride_h > 0 && stride_w > 0,
            who << ": non-positive size in pool " << str());
  TTQ_CHECK(pad_t >= 0 && pad_l >= 0 && pad_b >= 0 && pad_r >= 0,
            who << ": negative padding in pool " << str());
  TTQ_CHECK(pad_t < kh && pad_b < kh && pad_l < kw && pad_r < kw,
            who << ": padding must be smaller than the window in pool " << str());
  TTQ_CHECK(h + pad_t + pad_b >= kh && w + pad_l + pad_r >= kw,
            who << ": window " << kh << "x" << kw << " larger than padded input " << h << "x" << w);
}

std::string Pool2dShape::str() const {
  std::ostringstream os;
  os << "{in " << n << "x" << c << "x" << h << "x" << w << ", kernel " << kh << "x" << kw
     << ", stride " << stride_h << "x" << stride_w << ", pad " << pad_t << "," << pad_l << ","
     << pad_b << "," << pad_r << "}";
  return os.str();
}

PadPair same_padding(int64_t in, int64_t kernel, int64_t stride) {
  int64_t out = (in + stride - 1) / stride;
  int64_t total = std::max<int64_t>((out - 1) * stride + kernel - in, 0);
  return {total / 2, total - total / 2};
}

}  // namespace ttq
