#include "kernel-patches/qemu/gdb_remote.hpp"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>

namespace kvmi::qemu {

namespace {

uint8_t checksum(std::string_view s) {
  unsigned sum = 0;
  for (char c : s)
    sum += static_cast<uint8_t>(c);
  return static_cast<uint8_t>(sum);
}

std::optional<uint64_t> hex_number(std::string_view s) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 16);
  if (ec != std::errc() || p != s.data() + s.size())
    return std::nullopt;
  return v;
}

} // namespace

std::string to_hex(std::span<const uint8_t> bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    s.push_back(digits[b >> 4]);
    s.push_back(digits[b & 15]);
  }
  return s;
}

std::string join(std::initializer_list<std::string_view> parts) {
  std::string s;
  for (auto p : parts)
    s.append(p);
  return s;
}

std::optional<std::vector<uint8_t>> from_hex(std::string_view hex) {
  if (hex.size() % 2)
    return std::nullopt;
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    auto [p, ec] = std::from_chars(hex.data() + 2 * i, hex.data() + 2 * i + 2, out[i], 16);
    if (ec != std::errc() || p != hex.data() + 2 * i + 2)
      return std::nullopt;
  }
  return out;
}

std::optional<stop_reply> parse_stop(std::string_view p) {
  if (p.empty())
    return std::nullopt;
  stop_reply r;
  r.raw = std::string(p);
  char kind = p[0];
  if (kind == 'W' || kind == 'X') {
    r.exited = true;
    return r;
  }
  if ((kind != 'T' && kind != 'S') || p.size() < 3)
    return std::nullopt;
  auto sig = hex_number(p.substr(1, 2));
  if (!sig)
    return std::nullopt;
  r.signal = int(*sig);
  // T05thread:01;watch:ffffffff82a1b3a0; (pairs separated by ';')
  for (auto rest = p.substr(3); !rest.empty();) {
    auto end = rest.find(';');
    auto pair = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
    auto colon = pair.find(':');
    if (colon == std::string_view::npos)
      continue;
    auto key = pair.substr(0, colon), value = pair.substr(colon + 1);
    if (key == "thread") {
      if (auto dot = value.find('.'); dot != std::string_view::npos) // multiprocess pP.T
        value = value.substr(dot + 1);
      if (auto t = hex_number(value))
        r.thread = int(*t);
    } else if (key == "watch" || key == "rwatch" || key == "awatch") {
      r.watch = hex_number(value);
    }
  }
  return r;
}

gdb_remote::~gdb_remote() {
  if (fd_ >= 0)
    ::close(fd_);
}

std::string gdb_remote::connect(const std::string& path, clock::duration deadline) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path)
    return "gdbstub socket path too long: " + path;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  auto until = clock::now() + deadline;
  std::string why;
  while (true) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0)
      return std::string("socket: ") + std::strerror(errno);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0)
      return {};
    why = std::strerror(errno);
    ::close(fd_);
    fd_ = -1;
    if (clock::now() >= until)
      return "cannot connect to the gdbstub at " + path + ": " + why;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

bool gdb_remote::write_all(std::string_view b) {
  while (!b.empty()) {
    ssize_t n = ::send(fd_, b.data(), b.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      error_ = std::string("gdbstub write: ") + std::strerror(errno);
      return false;
    }
    b.remove_prefix(size_t(n));
  }
  return true;
}

bool gdb_remote::send(std::string_view payload) {
  char tail[4];
  std::snprintf(tail, sizeof tail, "#%02x", checksum(payload));
  std::string pkt;
  pkt.reserve(payload.size() + 4);
  pkt.push_back('$');
  pkt.append(payload);
  pkt.append(tail, 3);
  return write_all(pkt);
}

bool gdb_remote::interrupt() { return write_all(std::string_view("\x03", 1)); }

bool gdb_remote::fill(clock::time_point until) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock::now());
  pollfd p{fd_, POLLIN, 0};
  int r = ::poll(&p, 1, int(std::max<int64_t>(left.count(), 0)));
  if (r < 0 && errno == EINTR)
    return true;
  if (r == 0) {
    error_ = "gdbstub: no answer in time";
    return false;
  }
  char buf[8192];
  ssize_t n = ::read(fd_, buf, sizeof buf);
  if (n <= 0) {
    error_ = n == 0 ? "gdbstub closed the connection" : std::string("gdbstub read: ") + std::strerror(errno);
    return false;
  }
  in_.append(buf, size_t(n));
  return true;
}

std::optional<std::string> gdb_remote::read_packet(clock::time_point until) {
  while (true) {
    // Acks ('+') and naks of our packets come between packets.
    size_t start = in_.find('$');
    if (start != std::string::npos) {
      size_t hash = in_.find('#', start);
      if (hash != std::string::npos && in_.size() >= hash + 3) {
        std::string raw = in_.substr(start + 1, hash - start - 1);
        in_.erase(0, hash + 3);
        if (!write_all("+"))
          return std::nullopt;
        std::string out;
        out.reserve(raw.size());
        for (size_t i = 0; i < raw.size(); ++i) // binary escapes ('}' x^0x20)
          out.push_back(raw[i] == '}' && i + 1 < raw.size() ? char(raw[++i] ^ 0x20) : raw[i]);
        return out;
      }
    } else {
      in_.clear(); // only acks so far
    }
    if (!fill(until))
      return std::nullopt;
  }
}

std::optional<std::string> gdb_remote::request(std::string_view payload) {
  if (!send(payload))
    return std::nullopt;
  auto until = clock::now() + reply_timeout_;
  while (true) {
    auto p = read_packet(until);
    if (!p)
      return std::nullopt;
    // A stop notification (the VM stopped when a byte arrived while it
    // ran, or on its own) is not this command's answer.
    if (auto s = parse_stop(*p); s && payload != "?") {
      stops_.push_back(std::move(*s));
      continue;
    }
    return p;
  }
}

std::optional<stop_reply> gdb_remote::stop(clock::duration timeout) {
  if (!stops_.empty()) {
    auto s = std::move(stops_.front());
    stops_.pop_front();
    return s;
  }
  auto until = clock::now() + timeout;
  while (true) {
    auto p = read_packet(until);
    if (!p)
      return std::nullopt;
    if (auto s = parse_stop(*p))
      return s;
    // Anything else unasked for is dropped (QEMU sends nothing else).
  }
}

std::optional<stop_reply> gdb_remote::take_stop() {
  if (!stops_.empty())
    return stop(clock::duration::zero());
  pollfd p{fd_, POLLIN, 0};
  while (::poll(&p, 1, 0) > 0) {
    char buf[8192];
    ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n <= 0) {
      error_ = n == 0 ? "gdbstub closed the connection" : std::string("gdbstub read: ") + std::strerror(errno);
      return std::nullopt;
    }
    in_.append(buf, size_t(n));
  }
  size_t start = in_.find('$');
  if (start == std::string::npos) {
    in_.clear(); // acks only
    return std::nullopt;
  }
  size_t hash = in_.find('#', start);
  if (hash == std::string::npos || in_.size() < hash + 3)
    return std::nullopt; // the rest is on its way
  return stop(std::chrono::seconds(1));
}

std::optional<std::string> gdb_remote::read_feature(const std::string& annex) {
  std::string out;
  while (true) {
    char range[48];
    std::snprintf(range, sizeof range, ":%zx,%x", out.size(), 0xf00);
    auto r = request("qXfer:features:read:" + annex + range);
    if (!r || r->empty() || (r->front() != 'm' && r->front() != 'l')) {
      if (r)
        error_ = "qXfer " + annex + ": " + *r;
      return std::nullopt;
    }
    out.append(*r, 1);
    if (r->front() == 'l')
      return out;
  }
}

std::optional<std::string> gdb_remote::monitor(std::string_view command) {
  auto cmd = std::string_view(command);
  if (!send(join({"qRcmd,", to_hex({reinterpret_cast<const uint8_t*>(cmd.data()), cmd.size()})})))
    return std::nullopt;
  auto until = clock::now() + reply_timeout_;
  std::string text;
  while (true) {
    auto p = read_packet(until);
    if (!p)
      return std::nullopt;
    if (*p == "OK")
      return text;
    if (p->size() > 1 && p->front() == 'O') {
      if (auto b = from_hex(std::string_view(*p).substr(1)))
        text.append(b->begin(), b->end());
      continue;
    }
    if (auto s = parse_stop(*p)) {
      stops_.push_back(std::move(*s));
      continue;
    }
    error_ = "qRcmd: " + *p;
    return std::nullopt;
  }
}

} // namespace kvmi::qemu
