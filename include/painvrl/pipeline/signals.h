// Graceful interruption: the first SIGINT or SIGTERM sets a flag that training loops poll after
// every step (they then save a checkpoint and throw Interrupted); a second one exits at once with
// status 128 + signal, which cannot corrupt a checkpoint (they are written to a temporary file and
// renamed).
#pragma once
#include <atomic>
#include <cstdint>

namespace painvrl {

void install_stop_handlers();
const std::atomic<int>& stop_signal();  // 0, or the signal that asked the run to stop
bool stop_requested();  // polled by the training loops between steps (main thread only)
void request_stop_for_testing(int signal);  // sets the flag as a signal would (0 clears it)
// Tests: clears the flag and makes the `polls`-th poll from now on request a stop (as SIGTERM
// would); 0 disarms, and counting polls then goes on (with no stop) for calibration. Returns the
// polls counted since the previous call.
int64_t stop_after_polls_for_testing(int64_t polls);

}  // namespace painvrl
