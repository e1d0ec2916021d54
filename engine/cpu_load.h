// How busy other processes keep the machine's CPUs: Linux /proc/stat (every CPU's busy time)
// minus /proc/self/stat (this process's user + system time), over a window. Used by the thread
// pool's back-off and by bench / run-model to say when figures were taken on a busy machine.
#pragma once
#include <cstdint>

namespace minfer {

// Cumulative CPU time counters in clock ticks (USER_HZ), read at one instant.
struct CpuTimes {
  bool ok = false;    // false where /proc is not readable (not Linux): no load figures then
  int64_t busy = 0;   // all CPUs: user + nice + system + irq + softirq + steal
  int64_t total = 0;  // all CPUs: busy + idle + iowait
  int64_t self = 0;   // this process: utime + stime (all its threads)
};

CpuTimes read_cpu_times();
// Number of CPUs the kernel counts in /proc/stat (online CPUs; 1 when unreadable).
int online_cpus();
// CPU cores other processes kept busy between two readings (0 .. online_cpus()); -1 when either
// reading failed or no time passed.
double others_busy_cores(const CpuTimes& before, const CpuTimes& after);

// The machine's load measured over `seconds` (sleeps that long), for reports.
struct MachineLoad {
  bool measured = false;   // false where /proc is unreadable
  double others_busy = 0;  // cores kept busy by other processes over the window
  int cpus = 1;            // online CPUs
  double loadavg1 = -1;    // /proc/loadavg's 1-minute figure (-1 when unreadable)
  // Busy: others kept at least a quarter of one core busy (a benchmark's figures then depend on
  // what else ran; say so next to them).
  bool busy() const { return measured && others_busy >= 0.25; }
};
MachineLoad measure_machine_load(double seconds = 0.5);

}  // namespace minfer
