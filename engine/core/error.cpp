#include "engine/core/error.h"

namespace ttq::detail {

void throw_error(const char* file, int line, const std::string& msg) {
  // Places are reported from the project's top-level folder on, short and stable.
  const std::string tops[] = {"engine/", "kernels/", "models/", "tests/", "benchmarks/"};
  // A message that wraps another error's text keeps that error's place, the one that says where it
  // went wrong; a second place would only say who added the context.
  for (const auto& top : tops)
    if (msg.find("[" + top) != std::string::npos) throw Error(msg);
  std::string f(file);
  for (const auto& top : tops) {
    auto pos = f.rfind("/" + top);
    if (pos != std::string::npos) {
      f = f.substr(pos + 1);
      break;
    }
  }
  throw Error(msg + " [" + f + ":" + std::to_string(line) + "]");
}

}  // namespace ttq::detail
