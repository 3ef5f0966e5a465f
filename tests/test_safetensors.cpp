// safetensors: round trip, the exact byte layout, and refusals of damaged files.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>

#include "engine/io/safetensors.h"
#include "tests/test_util.h"

using namespace ttq;
namespace fs = std::filesystem;

using ttq::testing::error_of;
using ttq::testing::read_bytes;
using ttq::testing::write_bytes;

namespace {
ttq::testing::TempDir g_dir;
std::string temp_path(const std::string& name) { return g_dir.file(name); }
std::string read_all(const std::string& p) { return read_bytes(p); }
void write_all(const std::string& p, const std::string& s) { write_bytes(p, s); }
}  // namespace

TEST(SafeTensors, RoundTrip) {
  const std::string p = temp_path("round.safetensors");
  Tensor a = ttq::testing::random_tensor({3, 4}, 1);
  Tensor codes = Tensor::zeros({5}, DType::U8);
  codes.data<uint8_t>()[2] = 0xA5;
  SafeTensorsWriter w;
  w.add("layer.weight", a);
  w.add("layer.codes", codes);
  w.add_metadata("format", "test");
  w.write(p);
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  auto f = SafeTensorsFile::read(p);
  EXPECT_EQ(f.names().size(), 2u);
  EXPECT_TRUE(ttq::testing::all_close(f.tensor("layer.weight"), a, 0, 0));
  EXPECT_EQ(f.tensor("layer.codes").data<uint8_t>()[2], 0xA5);
  EXPECT_EQ(f.dtype("layer.codes"), DType::U8);
  EXPECT_EQ(f.meta("format"), "test");
  EXPECT_NE(error_of([&] { f.tensor("nope"); }).find("has no tensor 'nope'"), std::string::npos);
}

TEST(SafeTensors, ByteLayoutIsTheStandardOne) {
  const std::string p = temp_path("layout.safetensors");
  SafeTensorsWriter w;
  w.add("x", Tensor::from_vector({2}, {1.0f, -2.0f}));
  w.write(p);
  const std::string bytes = read_all(p);
  uint64_t len = 0;
  for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ((8 + len) % 8, 0u);
  const std::string header = bytes.substr(8, len);
  EXPECT_NE(header.find(R"("x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), std::string::npos) << header;
  ASSERT_EQ(bytes.size(), 8 + len + 8);
  float v[2];
  std::memcpy(v, bytes.data() + 8 + len, 8);
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], -2.0f);
}

TEST(SafeTensors, DamagedFilesAreRefusedWithTheFileName) {
  const std::string good = temp_path("good.safetensors");
  SafeTensorsWriter w;
  w.add("x", ttq::testing::random_tensor({64}, 2));
  w.write(good);
  const std::string bytes = read_all(good);

  const std::string truncated = temp_path("truncated.safetensors");
  write_all(truncated, bytes.substr(0, bytes.size() - 10));
  const std::string e1 = error_of([&] { SafeTensorsFile::read(truncated); });
  EXPECT_NE(e1.find("truncated.safetensors"), std::string::npos) << e1;
  EXPECT_NE(e1.find("outside"), std::string::npos) << e1;

  const std::string tiny = temp_path("tiny.safetensors");
  write_all(tiny, "abc");
  EXPECT_NE(error_of([&] { SafeTensorsFile::read(tiny); }).find("truncated"), std::string::npos);

  const std::string huge_len = temp_path("hugelen.safetensors");
  std::string b2 = bytes;
  b2[7] = 0x7f;
  write_all(huge_len, b2);
  EXPECT_NE(error_of([&] { SafeTensorsFile::read(huge_len); }).find("exceeds the file size"), std::string::npos);

  const std::string garbage = temp_path("garbage.safetensors");
  std::string b3 = bytes;
  b3[8] = '#';
  write_all(garbage, b3);
  EXPECT_NE(error_of([&] { SafeTensorsFile::read(garbage); }).find("not valid JSON"), std::string::npos);

  EXPECT_NE(error_of([&] { SafeTensorsFile::read(temp_path("missing.safetensors")); }).find("cannot open"),
            std::string::npos);

  // A header nested deeper than any real one (its copies and dumps would recurse off the stack).
  const std::string deep = temp_path("deep.safetensors");
  std::string header = "{\"x\":{\"dtype\":" + std::string(5000, '[') + std::string(5000, ']') + "}}";
  std::string b4;
  for (int i = 0; i < 8; ++i) b4.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  write_all(deep, b4 + header);
  const std::string e4 = error_of([&] { SafeTensorsFile::read(deep); });
  EXPECT_NE(e4.find("deep.safetensors': header: JSON nested deeper than 64 levels"), std::string::npos) << e4;

  const std::string folder = temp_path("folder.safetensors");
  fs::create_directories(folder);
  const std::string e5 = error_of([&] { SafeTensorsFile::read(folder); });
  EXPECT_NE(e5.find("is a folder, not a safetensors file"), std::string::npos) << e5;
}

// A header whose shape multiplies past 2^63 (here to 0 modulo 2^64, matching empty offsets) is
// refused before the product could overflow.
TEST(SafeTensors, ShapesTooLargeForAnyFileAreRefused) {
  for (const char* shape : {"[4611686018427387904,4]", "[18446744073709551615]", "[4294967296,4294967296]"}) {
    SCOPED_TRACE(shape);
    const std::string header = std::string("{\"x\":{\"dtype\":\"F32\",\"shape\":") + shape +
                               ",\"data_offsets\":[0,0]}}";
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    const std::string p = temp_path("bigshape.safetensors");
    write_all(p, bytes + header);
    const std::string e = error_of([&] { SafeTensorsFile::read(p); });
    EXPECT_NE(e.find("bigshape.safetensors"), std::string::npos) << e;
    EXPECT_TRUE(e.find("bad dimension") != std::string::npos || e.find("more elements") != std::string::npos) << e;
  }
}

TEST(SafeTensors, FailedWriteLeavesThePreviousFileIntact) {
  const std::string p = temp_path("keep.safetensors");
  SafeTensorsWriter w;
  w.add("x", Tensor::from_vector({1}, {3.0f}));
  w.write(p);
  // A write into a folder that does not exist fails before touching anything.
  EXPECT_THROW(w.write(temp_path("no_such_dir/x.safetensors")), Error);
  EXPECT_EQ(SafeTensorsFile::read(p).tensor("x").data<float>()[0], 3.0f);
}
