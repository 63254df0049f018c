"""The table ``rollout simulate`` prints: per situation, how often the candidate was promoted,
rolled back on evidence, rolled back at the horizon (the evidence never came), or still held
at the end, with 95% (Wilson) intervals, and the median requests compared and
audit labels joined when it decided."""

from __future__ import annotations

import math

from app.simulation.runner import Result

COLUMNS = (
    "situation",
    "truth",
    "promoted (95% CI)",
    "rolled back",
    "kept at horizon",
    "held",
    "median compared",
    "median labels",
)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a proportion ``k / n`` (Wilson score)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def row(r: Result) -> list[str]:
    n = len(r.runs)
    k = r.count("promote")
    lo, hi = wilson(k, n)
    median_compared, median_labels = r.median("compared"), r.median("labelled")
    return [
        f"{r.situation.name} ({n} runs)",
        r.situation.truth,
        f"{k / n:.1%} ({lo:.1%}-{hi:.1%})",
        f"{r.rate('rollback'):.1%}",
        f"{r.rate('horizon'):.1%}",
        f"{r.rate('hold'):.1%}",
        "-" if math.isnan(median_compared) else f"{median_compared:,.0f}",
        "-" if math.isnan(median_labels) else f"{median_labels:,.0f}",
    ]


def markdown(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in results]
    return "\n".join(lines)
