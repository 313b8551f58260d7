"""How an α threshold is spelled in metric names: the one spelling every producer and reader uses.

DVC reads '.' in a metric name as nesting and MLflow rejects '@', so an α is written as its
percentage with the decimal point as '_': 0.1 → `alpha10`, 0.05 → `alpha05`, 0.15 → `alpha15`,
0.125 → `alpha12_5`. Two α never share a name.
"""

from __future__ import annotations

from collections.abc import Sequence

HEADLINE_ALPHA = 0.1  # the α of the paper's headline figures (Tab. 1, Tab. 5, label precision)


def alpha_key(alpha: float) -> str:
    """'alpha10' for 0.1: the α part of every metric name."""
    percent = f"{alpha * 100:.6g}"
    if "e" in percent:
        raise ValueError(f"α = {alpha!r} has no metric name (at most 6 significant digits)")
    whole, _, fraction = percent.partition(".")
    return f"alpha{int(whole):02d}" + (f"_{fraction}" if fraction else "")


def pck_key(alpha: float) -> str:
    """PCK at α (percent): `pck_alpha10`."""
    return f"pck_{alpha_key(alpha)}"


def precision_key(alpha: float) -> str:
    """Pseudo-label precision at α (a fraction): `precision_alpha10`."""
    return f"precision_{alpha_key(alpha)}"


def headline_alpha(alphas: Sequence[float]) -> float:
    """The α the tables' headline columns and the match pictures use: `HEADLINE_ALPHA` where
    evaluated, else the largest."""
    return HEADLINE_ALPHA if any(abs(a - HEADLINE_ALPHA) < 1e-12 for a in alphas) else max(alphas)
