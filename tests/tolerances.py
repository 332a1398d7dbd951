"""Tolerances for comparing float32 results computed along different paths (issue 20, 11).

Two evaluations of the same float32 sum in a different order (another kernel, another blocking, another thread
count, an extra zero term) round differently. Higham's bound for a sum of n terms is |fl(s) - s| <= (n-1) u
sum|x_i| with u = eps/2, so two orders differ by up to about n * eps * sum|x_i|. In the networks compared here the
sums are normalised, so sum|x_i| is of the order of the compared values' largest magnitude. A difference that
passes through several such reductions in series (layers) adds up at most once per reduction: `chained`.

A tolerance from this bound fails only on a real change (wrong weights, wiring or formula, which move the outputs
by 1e-2 of their scale or more), never on a CPU that sums in another order.
"""
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7


def reordered_sum_tol(magnitude: float, terms: int, chained: int = 1) -> float:
    """Largest difference expected between two float32 evaluations that sum `terms` terms per output (the longest
    reduction on the way) in different orders, through `chained` such reductions, at values up to `magnitude`."""
    return EPS32 * float(magnitude) * terms * chained
