"""Shape buckets: the few sizes that compiled programs see, so that varying lengths reuse a handful of programs
instead of compiling one per length (rollout widths and slot counts, packed training rows, row lengths, reply
slots and widths).

- `bucket`: a power of two (at least `minimum`), multiples of 1024 beyond 1024 (the rollout engine's sizes).
- `ladder`: the rungs quantum x (1, 2, 3, 4, 6, 8, 12, 16, ...), two per doubling (at most 1.5x the size
  asked for) or with `half_steps=False` powers of two only, capped at the worst case a run can see.

Both are monotone, so the largest bucket over several hosts is the bucket of the largest size: hosts that bucket
their own sizes and then agree on the maximum stay on the rungs.
"""

from __future__ import annotations


def bucket(n: int, minimum: int = 1) -> int:
    """Round up to a power of two (at least `minimum`), then to multiples of 1024 beyond 1024."""
    n = max(int(n), minimum)
    if n > 1024:
        return -(-n // 1024) * 1024
    return 1 << (n - 1).bit_length()


def round_up(n: int, quantum: int) -> int:
    return -(-int(n) // quantum) * quantum


def ladder(n: int, quantum: int = 1, top: int | None = None, *, half_steps: bool = True) -> int:
    """The smallest rung >= n of quantum x (1, 2, 3, 4, 6, 8, 12, ...) (`half_steps`) or quantum x 2^k, and at
    most `top` rounded up to the quantum: `top` is the largest n a run can see, so no shape goes beyond its worst
    case. An n above `top` (a caller's worst case that was wrong) is rounded up to the quantum only."""
    if quantum < 1:
        raise ValueError(f"ladder: quantum must be >= 1, got {quantum}")
    n = max(int(n), 1)
    cap = None if top is None else round_up(max(int(top), 1), quantum)
    if cap is not None and n > cap:
        return round_up(n, quantum)
    units = -(-n // quantum)
    rung = 1 << (units - 1).bit_length()  # the power of two >= units
    if half_steps and rung >= 4 and 3 * rung // 4 >= units:
        rung = 3 * rung // 4  # 3 x 2^k between 2^(k+1) and 2^(k+2)
    return rung * quantum if cap is None else min(rung * quantum, cap)
