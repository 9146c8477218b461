"""How many CPU threads generation may use: the CPUs this process may actually run on.

``os.cpu_count()`` (and torch's default thread count) is the host's core count. In a container or
under ``taskset`` the process may use fewer: its affinity mask and its cgroup CPU quota
(``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1) both limit it.
More OpenMP threads than CPUs makes every step slower (threads wait for each other), so the
thread count follows the smaller of the two; ``generation.threads`` overrides it.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from musicgen_train.errors import ConfigError

CGROUP_ROOT = Path("/sys/fs/cgroup")
log = logging.getLogger(__name__)


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path | None = None) -> float | None:
    """CPUs the cgroup quota allows (``2.5`` for 250 ms per 100 ms), or None when unlimited.

    Looks at the process's own cgroup (from ``/proc/self/cgroup``) and then at ``root`` itself,
    for cgroup v2 (``cpu.max``) and v1 (``cpu/cpu.cfs_quota_us``)."""
    candidates = [root]
    text = _read(proc_cgroup or Path("/proc/self/cgroup"))
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2] not in ("", "/"):
            relative = parts[2].lstrip("/")
            if parts[0] == "0":  # v2 unified hierarchy
                candidates.insert(0, root / relative)
            elif "cpu" in parts[1].split(","):
                candidates.insert(0, root / "cpu" / relative)
    limits = []
    for folder in candidates:
        v2 = _read(folder / "cpu.max")
        if v2:
            quota, _, period = v2.partition(" ")
            if quota != "max":
                limits.append(int(quota) / int(period or 100_000))
            continue
        for v1 in (folder, folder / "cpu") if folder == root else (folder,):
            quota = _read(v1 / "cpu.cfs_quota_us")
            period = _read(v1 / "cpu.cfs_period_us")
            if quota and period and int(quota) > 0:
                limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path | None = None) -> int:
    """CPUs this process may use: affinity, capped by the cgroup quota (rounded up, at least 1)."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 1e-9)))
    return max(1, cpus)


def resolve_threads(threads: int | None) -> int:
    """``generation.threads`` if set (a positive integer), else what ``available_cpus`` says."""
    if threads is None:
        return available_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"generation.threads={threads!r} is not allowed: use a positive integer")
    return threads


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count; returns the count in use.

    An explicit ``threads`` is set as it is. Without one, torch's count is capped at
    ``available_cpus()`` (torch starts with the host's core count; a count someone set lower
    on purpose, such as ``serve.worker.torch_threads``, is kept)."""
    if threads is not None:
        count = resolve_threads(threads)
        cpus = available_cpus()
        if count > cpus:  # said once per engine: an oversubscribed step is slower, not faster
            log.warning(
                "generation.threads=%d is more than the %d CPU(s) this process may use: the "
                "threads wait for each other and every step is slower; null uses %d",
                count,
                cpus,
                cpus,
            )
    else:
        count = min(torch.get_num_threads(), available_cpus())
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
