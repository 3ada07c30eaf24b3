// Threads on a shared machine (threads = 0, the default): between epochs, HIM rounds and mask
// epochs the run measures how many cores other processes kept busy since it last looked
// (/proc/stat's busy time of all CPUs less this process's own CPU time, over the wall time) and
// runs its OpenMP regions on the cores left, at least one and at most all. A neighbour that keeps
// a core busy then costs the run what it costs a one-thread run, not the wait of every barrier
// for a thread that has no core. Results do not depend on the thread count (every reduction of
// the CPU backend is in a fixed order), so changing it mid-run changes no number.
#pragma once

namespace painvrl {

class ThreadGovernor {
 public:
  static ThreadGovernor& current();
  ThreadGovernor();

  // configured > 0: that many threads, fixed; 0: all the cores, adapted to the neighbours.
  void start(int configured);
  // Looks again when at least `interval_seconds` have passed since the last look.
  void adapt(double interval_seconds = 0.25);
  int threads() const { return threads_; }
  int most() const { return most_; }

  // The decision: the cores left when others keep `others_busy` cores busy, of `most`.
  static int threads_for(double others_busy, int most);

 private:
  int initial_ = 1;
  bool adaptive_ = false;
  int most_ = 1, threads_ = 1;
  double last_wall_ = -1, last_busy_ = 0, last_self_ = 0;
};

}  // namespace painvrl
