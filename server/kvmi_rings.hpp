// The rings that serve KVMI sockets. The main reactor accepts on every
// listener (and serves the API); with more than one ring, each accepted
// KVMI socket goes to the ring serving the fewest connections, and its VM
// and vCPU actors run on that ring's thread (actors/ring_unit.hpp). One
// ring thread answers a few hundred thousand events a second; a host with
// more VMs than that gives each further ring a core of its own.
#pragma once

#include "actors/core.hpp"
#include "server/kvmi_session.hpp"
#include "server/reactor.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <vector>

namespace kvmid {

// The ring count kvmid picks when the config leaves it at 0: one ring per
// two cores (the other serves the actors that are not on a ring), 1..8.
size_t default_kvmi_rings(unsigned cores);

class kvmi_rings {
public:
  // main: ring 0, started and stopped by its owner. The other count - 1
  // rings get `extra`'s options (but their own thread name and heartbeat).
  kvmi_rings(net::reactor& main, size_t count, net::reactor_options extra);
  ~kvmi_rings(); // stops the extra rings
  kvmi_rings(const kvmi_rings&) = delete;
  kvmi_rings& operator=(const kvmi_rings&) = delete;

  // A KVMI listener on the main reactor whose sockets the rings share;
  // before start() (placement reads the listeners' factories unlocked).
  // Throws as net::reactor::add_listener does; returns its index there.
  int add_listener(const net::listen_spec& spec, core& c, kvmi_listener_options o);

  void start(); // the extra rings; the main one is its owner's to start
  void stop();  // the extra rings, after the main one stopped accepting

  size_t count() const { return rings_.size(); }
  size_t connections(size_t ring) const;
  size_t queued_total() const; // messages waiting on every ring's sockets
  // Every extra ring ran its loop within `within` (the main ring's own
  // heartbeat says that it does): kvmid's watchdog is fed only then.
  bool alive(std::chrono::milliseconds within) const;

private:
  bool place(int fd, const std::string& peer, size_t listener);

  struct ring {
    net::reactor* r;                        // rings_[0]: the main reactor
    std::unique_ptr<net::reactor> own;      // the others
    std::atomic<int64_t> beat_ns{0};        // the last heartbeat (extra rings)
    std::vector<net::handler_factory> make; // by listener
  };
  std::vector<std::unique_ptr<ring>> rings_;
  bool beats_;
};

} // namespace kvmid
