#include "engine/cli/args.h"

#include <sstream>

#include "engine/config/json_reader.h"
#include "engine/core/error.h"

namespace ttq::cli {

Args& Args::option(const std::string& name, const std::string& fallback, const std::string& help) {
  opts_[name] = {fallback, help, false, false};
  order_.push_back(name);
  return *this;
}

Args& Args::flag(const std::string& name, const std::string& help) {
  opts_[name] = {"", help, true, false};
  order_.push_back(name);
  return *this;
}

void Args::parse(const std::vector<std::string>& argv) {
  for (size_t i = 0; i < argv.size(); ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      help_ = true;
      continue;
    }
    TTQ_CHECK(a.rfind("--", 0) == 0, "unexpected argument '" << a << "' (see --help)");
    a = a.substr(2);
    std::string value;
    bool has_value = false;
    if (auto eq = a.find('='); eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_value = true;
    }
    auto it = opts_.find(a);
    if (it == opts_.end()) {
      const std::string hint = closest_match(a, order_);
      TTQ_FAIL("unknown option --" << a
               << (hint.empty() ? std::string(" (see --help)") : " (did you mean --" + hint + "?)"));
    }
    if (it->second.is_flag) {
      TTQ_CHECK(!has_value, "--" << a << " takes no value");
    } else if (!has_value) {
      TTQ_CHECK(i + 1 < argv.size(), "--" << a << " needs a value");
      value = argv[++i];
    }
    it->second.value = value;
    it->second.set = true;
  }
}

const std::string& Args::get(const std::string& name) const { return opts_.at(name).value; }

int Args::get_int(const std::string& name) const {
  const std::string& v = get(name);
  size_t pos = 0;
  int out = 0;
  try {
    out = std::stoi(v, &pos);
  } catch (...) {
    pos = 0;
  }
  TTQ_CHECK(pos == v.size() && !v.empty(), "--" << name << " expects an integer, got '" << v << "'");
  return out;
}

double Args::get_double(const std::string& name) const {
  const std::string& v = get(name);
  size_t pos = 0;
  double out = 0;
  try {
    out = std::stod(v, &pos);
  } catch (...) {
    pos = 0;
  }
  TTQ_CHECK(pos == v.size() && !v.empty(), "--" << name << " expects a number, got '" << v << "'");
  return out;
}

bool Args::is_set(const std::string& name) const { return opts_.at(name).set; }

std::string Args::help() const {
  std::ostringstream os;
  os << "usage: " << (program_.empty() ? "" : program_ + " ") << command_ << " [options]\n\n" << summary_ << "\n\noptions:\n";
  for (const auto& n : order_) {
    const Opt& o = opts_.at(n);
    os << "  --" << n << (o.is_flag ? "" : " VALUE");
    os << "\n      " << o.help;
    if (!o.is_flag && !o.value.empty()) os << " (default: " << o.value << ")";
    os << "\n";
  }
  os << "  --help\n      show this text\n";
  return os.str();
}

}  // namespace ttq::cli
