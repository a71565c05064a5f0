#include "server/kvmictl/command_line.hpp"

#include "server/control/encoding.hpp"

#include <algorithm>
#include <cctype>

namespace kvmictl {

namespace {

constexpr command command_table[] = {
  {"vms", "", "list VMs", "One line per VM kvmid knows: uuid, name, vCPUs, state, policy."},
  {"vm", "VM", "one VM with its memory map and vCPUs",
   "VM is a uuid or a name. Shows the policy's rules, the memory map and each vCPU."},
  {"vcpus", "VM", "the VM's vCPUs and their state", "Index, state and enabled events per vCPU."},
  {"pause", "VM", "pause every vCPU of a VM", "Returns once every vCPU is held."},
  {"resume", "VM", "resume every vCPU of a VM", "Lets the vCPUs run again."},
  {"regs", "VM VCPU", "registers of a vCPU (--msrs 0xc0000082,...)",
   "VCPU is the vCPU index (0..65535). A running vCPU is stopped briefly to answer.\n"
   "--msrs LIST   also read these MSRs (comma separated, decimal or 0x hex)",
   "--msrs"},
  {"read", "VM GPA LEN", "guest physical memory (hexdump; --json: hex)",
   "GPA is the guest physical address, LEN the byte count (1..65536); both decimal or 0x hex,\n"
   "e.g. kvmictl read web1 0x1000 256"},
  {"write", "VM GPA HEX", "write bytes to guest physical memory",
   "HEX is the bytes as hex digits (1..4096 bytes), e.g. kvmictl write web1 0x1000 90909090.\n"
   "kvmid refuses regions that are not safe to touch (MMIO, device memory)."},
  {"page-access", "VM", "the pages kvmid restricted, as ranges",
   "Adjacent pages with the same access are one line: GPA, length, pages, access."},
  {"set-page-access", "VM GPA ACCESS", "restrict a page (ACCESS: r-x, r--, rwx, ...)",
   "GPA is page aligned; ACCESS is three characters r/w/x or '-', e.g. r-x. rwx lifts the\n"
   "restriction."},
  {"breakpoints", "VM", "kvmid's breakpoints in a VM", "GPA, the byte INT3 replaced, whether "
   "it is in guest memory, and hits."},
  {"add-breakpoint", "VM GPA", "plant a breakpoint", "kvmid writes INT3 at GPA and reports hits "
   "on the stream (kind report)."},
  {"remove-breakpoint", "VM GPA", "remove a breakpoint", "The original byte goes back."},
  {"events", "VM VCPU", "a vCPU's enabled events; --enable/--disable change them",
   "--enable LIST    turn these events on (comma separated: cr, msr, pf, breakpoint, ...)\n"
   "--disable LIST   turn these events off\n"
   "--force          also turn off events a protection needs (raises an alert)",
   "--enable --disable --force"},
  {"unhook", "VM", "remove kvmid's hooks and disconnect the VM until admitted",
   "kvmid takes back every hook it set, then closes the VM's socket. The VM stays unhooked:\n"
   "its device manager's handshakes are refused until `kvmictl admit VM`."},
  {"admit", "VM", "let an unhooked VM be hooked again when it reconnects",
   "Lifts the hold an unhook left; the VM's next handshake hooks it with its policy."},
  {"forget", "VM", "drop a disconnected VM and its history",
   "Refused while the VM is connected, or while kvmid's INT3s are recorded in its guest."},
  {"reload", "", "reload policies", "Re-reads the config's policies; a bad file keeps the old ones."},
  {"metrics", "", "kvmid's Prometheus metrics (text)", "The text of GET /metrics, as Prometheus "
   "scrapes it."},
  {"version", "", "kvmictl's version and the server's", "Prints the client's version, then asks the server."},
  {"watch", "", "the event stream, one line per event (--vm V --kind K --count N)",
   "--vm V      only records of these VMs (uuids or names, comma separated)\n"
   "--kind K    alert, lifecycle, event, report, an event name (pf, msr, ...) or a record name\n"
   "--count N   stop after N records\n"
   "A lost connection is resumed where it left off (Last-Event-ID), so no alert kvmid\n"
   "still holds is missed; kvmictl exits 3 once kvmid stays away.",
   "--vm --kind --count"},
  {"completion", "SHELL", "a completion script (bash): source <(kvmictl completion bash)",
   "Prints a script that completes commands, options and VM names."},
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

std::span<const command> commands() { return command_table; }

const command* find_command(std::string_view name) {
  for (auto& c : command_table)
    if (c.name == name)
      return &c;
  return nullptr;
}

std::string usage() {
  std::string out =
    "usage: kvmictl [--server URL|unix:PATH | --unix PATH] [--token-file F | --token T] [--json]\n"
    "               [--timeout SECONDS] COMMAND [ARGS]\n"
    "       kvmictl --nats URL[,URL] [--nats-prefix P] [--gather-ms N]\n"
    "               [--nats-creds F | --nats-user U --nats-password-file F]\n"
    "               [--nats-ca F] [--nats-cert F --nats-key F]\n"
    "               vms | watch [--kind K] [--count N] | pause|resume|unhook UUID   (the fleet)\n"
    "       kvmictl --version | help [COMMAND] | COMMAND --help\n"
    "commands:\n";
  for (auto& c : command_table) {
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
         "KVMID_TOKEN,\n"
         "             KVMID_NATS_PASSWORD (with --nats-user, when no --nats-password-file)\n"
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
    std::string what = std::string(c.name) + ": " + std::string(names[i]) + " '" + args[i] + "'";
    if (names[i] == "ACCESS") {
      if (!kvmid::control::parse_access(args[i]))
        return what + " is not an access like r-x, r-- or rwx";
      continue;
    }
    if (names[i] == "HEX") {
      auto bytes = kvmid::control::from_hex(args[i]);
      if (!bytes)
        return what + " is not hex bytes (an even number of 0-9a-f digits)";
      if (bytes->size() > 4096)
        return what + " is more than 4096 bytes";
      continue;
    }
    if (names[i] == "SHELL") {
      if (args[i] != "bash")
        return what + " is not a shell kvmictl completes (bash)";
      continue;
    }
    auto n = std::find_if(std::begin(numbers), std::end(numbers),
                          [&](auto& x) { return x.name == names[i]; });
    if (n == std::end(numbers))
      continue;
    auto v = kvmid::control::parse_u64(args[i]);
    if (!v)
      return what + " is not a number (decimal or 0x hex)";
    if (*v < n->lo || *v > n->hi)
      return what + " is out of range " + std::to_string(n->lo) + ".." + std::to_string(n->hi);
  }
  return {};
}

std::string check_option(const command& c, std::string_view option) {
  for (auto o : words(c.options))
    if (o == option)
      return {};
  std::string out = std::string(c.name) + ": option " + std::string(option) + " does not apply";
  if (!c.options.empty())
    out += " (it takes " + std::string(c.options) + ")";
  return out;
}

std::string bash_completion() {
  std::string cmds, cases, vm_cmds;
  for (auto& c : command_table) {
    if (c.args.starts_with("VM")) {
      if (!vm_cmds.empty())
        vm_cmds += ' ';
      vm_cmds += c.name;
    }
    if (!cmds.empty())
      cmds += ' ';
    cmds += c.name;
    if (!c.options.empty())
      cases += "    " + std::string(c.name) + ") opts=\"" + std::string(c.options) + "\" ;;\n";
  }
  // VM names come from the server when it answers; nothing is printed when
  // it does not, so completion never blocks on an error message.
  return "# kvmictl bash completion: source <(kvmictl completion bash)\n"
         "_kvmictl() {\n"
         "  local cur=${COMP_WORDS[COMP_CWORD]} cmd= i opts=\n"
         "  local global=\"--server --unix --token-file --token --json --timeout --help --version\"\n"
         "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
         "    case ${COMP_WORDS[i]} in\n"
         "      --server|--unix|--token-file|--token|--timeout|--msrs|--enable|--disable|--vm|--kind|--count) ((i++)) ;;\n"
         "      -*) ;;\n"
         "      *) cmd=${COMP_WORDS[i]}; break ;;\n"
         "    esac\n"
         "  done\n"
         "  if [[ -z $cmd ]]; then\n"
         "    COMPREPLY=($(compgen -W \"" + cmds + " $global\" -- \"$cur\"))\n"
         "    return\n"
         "  fi\n"
         "  case $cmd in\n" + cases +
         "  esac\n"
         "  if [[ $cur == -* ]]; then\n"
         "    COMPREPLY=($(compgen -W \"$opts $global\" -- \"$cur\"))\n"
         "  elif [[ $cmd == help ]]; then\n"
         "    COMPREPLY=($(compgen -W \"" + cmds + "\" -- \"$cur\"))\n"
         "  elif [[ $cmd == completion ]]; then\n"
         "    COMPREPLY=($(compgen -W bash -- \"$cur\"))\n"
         "  elif ((COMP_CWORD == i + 1)) && [[ \" " + vm_cmds + " \" == *\" $cmd \"* ]]; then\n"
         "    local vms=$(kvmictl --timeout 2 vms 2>/dev/null | awk 'NR > 1 {print $2}')\n"
         "    COMPREPLY=($(compgen -W \"$vms\" -- \"$cur\"))\n"
         "  fi\n"
         "}\n"
         "complete -F _kvmictl kvmictl\n";
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
