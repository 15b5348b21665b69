"""Side-by-side timing: the only kind of speed claim these shared, noisy machines allow.

Candidates run interleaved (A, B, A, B, ...) for several rounds, so drift in machine load hits
all of them alike; each round times enough calls to last about `round_seconds`; the result
per candidate is the median over rounds.
"""
import statistics
import time
from typing import Callable, Dict, List


def time_interleaved(candidates: Dict[str, Callable[[], object]], rounds: int = 7,
                     round_seconds: float = 0.005, statistic: str = "median") -> Dict[str, float]:
    """Seconds per call of each candidate, measured interleaved: the median over rounds, or
    the minimum (statistic="min": the least disturbed round, for decisions on a busy machine)."""
    if statistic not in ("median", "min"):
        raise ValueError(f"statistic = {statistic!r}, expected 'median' or 'min'")
    reduce = statistics.median if statistic == "median" else min
    return {name: reduce(s) for name, s in time_rounds(candidates, rounds, round_seconds).items()}


def time_rounds(candidates: Dict[str, Callable[[], object]], rounds: int = 7,
                round_seconds: float = 0.005) -> Dict[str, List[float]]:
    """Seconds per call of each candidate in each round (rounds interleave the candidates), for
    statistics over rounds, such as per-round ratios of two candidates timed side by side."""
    if rounds < 1:
        raise ValueError(f"rounds = {rounds}, expected >= 1")
    calls = {}
    for name, fn in candidates.items():  # warm up, then size each round
        fn()
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-7)
        calls[name] = max(1, min(10_000, int(round_seconds / once)))
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            n = calls[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return samples
