"""A deterministic synthetic card-transaction stream with concept drift.

Contract:
- ``generate(n, start_day, seed, days=1)`` returns ``n`` transactions spread evenly over the
  days ``start_day .. start_day + days - 1``. The same arguments always give the same arrays
  (bit for bit); different arguments draw from independent random streams.
- ``features`` is ``(n, len(FEATURE_NAMES))`` float32, columns in ``FEATURE_NAMES`` order;
  ``labels`` is int64 with ``1`` = fraud (``LABELS[1]``), ``0`` = legit.
- Fraud follows an *old* pattern before ``DRIFT_START`` (foreign, large, far-from-home, night
  transactions at risky merchants) and a *new* pattern from ``DRIFT_END`` on (card testing:
  small online transactions in bursts on young cards), with a linear blend in between. Traffic
  also shifts online. A model trained on ``OLD_DAYS`` is therefore measurably worse on
  ``CURRENT_DAYS`` than one trained on ``RECENT_DAYS``.

Pure: numpy only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FEATURE_NAMES: tuple[str, ...] = (
    "amount",
    "log_amount",
    "hour_of_day",
    "night",
    "merchant_risk",
    "distance_from_home_km",
    "card_age_days",
    "txn_count_1h",
    "foreign",
    "online",
)
LABELS: tuple[str, ...] = ("legit", "fraud")

DRIFT_START = 30
DRIFT_END = 60
OLD_DAYS = range(0, 30)
RECENT_DAYS = range(60, 85)
CURRENT_DAYS = range(85, 90)

CARD_POOL = 50_000
_CARD_POOL_SEED = 20_240_601


@dataclass(frozen=True)
class Transactions:
    """A batch of synthetic transactions; row ``i`` of every field is one transaction."""

    features: npt.NDArray[np.float32]  # (n, len(FEATURE_NAMES))
    labels: npt.NDArray[np.int64]  # (n,), 1 = fraud
    card_ids: list[str]
    day: npt.NDArray[np.int32]  # (n,)

    def __len__(self) -> int:
        return len(self.card_ids)

    def feature_dicts(self) -> list[dict[str, float]]:
        """The rows as ``{feature name: value}`` (the by-name form of an InferenceRequest)."""
        return [dict(zip(FEATURE_NAMES, row, strict=True)) for row in self.features.tolist()]


def drift(day: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """0 = old fraud pattern, 1 = new pattern; linear between DRIFT_START and DRIFT_END."""
    return np.clip((day - DRIFT_START) / (DRIFT_END - DRIFT_START), 0.0, 1.0)


def _card_ages() -> npt.NDArray[np.float64]:
    """Age in days of each card of the pool on day 0 (fixed, independent of any seed)."""
    rng = np.random.default_rng(_CARD_POOL_SEED)
    return rng.gamma(shape=1.2, scale=400.0, size=CARD_POOL)


_CARD_AGE_DAY0 = _card_ages()


def generate(n: int, start_day: int, seed: int, days: int = 1) -> Transactions:
    """``n`` transactions over ``days`` days from ``start_day``; deterministic in all arguments."""
    if n < 0 or days < 1 or start_day < 0:
        raise ValueError("need n >= 0, days >= 1, start_day >= 0")
    rng = np.random.default_rng(np.random.SeedSequence([seed, start_day, days, n]))
    day = (start_day + (np.arange(n) * days) // max(n, 1)).astype(np.int32)
    mix = drift(day.astype(np.float64))

    # Young cards are over-represented among new cards being issued over time.
    card = rng.integers(0, CARD_POOL, size=n)
    newly_issued = rng.random(n) < 0.04 + 0.06 * mix
    card_age = np.where(
        newly_issued, rng.uniform(0.0, 30.0, size=n), _CARD_AGE_DAY0[card] + 30.0 + day
    )

    online = (rng.random(n) < 0.30 + 0.25 * mix).astype(np.float64)
    foreign = (rng.random(n) < 0.08).astype(np.float64)
    amount = np.round(np.exp(rng.normal(3.4, 1.1, size=n)), 2)
    log_amount = np.log1p(amount)
    hour = np.where(
        rng.random(n) < 0.12,
        rng.integers(0, 6, size=n),
        np.clip(np.round(rng.normal(14.0, 4.0, size=n)), 6, 23),
    ).astype(np.float64)
    night = (hour < 6).astype(np.float64)
    merchant_risk = rng.beta(2.0, 8.0, size=n)
    distance = rng.exponential(12.0, size=n) * (1.0 - online) + foreign * rng.uniform(
        300.0, 3000.0, size=n
    )
    txn_count = rng.poisson(0.8 + 1.2 * online, size=n).astype(np.float64)

    z_amount = (log_amount - 3.4) / 1.1
    old_logit = (
        -6.6
        + 2.6 * foreign
        + 1.4 * z_amount
        + 2.0 * np.log1p(distance) / np.log1p(3000.0)
        + 2.2 * night
        + 7.0 * merchant_risk
    )
    new_logit = (
        -7.4
        + 2.2 * online
        + 0.8 * txn_count
        + 2.6 * (card_age < 60.0)
        + 7.0 * merchant_risk
        + 1.0 * night
        + 0.8 * foreign
        + 0.2 * z_amount
    )
    logit = (1.0 - mix) * old_logit + mix * new_logit
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    features = np.column_stack(
        [
            amount,
            log_amount,
            hour,
            night,
            merchant_risk,
            distance,
            card_age,
            txn_count,
            foreign,
            online,
        ]
    ).astype(np.float32)
    card_ids = [f"card-{c:06d}" for c in card.tolist()]
    return Transactions(features=features, labels=labels, card_ids=card_ids, day=day)


def window(days: range, n: int, seed: int) -> Transactions:
    """``n`` transactions over a contiguous window of days (e.g. ``OLD_DAYS``)."""
    return generate(n, start_day=days.start, seed=seed, days=len(days))


def current_traffic(n: int, seed: int) -> Transactions:
    """``n`` transactions of "now" (``CURRENT_DAYS``): what the worker's traffic looks like."""
    return window(CURRENT_DAYS, n, seed)
