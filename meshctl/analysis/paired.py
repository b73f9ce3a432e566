"""Paired statistics over seeds: the Student t quantile and the mean difference of matched runs.

Two models trained with the same seed see the same data order and the same initialisation stream, so
their per-seed differences cancel most of the seed-to-seed variation: the report compares models on
those differences (a paired t interval), never on the spread of each model's own runs.

The t quantile is computed here (no scipy dependency): the t CDF through the regularized incomplete
beta function (continued fraction, modified Lentz), inverted by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

CI_LEVEL = 0.95


def incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast only below this point
        return 1.0 - incomplete_beta(1.0 - x, b, a)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    return math.exp(log_front) / a * _beta_fraction(x, a, b)


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value below which a fraction `p` of Student's t(df) lies: t_quantile(0.975, 2) = 4.303."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    high = 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    low = 0.0
    for _ in range(200):  # bisection: the CDF is monotone, 200 halvings reach double precision
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-13 * high:
            break
    return 0.5 * (low + high)


@dataclass
class Pairing:
    """A variant against a reference on the seeds both completed (differences are variant - reference).

    `better` says which direction is the variant doing better ("lower" loss, "higher" accuracy); `wins`
    counts the seeds where it did. sd, ci_low and ci_high are None below two pairs: one difference has
    no spread to estimate."""

    better: Literal["lower", "higher"]
    seeds: list[int]  # the pairs' seeds, ascending
    differences: list[float]
    variant_seeds: list[int]  # planned seeds of each model, whatever their state
    reference_seeds: list[int]
    pending: list[int] = field(default_factory=list)  # planned for both, not completed by both (yet)
    n: int = 0
    mean: float | None = None
    sd: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    wins: int = 0

    @property
    def paired(self) -> bool:
        """Whether both models were planned on the same seeds (else only the shared ones are compared)."""
        return self.variant_seeds == self.reference_seeds

    @property
    def shared(self) -> list[int]:
        return sorted(set(self.variant_seeds) & set(self.reference_seeds))

    @property
    def excludes_zero(self) -> bool | None:
        if self.ci_low is None or self.ci_high is None:
            return None
        return self.ci_low > 0 or self.ci_high < 0


def pair(variant: Mapping[int, float | None], reference: Mapping[int, float | None],
         better: Literal["lower", "higher"] = "lower", level: float = CI_LEVEL) -> Pairing:
    """Pair two models' runs by seed. Each mapping holds every planned seed, with None where the run has
    not completed (or has no value); only seeds with values on both sides become pairs."""
    done = sorted(s for s in set(variant) & set(reference) if _value(variant[s]) and _value(reference[s]))
    diffs = [float(variant[s]) - float(reference[s]) for s in done]  # type: ignore[arg-type]
    out = Pairing(better, done, diffs, sorted(variant), sorted(reference),
                  pending=[s for s in sorted(set(variant) & set(reference)) if s not in done], n=len(diffs))
    if not diffs:
        return out
    out.mean = sum(diffs) / len(diffs)
    out.wins = sum(d < 0 if better == "lower" else d > 0 for d in diffs)
    if len(diffs) > 1:
        out.sd = math.sqrt(sum((d - out.mean) ** 2 for d in diffs) / (len(diffs) - 1))
        half = t_quantile(0.5 + level / 2, len(diffs) - 1) * out.sd / math.sqrt(len(diffs))
        out.ci_low, out.ci_high = out.mean - half, out.mean + half
    return out


def _value(value: float | None) -> bool:
    return value is not None and not math.isnan(float(value))
