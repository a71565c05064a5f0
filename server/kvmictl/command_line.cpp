#include "server/kvmictl/command_line.hpp"

#include "server/control/encoding.hpp"

#include <algorithm>

namespace kvmictl {

namespace {

constexpr command table[] = {
  {"vms", "", "list VMs", "One line per VM kvmid knows: uuid, name, vCPUs, state, policy."},
  {"vm", "VM", "one VM with its memory map and vCPUs",
   "VM is a uuid or a name. Shows the policy's rules, the memory map and each vCPU."},
  {"vcpus", "VM", "the VM's vCPUs and their state", "Index, state and enabled events per vCPU."},
  {"pause", "VM", "pause every vCPU of a VM", "Returns once every vCPU is held."},
  {"resume", "VM", "resume every vCPU of a VM", "Lets the vCPUs run again."},
  {"regs", "VM VCPU", "registers of a paused vCPU",
   "VCPU is the vCPU index (0..65535). The vCPU must be paused or in an event."},
  {"read", "VM GPA LEN", "guest physical memory (hexdump; --json: hex)",
   "GPA is the guest physical address, LEN the byte count (1..65536); both decimal or 0x hex,\n"
   "e.g. kvmictl read web1 0x1000 256"},
  {"unhook", "VM", "remove kvmid's hooks and disconnect the VM until admitted",
   "kvmid takes back every hook it set, then closes the VM's socket. The VM stays unhooked:\n"
   "its device manager's handshakes are refused until `kvmictl admit VM`."},
  {"admit", "VM", "let an unhooked VM be hooked again when it reconnects",
   "Lifts the hold an unhook left; the VM's next handshake hooks it with its policy."},
  {"reload", "", "reload policies", "Re-reads the config's policies; a bad file keeps the old ones."},
  {"version", "", "kvmictl's version and the server's", "Prints the client's version, then asks the server."},
  {"watch", "", "the event stream, one line per event (--vm V --kind K --count N)",
   "--vm V      only records of these VMs (uuids or names, comma separated)\n"
   "--kind K    alert, lifecycle, event, report, an event name (pf, msr, ...) or a record name\n"
   "--count N   stop after N records"},
  {"help", "", "this list, or one command's help (help COMMAND)", "kvmictl help COMMAND"},
};

std::vector<std::string_view> words(std::string_view s) {
  std::vector<std::string_view> out;
  while (!s.empty()) {
    auto sp = s.find(' ');
    if (sp != 0)
      out.push_back(s.substr(0, sp));
    s = sp == std::string_view::npos ? std::string_view{} : s.substr(sp + 1);
  }
  return out;
}

// The numeric positional arguments and their ranges.
struct number_arg {
  std::string_view name;
  uint64_t lo, hi;
};
constexpr number_arg numbers[] = {
  {"GPA", 0, UINT64_MAX}, {"LEN", 1, 65536}, {"VCPU", 0, 65535}};

} // namespace

std::span<const command> commands() { return table; }

const command* find_command(std::string_view name) {
  for (auto& c : table)
    if (c.name == name)
      return &c;
  return nullptr;
}

std::string usage() {
  std::string out =
    "usage: kvmictl [--server URL|unix:PATH | --unix PATH] [--token-file F | --token T] [--json]\n"
    "               [--timeout SECONDS] COMMAND [ARGS]\n"
    "       kvmictl --version | help [COMMAND] | COMMAND --help\n"
    "commands:\n";
  for (auto& c : table) {
    std::string head = "  ";
    head += c.name;
    if (!c.args.empty()) {
      head += ' ';
      head += c.args;
    }
    head.resize(std::max<size_t>(head.size() + 1, 24), ' ');
    out += head;
    out += c.summary;
    out += "\n";
  }
  out += "environment: KVMID_API (http://127.0.0.1:8181 or unix:/path), KVMID_TOKEN_FILE, "
         "KVMID_TOKEN\n"
         "exit: 0 ok, 1 the API answered an error, 2 usage, 3 no answer\n";
  return out;
}

std::string command_help(const command& c) {
  // Appends: GCC 12 at -O3 misreads "..." + std::string joins (-Wrestrict).
  std::string out = "usage: kvmictl [OPTIONS] ";
  out += c.name;
  if (!c.args.empty()) {
    out += ' ';
    out += c.args;
  }
  out += '\n';
  out += c.summary;
  out += '\n';
  out += c.help;
  out += '\n';
  return out;
}

std::string check_args(const command& c, const std::vector<std::string>& args) {
  auto names = words(c.args);
  if (args.size() != names.size()) {
    std::string want = names.empty() ? std::string("no arguments") : std::string(c.args);
    return std::string(c.name) + " takes " + want + " (" + std::to_string(args.size())
           + " given)";
  }
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].empty())
      return std::string(c.name) + ": " + std::string(names[i]) + " is empty";
    auto n = std::find_if(std::begin(numbers), std::end(numbers),
                          [&](auto& x) { return x.name == names[i]; });
    if (n == std::end(numbers))
      continue;
    auto v = kvmid::control::parse_u64(args[i]);
    std::string what = std::string(c.name) + ": " + std::string(names[i]) + " '" + args[i] + "'";
    if (!v)
      return what + " is not a number (decimal or 0x hex)";
    if (*v < n->lo || *v > n->hi)
      return what + " is out of range " + std::to_string(n->lo) + ".." + std::to_string(n->hi);
  }
  return {};
}

std::string unreachable_hint(std::string_view where) {
  return "is kvmid running with its API at " + std::string(where)
         + "? Name the API with --server URL, --unix PATH or KVMID_API "
           "(config: api.listen)";
}

std::string unauthorized_hint(bool token_given) {
  std::string out = token_given ? "the server refused the token: " : "no token given: ";
  return out + "kvmid's token is the contents of the file its config names in api.token_file "
               "(api.read_token_file for read-only use); pass it with --token-file FILE or "
               "KVMID_TOKEN_FILE=FILE";
}

} // namespace kvmictl
