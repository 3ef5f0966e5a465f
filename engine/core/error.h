// Errors: every failure in the library is a ttq::Error that says what went wrong and where.
// The library throws; only the command-line program decides how to exit.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace ttq {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace ttq

// TTQ_CHECK(cond, "layer " << name << " expects ...") throws ttq::Error with file and line.
#define TTQ_CHECK(cond, msg)                                                   \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::ostringstream ttq_check_os_;                                        \
      ttq_check_os_ << msg;                                                    \
      ::ttq::detail::throw_error(__FILE__, __LINE__, ttq_check_os_.str());     \
    }                                                                          \
  } while (0)

#define TTQ_FAIL(msg) TTQ_CHECK(false, msg)
