#include "engine/core/error.h"

namespace ttq::detail {

void throw_error(const char* file, int line, const std::string& msg) {
  // A message that wraps another error's text keeps that error's place, the one that says where it
  // went wrong; a second place would only say who added the context.
  for (const char* top : {"[engine/", "[kernels/", "[models/", "[tests/", "[benchmarks/"})
    if (msg.find(top) != std::string::npos) throw Error(msg);
  std::string f(file);
  // Keep paths short and stable: report from the project's top-level folder on.
  for (const char* top : {"/engine/", "/kernels/", "/models/", "/tests/", "/benchmarks/"}) {
    auto pos = f.rfind(top);
    if (pos != std::string::npos) {
      f = f.substr(pos + 1);
      break;
    }
  }
  throw Error(msg + " [" + f + ":" + std::to_string(line) + "]");
}

}  // namespace ttq::detail
