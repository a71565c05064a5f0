// kvmictl's command line: the commands with their arguments and help, the
// strict checks of those arguments (a usage error names the bad one), and
// the hints for a server that cannot be reached or refuses the token. Pure,
// so it is unit tested; main.cpp does the HTTP.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kvmictl {

struct command {
  std::string_view name;
  std::string_view args;    // "VM GPA LEN": the positional arguments, in order
  std::string_view summary; // one line for the command list
  std::string_view help;    // more, for `kvmictl help NAME`
  std::string_view options = {}; // "--enable --disable --force": what it takes beyond the global ones
};

std::span<const command> commands();
const command* find_command(std::string_view name);

// The whole usage: options, every command, environment, exit codes.
std::string usage();
// `kvmictl help NAME` / `kvmictl NAME --help`.
std::string command_help(const command& c);

// Why `args` (what follows the command name) do not fit c, or "" if they
// do: "read takes VM GPA LEN (2 given)", "read: LEN '1k' is not a number
// (decimal or 0x hex)". Numbers are read as the API reads them
// (control::parse_u64): decimal or 0x hex, no sign, space, suffix or overflow.
std::string check_args(const command& c, const std::vector<std::string>& args);

// Why an option given on the command line does not apply to c, or "".
std::string check_option(const command& c, std::string_view option);

// A bash completion script for kvmictl, made from the command table.
std::string bash_completion();

// What to tell the user when the server at `where` (a URL or unix:PATH)
// could not be reached, or refused the token.
std::string unreachable_hint(std::string_view where);
std::string unauthorized_hint(bool token_given);

} // namespace kvmictl
