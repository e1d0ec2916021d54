#include "engine/cpu_load.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

namespace minfer {

namespace {

// Reads a small /proc file into buf (NUL-terminated); false when it cannot.
bool read_proc(const char* path, char* buf, size_t cap) {
  FILE* f = std::fopen(path, "r");
  if (!f) return false;
  const size_t n = std::fread(buf, 1, cap - 1, f);
  std::fclose(f);
  buf[n] = 0;
  return n > 0;
}

}  // namespace

CpuTimes read_cpu_times() {
  CpuTimes t;
  char buf[512];
  if (!read_proc("/proc/stat", buf, sizeof buf)) return t;
  long long v[8] = {};  // user nice system idle iowait irq softirq steal (proc(5))
  if (std::sscanf(buf, "cpu %lld %lld %lld %lld %lld %lld %lld %lld", &v[0], &v[1], &v[2], &v[3],
                  &v[4], &v[5], &v[6], &v[7]) < 4)
    return t;
  t.busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
  t.total = t.busy + v[3] + v[4];
  char sbuf[1024];
  if (!read_proc("/proc/self/stat", sbuf, sizeof sbuf)) return t;
  // Fields after the command name (which may hold spaces and parentheses): skip to the last ')'.
  const char* p = std::strrchr(sbuf, ')');
  if (!p) return t;
  long long ut = 0, st = 0;
  // fields 3-15 of proc(5): state ... utime stime (the two read here)
  if (std::sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lld %lld", &ut, &st) != 2)
    return t;
  t.self = ut + st;
  t.ok = true;
  return t;
}

int online_cpus() {
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? int(n) : 1;
}

double others_busy_cores(const CpuTimes& a, const CpuTimes& b) {
  if (!a.ok || !b.ok || b.total <= a.total) return -1;
  const double others = double((b.busy - a.busy) - (b.self - a.self));
  const double share = std::max(0.0, others) / double(b.total - a.total);
  return std::min(1.0, share) * online_cpus();
}

MachineLoad measure_machine_load(double seconds) {
  MachineLoad m;
  m.cpus = online_cpus();
  char buf[256];
  if (read_proc("/proc/loadavg", buf, sizeof buf)) std::sscanf(buf, "%lf", &m.loadavg1);
  const CpuTimes a = read_cpu_times();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const CpuTimes b = read_cpu_times();
  const double o = others_busy_cores(a, b);
  if (o >= 0) {
    m.measured = true;
    m.others_busy = o;
  }
  return m;
}

}  // namespace minfer
