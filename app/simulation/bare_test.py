"""Monte Carlo check of the promotion test under continuous monitoring.

Many replications of a paired canary: each request is scored by both models, production is
right with probability ``p_production`` and the candidate with ``p_production + delta``
(correlated: most requests are easy or hard for both). The decision rule is the controller's
(``app.core.sequential.non_inferiority``), looked at after every batch. A replication ends
at the first decision or at ``max_samples``. Pure (numpy random generator, seeded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.core.sequential import non_inferiority


@dataclass(frozen=True)
class SimulationResult:
    delta: float
    replications: int
    promoted: int
    rolled_back: int
    undecided: int
    median_samples: float  # samples to a decision, over decided replications

    @property
    def promote_rate(self) -> float:
        return self.promoted / self.replications

    @property
    def rollback_rate(self) -> float:
        return self.rolled_back / self.replications


def paired_outcomes(
    rng: np.random.Generator, n: int, p_production: float, delta: float, shared: float = 0.7
) -> np.ndarray:
    """``n`` paired correctness differences (candidate - production) in {-1, 0, 1}."""
    u = rng.random(n)
    v = rng.random(n)
    production = u < p_production
    same = rng.random(n) < shared
    candidate = np.where(same, u, v) < p_production + delta
    return candidate.astype(np.int8) - production.astype(np.int8)


def simulate(
    delta: float,
    *,
    margin: float,
    alpha: float,
    replications: int = 200,
    p_production: float = 0.85,
    batch: int = 50,
    max_samples: int = 6000,
    seed: int = 0,
) -> SimulationResult:
    rng = np.random.default_rng(seed)
    promoted = rolled_back = 0
    samples: list[int] = []
    for _ in range(replications):
        better, worse = non_inferiority(margin, alpha)
        d = paired_outcomes(rng, max_samples, p_production, delta).tolist()
        for start in range(0, max_samples, batch):
            better.update_many(d[start : start + batch])
            worse.update_many(d[start : start + batch])
            if better.rejected:
                promoted += 1
                samples.append(better.n)
                break
            if worse.rejected:
                rolled_back += 1
                samples.append(worse.n)
                break
    return SimulationResult(
        delta=delta,
        replications=replications,
        promoted=promoted,
        rolled_back=rolled_back,
        undecided=replications - promoted - rolled_back,
        median_samples=float(np.median(samples)) if samples else float("nan"),
    )
