"""What a running process costs, read from /proc: memory, threads, wake-ups (for the benchmarks).

Context switches stand in for wake-ups: an idle agent that switches
often is waking up often, which is what a battery-powered board pays for.
"""

import glob


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` in MiB (VmRSS), 0.0 if /proc does not say."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def ctx_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of `pid` (threads that exited drop out)."""
    total = 0
    for status in glob.glob("/proc/%d/task/*/status" % pid):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def threads(pid: int) -> int:
    return len(glob.glob("/proc/%d/task/*" % pid))
