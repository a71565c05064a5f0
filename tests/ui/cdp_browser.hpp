// A headless Chromium driven through the DevTools protocol (CDP) over
// --remote-debugging-pipe: commands go to the browser's fd 3, answers and
// events come back on its fd 4, each a JSON message ended by a NUL byte.
// The browser runs in its own process group with a fresh profile; it dies
// with the test (PR_SET_PDEATHSIG) and is killed, with every process it
// started, when the object goes.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <sys/types.h>
#include <vector>

namespace kvmid::test {

// A command the browser answered with an error, or a broken pipe.
struct cdp_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class cdp_browser {
public:
  using json = nlohmann::json;
  using ms = std::chrono::milliseconds;

  // Starts `exe` headless with its profile in `profile_dir` (which must
  // exist and be empty) and its output appended to `log_file`.
  cdp_browser(const std::string& exe, const std::string& profile_dir, const std::string& log_file,
              std::vector<std::string> extra_args = {});
  ~cdp_browser();
  cdp_browser(const cdp_browser&) = delete;
  cdp_browser& operator=(const cdp_browser&) = delete;

  // Sends a command (to a page when `session` is set) and returns its
  // result; events read meanwhile are queued or handed to their handler.
  json call(const std::string& method, json params = json::object(),
            const std::string& session = {}, ms timeout = ms(30000));

  // Events of this method go to `f` as they arrive.
  void on(const std::string& method, std::function<void(const json& params)> f);
  // Events of this method wait in a queue for wait_event(); others without
  // a handler are dropped as they arrive.
  void keep(const std::string& method) { kept_.insert(method); }
  // The params of the next queued event of this method, waiting up to
  // `timeout`; nullopt if none came.
  std::optional<json> wait_event(const std::string& method, ms timeout);
  // Reads what the browser has sent so far without waiting.
  void pump();

  // Browser.close, then the whole process group is killed.
  void close();

private:
  void send(const json& msg);
  std::optional<json> read_message(std::chrono::steady_clock::time_point until);
  void dispatch(json msg);

  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  std::string in_;
  int next_id_ = 1;
  std::map<int, json> answers_;
  std::deque<json> events_;
  std::map<std::string, std::function<void(const json&)>> handlers_;
  std::set<std::string> kept_;
};

} // namespace kvmid::test
