// Strict reading of JSON configs: every key read is marked, finish() refuses the keys nobody read
// (naming the JSON path and the closest valid key), and a value of the wrong type is an error
// naming its path. Values are read with defaults, so a config lists only what it changes.
#pragma once

#include <nlohmann/json.hpp>

#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/error.h"

namespace ttq {

using json = nlohmann::json;

// Documents nested deeper than this are refused: nlohmann's copies, dumps and comparisons recurse,
// so a deeply nested file (a few kilobytes of brackets) would overflow the stack.
constexpr int kJsonMaxDepth = 64;
// The callback for json::parse that refuses nesting deeper than kJsonMaxDepth with an error
// naming `what` (a file, a metadata key).
json::parser_callback_t json_depth_limit(std::string what);
// v as compact JSON for an error message: invalid UTF-8 replaced, cut after about 80 characters.
std::string json_text(const json& v);

// The entry of `options` closest to `s` by edit distance, or "" when none is reasonably close.
std::string closest_match(const std::string& s, const std::vector<std::string>& options);

class JsonReader {
 public:
  // `path` is where this object sits in the file ("" for the top, "model", "optimizer.groups").
  // When `resolved` is given, every value read (given or defaulted) is recorded there under the
  // same key, so the caller ends up with the complete configuration that was used.
  JsonReader(const json& j, std::string path, json* resolved = nullptr);

  bool has(const std::string& key) const;
  std::string path_of(const std::string& key) const;
  // Where this object sits ("" for the top of the file).
  const std::string& path() const { return path_; }
  // Declares key as valid without reading it (for finish()'s suggestions).
  void allow(const std::string& key) { used_.insert(key); }

  template <typename T> T get(const std::string& key, const T& fallback) {
    if (!has(key)) {
      used_.insert(key);
      if (resolved_) (*resolved_)[key] = fallback;
      return fallback;
    }
    return require<T>(key);
  }

  template <typename T> T require(const std::string& key) {
    used_.insert(key);
    TTQ_CHECK(has(key), "config: missing required key '" << path_of(key) << "'");
    const json& v = j_.at(key);
    check_type<T>(v, key);
    try {
      T out = v.get<T>();
      if (resolved_) (*resolved_)[key] = out;
      return out;
    } catch (const json::exception& e) {
      TTQ_FAIL("config: '" << path_of(key) << "': " << e.what());
    }
  }

  // The raw value under key, recorded as is (for values interpreted elsewhere).
  const json& get_raw(const std::string& key);

  // The sub-object under key (must be an object); an absent key gives an empty object.
  JsonReader child(const std::string& key);
  const json& raw() const { return j_; }

  // Throws on any key never read, naming it and suggesting the closest read key.
  void finish() const;

 private:
  template <typename T> void check_type(const json& v, const std::string& key) const {
    bool ok = true;
    const char* want = "";
    if constexpr (std::is_same_v<T, bool>) {
      ok = v.is_boolean();
      want = "a boolean";
    } else if constexpr (std::is_integral_v<T>) {
      ok = v.is_number_integer();
      want = "an integer";
      if (ok) {  // in T's range (nlohmann would wrap 4294967297 to 1 for an int)
        const bool fits = v.is_number_unsigned() ? std::in_range<T>(v.get<uint64_t>()) : std::in_range<T>(v.get<int64_t>());
        TTQ_CHECK(fits, "config: '" << path_of(key) << "' is " << json_text(v) << ", out of range (at most "
                                    << +std::numeric_limits<T>::max() << ")");
      }
    } else if constexpr (std::is_floating_point_v<T>) {
      ok = v.is_number();
      want = "a number";
    } else if constexpr (std::is_same_v<T, std::string>) {
      ok = v.is_string();
      want = "a string";
    } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      ok = v.is_array();
      for (const auto& e : v) ok = ok && e.is_string();
      want = "a list of strings";
    } else if constexpr (std::is_same_v<T, std::vector<double>>) {
      ok = v.is_array();
      for (const auto& e : v) ok = ok && e.is_number();
      want = "a list of numbers";
    }
    TTQ_CHECK(ok, "config: '" << path_of(key) << "' must be " << want << ", got " << json_text(v));
  }

  const json& j_;
  std::string path_;
  std::set<std::string> used_;
  json* resolved_ = nullptr;
};

}  // namespace ttq
