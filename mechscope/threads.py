"""CPU threads that hold their speed on a busy machine.

OpenMP (which PyTorch's CPU kernels use) lets an idle worker thread spin, waiting for the next parallel
region, by default. When another CPU-bound process shares the cores, a spinning thread burns the time slice its
partner needs, and every barrier waits for a descheduled thread: measured on 2 cores (gemma3-270m, 7 tokens,
512 rows), a trace that takes 2.3 s on a quiet machine took 10–69 s with 2 threads beside a busy 2-thread
process, and 2.9–3.2 s once waiting threads sleep (OMP_WAIT_POLICY=PASSIVE), with no cost on a quiet machine.
The policy is read once, when torch loads OpenMP, so `prefer_passive_wait` runs on `import mechscope`,
before torch is imported; a program that imported torch first keeps the spinning default (set the variable
yourself then).

>>> import mechscope            # sets OMP_WAIT_POLICY=PASSIVE unless it is already set
>>> apply_threads(1)            # one thread for torch from now on
1
"""

from __future__ import annotations

import os
import sys

from mechscope.errors import MechscopeError

ENV = "MECHSCOPE_THREADS"  # the --threads value, for every later model load in this process


def prefer_passive_wait() -> bool:
    """Make idle OpenMP threads sleep instead of spin, unless the user chose; True when it can take effect."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules


def resolve_threads(n: int | None = None) -> int:
    """Threads to use: n when given (> 0), else $MECHSCOPE_THREADS, else $OMP_NUM_THREADS, else one per core."""
    if n is None or n == 0:
        raw = os.environ.get(ENV) or os.environ.get("OMP_NUM_THREADS") or ""
        try:
            n = int(raw) if raw else 0
        except ValueError:
            raise MechscopeError(f"${ENV} / $OMP_NUM_THREADS must be a whole number, got {raw!r}") from None
    if n < 0:
        raise MechscopeError(f"--threads must be ≥ 0 (0: one per core), got {n}")
    return n or os.cpu_count() or 1


def apply_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count (see `resolve_threads`) and remember it for later loads."""
    k = resolve_threads(n)
    if n:
        os.environ[ENV] = str(k)
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != k:
            torch.set_num_threads(k)
    else:  # read by OpenMP when torch loads
        os.environ["OMP_NUM_THREADS"] = str(k)
    return k
