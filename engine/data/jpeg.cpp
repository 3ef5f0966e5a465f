// JPEG decoding and encoding with TurboJPEG (see jpeg.h for the colour conventions).
#include "engine/data/jpeg.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "engine/core/error.h"

#ifdef TTQ_HAVE_TURBOJPEG
#include <turbojpeg.h>
#endif

namespace ttq {

void read_file_bytes(const std::string& path, std::vector<uint8_t>& out) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  TTQ_CHECK(f, "cannot open '" << path << "': " << std::strerror(errno));
  struct stat st {};
  if (::fstat(::fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
    std::fclose(f);
    TTQ_FAIL("cannot read '" << path << "': it is a folder");
  }
  out.clear();
  std::fseek(f, 0, SEEK_END);
  const long size = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  if (size > 0) {
    out.resize(static_cast<size_t>(size));
    errno = 0;
    const size_t got = std::fread(out.data(), 1, out.size(), f);
    const bool failed = got != out.size();
    const int err = errno;
    std::fclose(f);
    TTQ_CHECK(!failed, "cannot read '" << path << "': " << (err ? std::strerror(err) : "short read"));
  } else {
    // Not seekable or empty: read in chunks.
    uint8_t buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.insert(out.end(), buf, buf + n);
    const bool failed = std::ferror(f);
    std::fclose(f);
    TTQ_CHECK(!failed, "cannot read '" << path << "'");
  }
}

JpegImage decode_jpeg(const uint8_t* data, size_t size, const std::string& name, int min_width, int min_height) {
  JpegImage img;
  decode_jpeg(data, size, name, min_width, min_height, img);
  return img;
}

JpegImage decode_jpeg_file(const std::string& path, int min_width, int min_height) {
  std::vector<uint8_t> bytes;
  read_file_bytes(path, bytes);
  return decode_jpeg(bytes.data(), bytes.size(), path, min_width, min_height);
}

#ifdef TTQ_HAVE_TURBOJPEG

namespace {

// Decoded images larger than this many pixels are refused (a corrupt header, or a file no
// training pipeline should decode at full size).
constexpr int64_t kMaxPixels = int64_t(1) << 26;  // 67 M pixels, 201 MB of RGB

// One TurboJPEG instance per thread and kind (instances are not thread-safe).
struct TjHandle {
  tjhandle h = nullptr;
  ~TjHandle() {
    if (h) tjDestroy(h);
  }
};

TjHandle& thread_decompressor() {
  thread_local TjHandle t;
  return t;
}

tjhandle decompressor() {
  TjHandle& t = thread_decompressor();
  if (!t.h) {
    t.h = tjInitDecompress();
    TTQ_CHECK(t.h, "TurboJPEG: cannot create a decompressor: " << tjGetErrorStr2(nullptr));
  }
  return t.h;
}

// After a file fails, the thread's instance is replaced: libjpeg leaves it in a state where the
// next file fails too ("Unsupported marker type" for every later, valid image).
template <class F> auto with_fresh_decompressor_on_error(F&& f) {
  try {
    return f();
  } catch (...) {
    TjHandle& t = thread_decompressor();
    if (t.h) tjDestroy(t.h);
    t.h = nullptr;
    throw;
  }
}

// The library's scaling factors in its own order (largest first), as tjDecompress2 walks them.
const std::vector<JpegScale>& library_scales() {
  static const std::vector<JpegScale> scales = [] {
    int n = 0;
    const tjscalingfactor* f = tjGetScalingFactors(&n);
    std::vector<JpegScale> v;
    for (int i = 0; f && i < n; ++i) v.push_back({f[i].num, f[i].denom});
    std::stable_sort(v.begin(), v.end(), [](const JpegScale& a, const JpegScale& b) {
      return int64_t(a.num) * b.denom > int64_t(b.num) * a.denom;
    });
    return v;
  }();
  return scales;
}

bool contains_ci(const std::string& s, const std::string& what) {
  auto it = std::search(s.begin(), s.end(), what.begin(), what.end(),
                        [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; });
  return it != s.end();
}

// What a file that is not a JPEG holds, when its first bytes say so ("" otherwise).
std::string other_format(const uint8_t* d, size_t n) {
  auto starts = [&](const char* sig, size_t len) { return n >= len && std::memcmp(d, sig, len) == 0; };
  if (starts("\x89PNG\r\n\x1a\n", 8)) return "PNG";
  if (starts("GIF87a", 6) || starts("GIF89a", 6)) return "GIF";
  if (starts("BM", 2)) return "BMP";
  if (starts("RIFF", 4) && n >= 12 && std::memcmp(d + 8, "WEBP", 4) == 0) return "WebP";
  return "";
}

// A decode that warned: the entropy-coded data of the last scan must end with the end-of-image
// marker (FF D9). Entropy-coded bytes never hold FF D9 (an FF there is stuffed as FF 00), so its
// absence after the last start-of-scan (FF DA) means the file was cut short. libjpeg passes on
// only the first warning of an image, so an earlier harmless one (stray bytes before a marker)
// would hide "premature end of JPEG file" from the message.
bool ends_with_eoi(const uint8_t* d, size_t n) {
  size_t sos = n;
  for (size_t i = n; i-- > 1;)
    if (d[i - 1] == 0xFF && d[i] == 0xDA) {
      sos = i + 1;
      break;
    }
  if (sos == n) return false;
  for (size_t i = sos; i + 1 < n; ++i)
    if (d[i] == 0xFF && d[i + 1] == 0xD9) return true;
  return false;
}

JpegHeader header_of(tjhandle h, const uint8_t* data, size_t size, const std::string& name, int* colorspace) {
  TTQ_CHECK(data && size > 0, "'" << name << "' is empty, not a JPEG file");
  if (const std::string other = other_format(data, size); !other.empty())
    TTQ_FAIL("'" << name << "' holds a " << other << " image, not a JPEG; convert it to JPEG (ImageNet's "
                 "train/n02105855/n02105855_2933.JPEG is such a file)");
  JpegHeader hd;
  int subsamp = 0, cs = 0;
  if (tjDecompressHeader3(h, data, static_cast<unsigned long>(size), &hd.width, &hd.height, &subsamp, &cs) != 0) {
    // TurboJPEG 2.1 also fails the header call for files that decode fine: on a libjpeg warning
    // (e.g. extraneous bytes before a marker) and on chroma subsampling it has no name for. Those
    // keep the size and colour space it read; anything else is an error.
    const std::string msg = tjGetErrorStr2(h);
    const bool usable = hd.width > 0 && hd.height > 0 && cs >= 0 && cs < TJ_NUMCS &&
                        (tjGetErrorCode(h) == TJERR_WARNING || contains_ci(msg, "could not determine subsampling"));
    TTQ_CHECK(usable, "'" << name << "' is not a readable JPEG file: " << msg);
  }
  TTQ_CHECK(hd.width > 0 && hd.height > 0,
            "'" << name << "' is not a readable JPEG file (size " << hd.width << "x" << hd.height << ")");
  hd.color = cs == TJCS_GRAY ? JpegColor::gray : (cs == TJCS_CMYK || cs == TJCS_YCCK) ? JpegColor::cmyk : JpegColor::rgb;
  if (colorspace) *colorspace = cs;
  return hd;
}

// Pillow's MULDIV255: a*b/255 rounded, for a, b in 0..255.
inline int muldiv255(int a, int b) {
  const int t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}

}  // namespace

bool jpeg_supported() { return true; }

JpegHeader read_jpeg_header(const uint8_t* data, size_t size, const std::string& name) {
  return with_fresh_decompressor_on_error([&] { return header_of(decompressor(), data, size, name, nullptr); });
}

JpegScale choose_jpeg_scale(int width, int height, int min_width, int min_height) {
  JpegScale best;  // 1/1
  if (min_width <= 0 && min_height <= 0) return best;
  for (const JpegScale& s : library_scales()) {
    // Only 1/2, 1/4 and 1/8: libjpeg-turbo 2.1 has SIMD (or trivial) reduced IDCTs for those,
    // while 7/8, 3/4, 5/8 and 3/8 decode slower than full size (measured: benchmarks/README.md).
    if (s.num != 1 || (s.denom != 2 && s.denom != 4 && s.denom != 8)) continue;
    const bool ok = int64_t(width) * s.num >= int64_t(min_width) * s.denom &&
                    int64_t(height) * s.num >= int64_t(min_height) * s.denom;
    if (ok && int64_t(s.num) * best.denom < int64_t(best.num) * s.denom) best = s;
  }
  return best;
}

namespace {
void decode_with_thread_decompressor(const uint8_t* data, size_t size, const std::string& name, int min_width,
                                     int min_height, JpegImage& out) {
  tjhandle h = decompressor();
  int cs = 0;
  const JpegHeader hd = header_of(h, data, size, name, &cs);
  const JpegScale want = choose_jpeg_scale(hd.width, hd.height, min_width, min_height);
  const int w = want.scaled(hd.width), ht = want.scaled(hd.height);
  // tjDecompress2 takes the largest factor whose output fits w x h; with several factors giving
  // the same size (tiny images) that may not be `want`, so record the factor it will use.
  JpegScale used = want;
  for (const JpegScale& s : library_scales())
    if (s.scaled(hd.width) <= w && s.scaled(hd.height) <= ht) {
      used = s;
      break;
    }
  TTQ_CHECK(int64_t(w) * ht <= kMaxPixels,
            "'" << name << "': JPEG of " << hd.width << "x" << hd.height << " is too large to decode");
  out.full_width = hd.width;
  out.full_height = hd.height;
  out.width = w;
  out.height = ht;
  out.scale = used;
  const size_t pixels = static_cast<size_t>(w) * ht;
  int format = TJPF_RGB, channels = 3;
  if (hd.color == JpegColor::gray) {
    format = TJPF_GRAY;
    channels = 1;
  } else if (hd.color == JpegColor::cmyk) {
    format = TJPF_CMYK;
    channels = 4;
  }
  // Room for RGB too, so gray and CMYK expand or shrink in place without reallocating.
  out.rgb.resize(pixels * std::max(channels, 3));
  const int rc = tjDecompress2(h, data, static_cast<unsigned long>(size), out.rgb.data(), w, w * channels, ht, format, 0);
  if (rc != 0) {
    const std::string msg = tjGetErrorStr2(h);
    // Warnings leave a complete image, except when data is missing (a truncated file).
    // ("Premature end of data segment" is a stray marker inside a complete file: decodable.)
    const bool fatal = tjGetErrorCode(h) != TJERR_WARNING || contains_ci(msg, "premature end of jpeg file");
    TTQ_CHECK(!fatal, "'" << name << "': corrupt JPEG: " << msg);
    TTQ_CHECK(ends_with_eoi(data, size),
              "'" << name << "': corrupt JPEG: the image data ends without an end-of-image marker (a truncated "
                             "file; the decoder's first warning was: " << msg << ")");
  }
  uint8_t* p = out.rgb.data();
  if (channels == 1) {
    // Replicate gray to RGB in place, from the end backwards.
    for (size_t i = pixels; i-- > 0;) {
      const uint8_t v = p[i];
      p[3 * i] = p[3 * i + 1] = p[3 * i + 2] = v;
    }
  } else if (channels == 4) {
    // Adobe (inverted) CMYK to RGB in place, front to back (3i + 2 < 4i + 4 never overtakes reads).
    for (size_t i = 0; i < pixels; ++i) {
      const int c = p[4 * i], m = p[4 * i + 1], y = p[4 * i + 2], k = p[4 * i + 3];
      p[3 * i] = static_cast<uint8_t>(k - muldiv255(255 - c, k));
      p[3 * i + 1] = static_cast<uint8_t>(k - muldiv255(255 - m, k));
      p[3 * i + 2] = static_cast<uint8_t>(k - muldiv255(255 - y, k));
    }
    out.rgb.resize(pixels * 3);
  }
}
}  // namespace

void decode_jpeg(const uint8_t* data, size_t size, const std::string& name, int min_width, int min_height,
                 JpegImage& out) {
  with_fresh_decompressor_on_error([&] { decode_with_thread_decompressor(data, size, name, min_width, min_height, out); });
}

std::vector<uint8_t> encode_jpeg(const uint8_t* pixels, int width, int height, JpegColor color, int quality,
                                 bool progressive, bool subsample) {
  TTQ_CHECK(width > 0 && height > 0 && quality >= 1 && quality <= 100,
            "encode_jpeg: bad size " << width << "x" << height << " or quality " << quality);
  // A fresh instance per call: TurboJPEG 2.1 carries the progressive scan script of one
  // compression into the next on the same instance (the next baseline file then decodes wrongly).
  TjHandle handle;
  handle.h = tjInitCompress();
  TTQ_CHECK(handle.h, "TurboJPEG: cannot create a compressor: " << tjGetErrorStr2(nullptr));
  tjhandle h = handle.h;
  const int channels = color == JpegColor::gray ? 1 : color == JpegColor::cmyk ? 4 : 3;
  const int format = color == JpegColor::gray ? TJPF_GRAY : color == JpegColor::cmyk ? TJPF_CMYK : TJPF_RGB;
  const int samp = color == JpegColor::gray ? TJSAMP_GRAY : subsample ? TJSAMP_420 : TJSAMP_444;
  unsigned char* buf = nullptr;
  unsigned long len = 0;
  const int flags = progressive ? TJFLAG_PROGRESSIVE : 0;
  if (tjCompress2(h, pixels, width, width * channels, height, format, &buf, &len, samp, quality, flags) != 0) {
    const std::string msg = tjGetErrorStr2(h);
    tjFree(buf);
    TTQ_FAIL("TurboJPEG: cannot encode a " << width << "x" << height << " image: " << msg);
  }
  std::vector<uint8_t> out(buf, buf + len);
  tjFree(buf);
  return out;
}

#else  // no TurboJPEG

namespace {
[[noreturn]] void no_turbojpeg(const std::string& what) {
  TTQ_FAIL(what << ": this build has no JPEG support (TurboJPEG was not found when it was configured; install "
                   "libturbojpeg0-dev, or point TURBOJPEG_ROOT at it, and reconfigure with TTQ_WITH_TURBOJPEG=ON)");
}
}  // namespace

bool jpeg_supported() { return false; }

JpegHeader read_jpeg_header(const uint8_t*, size_t, const std::string& name) { no_turbojpeg("'" + name + "'"); }

JpegScale choose_jpeg_scale(int, int, int, int) { return JpegScale{}; }

void decode_jpeg(const uint8_t*, size_t, const std::string& name, int, int, JpegImage&) {
  no_turbojpeg("'" + name + "'");
}

std::vector<uint8_t> encode_jpeg(const uint8_t*, int, int, JpegColor, int, bool, bool) { no_turbojpeg("encode_jpeg"); }

#endif

}  // namespace ttq
