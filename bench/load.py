"""How busy the machine is with other work while the bench times: "other load", in cores.

On Linux an OtherLoad meter reads /proc/stat's busy and total jiffies of the CPUs this
process may run on, before and after each timed interval (`with meter:`), and subtracts
the CPU time of the bench's own processes over the same interval (utime + stime, fields 14
and 15 of /proc/<pid>/stat, of the main process and the workers): other load = other busy
jiffies / total jiffies x cores. Steal time (a hypervisor running other guests) counts as
busy: it slows the bench as another process would. Children of the workers (torch.compile's
compile workers, idle while timing) are not subtracted. Without /proc (macOS) it falls back
to the one-minute load average sampled before the workers start: a rougher figure, and the
report says which one it is.

A run's MLX/torch ratio is unreliable above `threshold()` (see docs/benchmarks.md).
"""
from __future__ import annotations

import os

PROC = os.path.exists("/proc/stat")


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def threshold(threads: int | None) -> float:
    """Other load (cores) above which a ratio is unreliable: half a core more than the cores
    a backend leaves free (--threads; by default a backend uses every core, so 0.5)."""
    n = cores()
    return max(0, n - (threads or n)) + 0.5


def loadavg() -> float | None:
    """The fallback, sampled in the main process before the workers start."""
    return None if PROC or not hasattr(os, "getloadavg") else os.getloadavg()[0]


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int]:
    busy = total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus:
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[:8])
                b = user + nice + system + irq + softirq + steal   # guest time is within user
                busy, total = busy + b, total + b + idle + iowait
    return busy, total


def _process_jiffies(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:      # gone
        return 0
    fields = text[text.rindex(")") + 2:].split()   # after "pid (comm) ": field 3 on
    return int(fields[11]) + int(fields[12])       # utime, stime: fields 14 and 15


class OtherLoad:
    """Other load over the intervals it is entered: `with meter: ...` around timed blocks,
    then `result()`. `pids`: the workers' (the main process is added)."""

    def __init__(self, pids: list[int], threads: int | None, before_workers: float | None):
        self.pids = [os.getpid(), *pids]
        self.cpus = set(os.sched_getaffinity(0)) if PROC else None
        self.threshold, self.before_workers = threshold(threads), before_workers
        self.other = self.total = 0

    def _sample(self) -> tuple[int, int]:
        busy, total = _cpu_jiffies(self.cpus)
        return busy - sum(_process_jiffies(p) for p in self.pids), total

    def __enter__(self):
        if PROC:
            self.start = self._sample()
        return self

    def __exit__(self, *exc):
        if PROC:
            other, total = self._sample()
            self.other += other - self.start[0]
            self.total += total - self.start[1]

    def result(self) -> dict:
        if PROC:
            load = max(0.0, self.other / self.total * len(self.cpus)) if self.total else None
            method = (f"/proc/stat busy jiffies of the {len(self.cpus)} usable CPUs while timing, "
                      f"less the bench's own processes' utime+stime")
        else:
            load = self.before_workers
            method = ("os.getloadavg()[0] before the workers started (no /proc): the one-minute "
                      "load average, not measured while timing")
        return {"other_load_cores": None if load is None else round(load, 3),
                "other_load_method": method, "other_load_threshold_cores": self.threshold,
                "reliable": load is None or load <= self.threshold}
