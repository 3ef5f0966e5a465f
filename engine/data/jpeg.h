// JPEG decoding with TurboJPEG into 8-bit RGB (height x width x 3, row-major), optionally at a
// reduced DCT scale (1/2, 1/4 or 1/8) when the caller needs fewer pixels; plus the encoder the tests
// and benchmarks use to make their own JPEG files. Every failure is a ttq::Error naming the file.
//
// Colour handling:
// - YCbCr / RGB files decode to RGB.
// - Grayscale files decode to one channel, replicated to R = G = B.
// - CMYK and YCCK files decode to CMYK, then convert to RGB the way Pillow does: the stored
//   values are taken to follow the Adobe convention (inverted: 255 means no ink, as written by
//   Photoshop, the source of nearly all CMYK JPEGs, ImageNet's included), and
//   R = k - k*(255 - c)/255 (and likewise for G from m, B from y) with c, m, y, k the stored
//   bytes and the division rounded as Pillow's MULDIV255. libjpeg passes CMYK through
//   unchanged; Pillow opens every CMYK JPEG as inverted ("CMYK;I") whether or not the Adobe
//   marker is present, and so does this decoder.
// - Progressive files decode like baseline ones.
// - A libjpeg warning that data is missing ("premature end of ...": a truncated file) is an
//   error, as Pillow refuses truncated files; other warnings (such as extraneous bytes before a
//   marker) keep the decoded image, as Pillow does.
// EXIF orientation is ignored (torchvision's ImageFolder ignores it too).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ttq {

// True when the build has TurboJPEG; without it every function below throws a ttq::Error that
// says so.
bool jpeg_supported();

enum class JpegColor { rgb, gray, cmyk };  // what the file stores (YCbCr counts as rgb, YCCK as cmyk)

struct JpegHeader {
  int width = 0, height = 0;
  JpegColor color = JpegColor::rgb;
};

// A DCT scaling factor num/denom (1/1 for full size).
struct JpegScale {
  int num = 1, denom = 1;
  // The scaled size of a dimension, rounded up as libjpeg does.
  int scaled(int dim) const { return static_cast<int>((static_cast<int64_t>(dim) * num + denom - 1) / denom); }
  double value() const { return static_cast<double>(num) / denom; }
};

struct JpegImage {
  int width = 0, height = 0;            // decoded size
  int full_width = 0, full_height = 0;  // size stored in the file
  JpegScale scale;                      // the DCT scaling factor used
  std::vector<uint8_t> rgb;             // height x width x 3
};

// Reads the header (size, colour space) of a JPEG in memory. `name` names the file in errors.
JpegHeader read_jpeg_header(const uint8_t* data, size_t size, const std::string& name);

// The smallest DCT scaling factor s among 1/8, 1/4 and 1/2 (of those tjGetScalingFactors
// offers) with width*s >= min_width and height*s >= min_height (exactly, before rounding up); 1/1
// when none qualifies, and when both minimums are <= 0 (no reduction asked for). A 2000x1500
// image with a minimum of 256x256 gives 1/4 (500x375; 1/8 would give 250x187.5). The other
// factors TurboJPEG offers (7/8, 3/4, 5/8, 3/8) are not used: libjpeg-turbo 2.1 has no SIMD
// code for their IDCT sizes, and they decode slower than full size.
JpegScale choose_jpeg_scale(int width, int height, int min_width, int min_height);

// Decodes a JPEG in memory to RGB at the scale choose_jpeg_scale picks for the minimum size
// (0, 0: full size). `out` is reused (its buffer keeps its capacity across calls).
void decode_jpeg(const uint8_t* data, size_t size, const std::string& name, int min_width, int min_height,
                 JpegImage& out);
JpegImage decode_jpeg(const uint8_t* data, size_t size, const std::string& name, int min_width = 0,
                      int min_height = 0);

// Reads a whole file into `out` (reusing its buffer), naming the file on failure.
void read_file_bytes(const std::string& path, std::vector<uint8_t>& out);
JpegImage decode_jpeg_file(const std::string& path, int min_width = 0, int min_height = 0);

// Encodes pixels (height x width x channels: 3 for rgb, 1 for gray, 4 for cmyk, stored as given)
// at the given quality (1..100) with 4:2:0 chroma subsampling (4:4:4 when subsample is false),
// optionally progressive.
std::vector<uint8_t> encode_jpeg(const uint8_t* pixels, int width, int height, JpegColor color, int quality,
                                 bool progressive = false, bool subsample = true);

}  // namespace ttq
