// Ends, from inside a server process, the TCP connections it accepted on a
// port: each socket is duplicated out of the process (pidfd_getfd, which a
// parent may do to its child) and shut down, so the server reads the end of
// its input and the client sees the connection close, as when the server
// drops a client.
#pragma once

#include <cstdint>
#include <string>
#include <sys/types.h>

namespace kvmid::test {

// How many connections were cut; throws std::runtime_error naming the
// step that failed.
size_t cut_accepted_connections(pid_t server, uint16_t port);

} // namespace kvmid::test
