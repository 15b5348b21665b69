"""Side-by-side timing: the only kind of speed claim these shared, noisy machines allow.

Candidates run interleaved (A, B, A, B, ...) for several rounds, so drift in machine load hits
all of them alike; each round times enough calls to last about `round_seconds`; the result
per candidate is the median over rounds. Speed claims pair each baseline with sparsekern
alone (`ratios_against`).
"""
import statistics
import time
from typing import Callable, Dict, List, Tuple


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


def paired_ratios(baseline: Callable[[], object], subject: Callable[[], object], rounds: int = 9,
                  round_seconds: float = 0.003) -> List[float]:
    """How many times faster `subject` ran than `baseline` in each of `rounds` rounds: the two
    alone, side by side, so a round's ratio compares calls made moments apart and load from
    other processes cancels unless it hits one call of the pair."""
    times = time_rounds({"baseline": baseline, "subject": subject}, rounds=rounds, round_seconds=round_seconds)
    return [b / s for b, s in zip(times["baseline"], times["subject"])]


def ratios_against(calls: Dict[str, Callable[[], object]], subject: str = "sparsekern", rounds: int = 7,
                   round_seconds: float = 0.005) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Each baseline timed alone beside `subject`, never beside a third candidate (which was
    seen to slow the others by 15-50%: a single-threaded call before a two-threaded one costs
    it). Returns ({baseline: median over rounds of baseline / subject time in that round},
    {name: median seconds per call}, the subject's over all its pairs)."""
    ratios, seconds, subject_seconds = {}, {}, []
    for name, fn in calls.items():
        if name == subject:
            continue
        times = time_rounds({name: fn, subject: calls[subject]}, rounds, round_seconds)
        ratios[name] = statistics.median(b / s for b, s in zip(times[name], times[subject]))
        seconds[name] = statistics.median(times[name])
        subject_seconds += times[subject]
    seconds[subject] = statistics.median(subject_seconds) if subject_seconds else float("nan")
    return ratios, seconds
