// Command-line options: "--name value" / "--name=value" / "--flag", declared up front so
// unknown options and missing values are errors, and --help text is generated.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace ttq::cli {

class Args {
 public:
  // command: what --help's usage line shows after program ("train CONFIG.json"). Errors name
  // neither: the caller's error line names the command.
  Args(std::string command, std::string summary, std::string program = "ttq")
      : command_(std::move(command)), summary_(std::move(summary)), program_(std::move(program)) {}
  Args& option(const std::string& name, const std::string& fallback, const std::string& help);
  Args& flag(const std::string& name, const std::string& help);
  // Throws ttq::Error on unknown options or missing values.
  void parse(const std::vector<std::string>& argv);
  const std::string& get(const std::string& name) const;
  int get_int(const std::string& name) const;
  double get_double(const std::string& name) const;
  bool is_set(const std::string& name) const;
  bool help_requested() const { return help_; }
  std::string help() const;

 private:
  struct Opt {
    std::string value, help;
    bool is_flag = false, set = false;
  };
  std::string command_, summary_, program_;
  std::map<std::string, Opt> opts_;
  std::vector<std::string> order_;
  bool help_ = false;
};

}  // namespace ttq::cli
