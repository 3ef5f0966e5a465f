#include "engine/config/json_reader.h"

#include <algorithm>

namespace ttq {

namespace {
// Edits (insert, delete, replace, or swap two neighbouring letters: "widht") from a to b.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> before(b.size() + 1), prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) cur[j] = std::min(cur[j], before[j - 2] + 1);
    }
    std::swap(before, prev);
    std::swap(prev, cur);
  }
  return prev[b.size()];
}
}  // namespace

json::parser_callback_t json_depth_limit(std::string what) {
  return [what = std::move(what)](int depth, json::parse_event_t, json&) {
    TTQ_CHECK(depth <= kJsonMaxDepth, what << ": JSON nested deeper than " << kJsonMaxDepth << " levels");
    return true;
  };
}

std::string json_text(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

std::string closest_match(const std::string& s, const std::vector<std::string>& options) {
  std::string best;
  size_t best_d = std::string::npos;
  for (const auto& o : options) {
    const size_t d = edit_distance(s, o);
    if (d < best_d) {
      best_d = d;
      best = o;
    }
  }
  // Suggest only plausible typos: at most a third of the longer name, and at least one letter kept.
  const size_t limit = std::max<size_t>(1, std::max(s.size(), best.size()) / 3);
  return best_d <= limit ? best : std::string();
}

JsonReader::JsonReader(const json& j, std::string path, json* resolved)
    : j_(j), path_(std::move(path)), resolved_(resolved) {
  TTQ_CHECK(j_.is_object(), "config: '" << (path_.empty() ? std::string("<top>") : path_)
                                        << "' must be an object, got " << json_text(j_));
  if (resolved_ && !resolved_->is_object()) *resolved_ = json::object();
}

const json& JsonReader::get_raw(const std::string& key) {
  used_.insert(key);
  TTQ_CHECK(has(key), "config: missing required key '" << path_of(key) << "'");
  if (resolved_) (*resolved_)[key] = j_.at(key);
  return j_.at(key);
}

bool JsonReader::has(const std::string& key) const { return j_.contains(key); }

std::string JsonReader::path_of(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

JsonReader JsonReader::child(const std::string& key) {
  used_.insert(key);
  static const json empty = json::object();
  json* sub = resolved_ ? &(*resolved_)[key] : nullptr;
  if (!has(key)) return JsonReader(empty, path_of(key), sub);
  return JsonReader(j_.at(key), path_of(key), sub);
}

void JsonReader::finish() const {
  const std::vector<std::string> known(used_.begin(), used_.end());
  for (auto it = j_.begin(); it != j_.end(); ++it) {
    if (used_.count(it.key())) continue;
    const std::string hint = closest_match(it.key(), known);
    TTQ_FAIL("config: unknown key '" << path_of(it.key()) << "'"
                                     << (hint.empty() ? std::string() : " (did you mean '" + path_of(hint) + "'?)"));
  }
}

}  // namespace ttq
