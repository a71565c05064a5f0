// Runs the VM and vCPU actors on the io_uring thread that serves their
// socket. A vCPU's event is then decoded, decided, encoded and queued for
// sending on one thread: no CAF worker is woken and no eventfd written on
// the way, where before every event crossed threads twice (several µs of
// wake-up each, and most of kvmid's CPU per event).
//
// A ring_unit is a CAF execution unit: a message sent with it as context
// to a ring_actor whose mailbox was empty puts that actor in the unit's
// queue, and the ring thread resumes it at the end of its turn (run()).
// Any other actor goes to CAF's scheduler as usual, so the registry, the
// API and the publishers, which may block or take long, never hold up the
// ring. A ring_actor that a worker-run actor messages runs on that worker:
// CAF runs an actor on one thread at a time whichever thread that is.
#pragma once

#include <caf/event_based_actor.hpp>
#include <caf/execution_unit.hpp>
#include <caf/mailbox_element.hpp>

#include <cstddef>
#include <deque>
#include <functional>

namespace kvmid {

// The base of the actors a ring_unit keeps (vm_actor, vcpu_actor).
class ring_actor : public caf::event_based_actor {
public:
  using caf::event_based_actor::event_based_actor;

  // The ring_actor this thread is running (inside resume), else nullptr.
  // A behavior shared by many actors finds its actor here instead of
  // capturing it: every vCPU actor then shares one set of handlers instead
  // of each holding its own copy (an idle vCPU's largest cost after CAF's).
  static ring_actor* running() noexcept;

  resume_result resume(caf::execution_unit* ctx, size_t max_throughput) override;

  // Runs f on this actor now, on this thread, as if the actor had resumed
  // for one message, when the actor is idle: nothing in its mailbox, not
  // running anywhere, no response awaited. False (f not run) otherwise;
  // the caller then sends the message as usual.
  //
  // Why: the vCPU event is the hot path, and an idle vCPU actor is the
  // common case there. Handled in place, the event skips its 700-byte
  // mailbox element, the enqueue and the resume (about a fifth of kvmid's
  // CPU per event), and the actor still owns its state: the claim is CAF's
  // own (the inbox taken from "blocked" to "empty", as a resume does), so
  // a message sent meanwhile from any thread waits in the mailbox, and the
  // actor is scheduled for it when f returns. An exception from f is the
  // actor's exception handler's, as in a resume, and then ends the actor.
  template <class F>
  bool run_in_place(caf::execution_unit* unit, F&& f) {
    if (!claim(unit))
      return false;
    auto* prev = exchange_running(this);
    try {
      f();
    } catch (...) {
      failed(std::current_exception());
    }
    exchange_running(prev);
    give_back(unit);
    return true;
  }

private:
  bool claim(caf::execution_unit* unit);
  void give_back(caf::execution_unit* unit);
  void failed(std::exception_ptr e);
  static ring_actor* exchange_running(ring_actor* a) noexcept;
};

class ring_unit final : public caf::execution_unit {
public:
  // on_ring: true on the thread that calls run() (any other thread's
  // exec_later, e.g. a response promise delivered with a stale context,
  // goes to CAF's scheduler).
  ring_unit(caf::actor_system& sys, std::function<bool()> on_ring);
  ~ring_unit() override;
  ring_unit(const ring_unit&) = delete;
  ring_unit& operator=(const ring_unit&) = delete;

  void exec_later(caf::resumable* job) override;

  // Ring thread: resumes up to `budget` queued actors. True when some are
  // left (the ring then turns again without sleeping).
  bool run(size_t budget);
  // Ring thread, when it stops: queued actors go to CAF's scheduler, and so
  // does every actor scheduled from now on.
  void detach();

  // Ring thread: delivers a message as anon_send does, but with this unit
  // as the context, so a ring_actor it wakes runs here.
  template <class... Ts>
  void send(const caf::actor& to, Ts&&... xs) {
    if (to)
      to->enqueue(caf::make_mailbox_element(nullptr, caf::make_message_id(), {},
                                            std::forward<Ts>(xs)...),
                  this);
  }

  size_t queued() const { return q_.size(); }

private:
  std::deque<caf::resumable*> q_; // each holds one reference
  std::function<bool()> on_ring_;
  size_t throughput_;
  bool detached_ = false;
};

} // namespace kvmid
