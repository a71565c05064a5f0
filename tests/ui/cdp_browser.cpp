#include "tests/ui/cdp_browser.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char** environ;

namespace kvmid::test {

namespace {

using clock = std::chrono::steady_clock;

// A pipe end moved to fd 10 or above, close-on-exec: the child's dup2 onto
// 3 and 4 then never meets a pipe end already sitting there.
int high_fd(int fd) {
  int h = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
  ::close(fd);
  if (h < 0)
    throw cdp_error(std::string("fcntl: ") + std::strerror(errno));
  return h;
}

} // namespace

cdp_browser::cdp_browser(const std::string& exe, const std::string& profile_dir,
                         const std::string& log_file, std::vector<std::string> extra_args) {
  int cmd[2], out[2];
  if (::pipe2(cmd, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0)
    throw cdp_error(std::string("pipe2: ") + std::strerror(errno));
  int child_in = high_fd(cmd[0]), child_out = high_fd(out[1]);
  to_ = high_fd(cmd[1]);
  from_ = high_fd(out[0]);

  std::vector<std::string> args = {
    exe,
    "--headless=new",
    "--no-sandbox", // no user namespaces in CI containers; the page is kvmid's own
    "--remote-debugging-pipe",
    "--user-data-dir=" + profile_dir,
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--mute-audio",
    // No name resolves: the browser can reach 127.0.0.1 and nothing else.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1280,1000",
  };
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  args.push_back("about:blank");
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ == 0) {
    // Only async-signal-safe calls from here.
    ::setpgid(0, 0); // its renderers and helpers join this group: killed together
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent)
      ::_exit(127);
    int devnull = ::open("/dev/null", O_RDONLY);
    int log = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (devnull < 0 || log < 0 || ::dup2(devnull, 0) < 0 || ::dup2(log, 1) < 0
        || ::dup2(log, 2) < 0 || ::dup2(child_in, 3) < 0 || ::dup2(child_out, 4) < 0)
      ::_exit(127);
    ::execve(argv[0], argv.data(), environ);
    ::_exit(127);
  }
  ::close(child_in);
  ::close(child_out);
  if (pid_ < 0)
    throw cdp_error(std::string("fork: ") + std::strerror(errno));
  ::setpgid(pid_, pid_); // also from here: no race with the child's own call
}

cdp_browser::~cdp_browser() { close(); }

void cdp_browser::close() {
  if (pid_ <= 0)
    return;
  try {
    call("Browser.close", json::object(), {}, ms(5000));
  } catch (const cdp_error&) {
    // already gone or wedged: the kill below ends it
  }
  auto end = clock::now() + ms(5000);
  while (clock::now() < end && ::waitpid(pid_, nullptr, WNOHANG) == 0)
    std::this_thread::sleep_for(ms(20));
  ::kill(-pid_, SIGKILL); // the group: helpers that outlived the browser
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
  for (int* fd : {&to_, &from_})
    if (*fd >= 0) {
      ::close(*fd);
      *fd = -1;
    }
}

void cdp_browser::send(const json& msg) {
  std::string s = msg.dump();
  s.push_back('\0');
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(to_, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      throw cdp_error("the browser closed its command pipe");
    off += size_t(n);
  }
}

std::optional<nlohmann::json> cdp_browser::read_message(clock::time_point until) {
  for (;;) {
    if (auto nul = in_.find('\0'); nul != std::string::npos) {
      json j = json::parse(in_.substr(0, nul), nullptr, false);
      in_.erase(0, nul + 1);
      if (j.is_discarded())
        throw cdp_error("the browser sent a message that is not JSON");
      return j;
    }
    auto left = std::chrono::duration_cast<ms>(until - clock::now()).count();
    pollfd p{from_, POLLIN, 0};
    int r = ::poll(&p, 1, int(std::max<long long>(left, 0)));
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return std::nullopt;
    char buf[65536];
    ssize_t n = ::read(from_, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      throw cdp_error("the browser closed its answer pipe (did it crash? see its log)");
    in_.append(buf, size_t(n));
  }
}

void cdp_browser::dispatch(json msg) {
  if (msg.contains("id")) {
    int id = msg["id"].get<int>();
    answers_[id] = std::move(msg);
    return;
  }
  std::string method = msg.value("method", "");
  json params = msg.contains("params") ? msg["params"] : json::object();
  if (auto h = handlers_.find(method); h != handlers_.end()) {
    h->second(params);
    return;
  }
  if (kept_.count(method))
    events_.push_back({{"method", method}, {"params", std::move(params)}});
}

nlohmann::json cdp_browser::call(const std::string& method, json params,
                                 const std::string& session, ms timeout) {
  if (pid_ <= 0)
    throw cdp_error("the browser is not running");
  int id = next_id_++;
  json msg = {{"id", id}, {"method", method}, {"params", std::move(params)}};
  if (!session.empty())
    msg["sessionId"] = session;
  send(msg);
  auto until = clock::now() + timeout;
  for (;;) {
    if (auto a = answers_.find(id); a != answers_.end()) {
      json r = std::move(a->second);
      answers_.erase(a);
      if (r.contains("error"))
        throw cdp_error(method + ": " + r["error"].dump());
      return r.contains("result") ? r["result"] : json::object();
    }
    auto m = read_message(until);
    if (!m)
      throw cdp_error(method + ": no answer within " + std::to_string(timeout.count()) + " ms");
    dispatch(std::move(*m));
  }
}

void cdp_browser::on(const std::string& method, std::function<void(const json&)> f) {
  handlers_[method] = std::move(f);
}

std::optional<nlohmann::json> cdp_browser::wait_event(const std::string& method, ms timeout) {
  auto until = clock::now() + timeout;
  for (;;) {
    for (auto it = events_.begin(); it != events_.end(); ++it)
      if ((*it)["method"] == method) {
        json p = std::move((*it)["params"]);
        events_.erase(it);
        return p;
      }
    auto m = read_message(until);
    if (!m)
      return std::nullopt;
    dispatch(std::move(*m));
  }
}

void cdp_browser::pump() {
  while (auto m = read_message(clock::now()))
    dispatch(std::move(*m));
}

} // namespace kvmid::test
