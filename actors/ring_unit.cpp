#include "actors/ring_unit.hpp"

#include <caf/actor_system.hpp>
#include <caf/resumable.hpp>
#include <caf/scheduler/abstract_coordinator.hpp>

#include <utility>

namespace kvmid {

namespace {
thread_local ring_actor* running_actor = nullptr;
} // namespace

ring_actor* ring_actor::running() noexcept { return running_actor; }

caf::resumable::resume_result ring_actor::resume(caf::execution_unit* ctx,
                                                 size_t max_throughput) {
  struct restore {
    ring_actor* prev;
    ~restore() { running_actor = prev; }
  } r{std::exchange(running_actor, this)};
  return caf::event_based_actor::resume(ctx, max_throughput);
}

bool ring_actor::claim(caf::execution_unit* unit) {
  // A blocked inbox means the last resume ended with nothing left; taking
  // it to "empty" is what a resume's owner holds, so enqueuers only push.
  if (!mailbox().try_unblock())
    return false;
  // Owned now. Not an actor that has yet to run its first resume (a lazy
  // one: no behavior, no state set up), nor one waiting for a response.
  if (!getf(is_initialized_flag) || getf(is_terminated_flag) || !awaited_responses_.empty()) {
    give_back(unit);
    return false;
  }
  context(unit);
  return true;
}

ring_actor* ring_actor::exchange_running(ring_actor* a) noexcept {
  return std::exchange(running_actor, a);
}

void ring_actor::give_back(caf::execution_unit* unit) {
  if (mailbox().try_block())
    return;
  // A message arrived meanwhile: the actor runs for it, as after a resume
  // that found more; the unit's queue holds this reference.
  caf::intrusive_ptr_add_ref(ctrl());
  unit->exec_later(this);
}

void ring_actor::failed(std::exception_ptr e) {
  auto err = exception_handler_(this, e);
  if (!err)
    err = caf::sec::runtime_error;
  // Ended by its own resume, which runs for this exit message.
  send_exit(address(), std::move(err));
}

ring_unit::ring_unit(caf::actor_system& sys, std::function<bool()> on_ring)
  : caf::execution_unit(&sys), on_ring_(std::move(on_ring)),
    throughput_(sys.scheduler().max_throughput()) {}

ring_unit::~ring_unit() { detach(); }

void ring_unit::exec_later(caf::resumable* job) {
  // Only the ring thread may queue here; anything else (a late message
  // after the ring stopped, a non-ring actor) is CAF's scheduler's.
  bool here = !detached_ && on_ring_() && dynamic_cast<ring_actor*>(job) != nullptr;
  if (here)
    q_.push_back(job);
  else
    system().scheduler().enqueue(job);
}

bool ring_unit::run(size_t budget) {
  while (!q_.empty() && budget-- > 0) {
    auto* job = q_.front();
    q_.pop_front();
    switch (job->resume(this, throughput_)) {
      case caf::resumable::resume_later:
        q_.push_back(job); // its mailbox is not empty yet: keep the reference
        break;
      case caf::resumable::done:
      case caf::resumable::awaiting_message:
      case caf::resumable::shutdown_execution_unit:
        caf::intrusive_ptr_release(job);
        break;
    }
  }
  return !q_.empty();
}

void ring_unit::detach() {
  detached_ = true;
  while (!q_.empty()) {
    system().scheduler().enqueue(q_.front()); // the reference goes with it
    q_.pop_front();
  }
}

} // namespace kvmid
