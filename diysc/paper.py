"""The paper's figures, and which run settings each belongs to: PCK in percent on the SPair-71k
test split with SD+DINO features.

A figure is shown beside a run only where the run matches what the paper ran: Tab. 5 rows by
their pseudo-label settings (every toggle of `diysc.filter_steps`; one a row does not name was
off), the adapter figures (Tab. 4, Tab. 8) for the full method at the run's adapter width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diysc.filter_steps import TOGGLES

ADAPTER_WIDTH = 768  # the paper's adapter (Tab. 4, Tab. 5)

# Tab. 5, PCK@0.1 per keypoint (`diysc.metric_keys.HEADLINE_ALPHA`), 768-channel adapters, in the paper's row order: the settings of
# each row, its figure. The first row is the zero-shot baseline (no pseudo-labels).
ZERO_SHOT_PER_KEYPOINT = {0.1: 65.0}
TAB5: tuple[tuple[Mapping[str, Any], float], ...] = (
    ({"mask": True, "cycle": "none", "chaining": False, "sphere_filter": False}, 67.2),
    ({"mask": True, "cycle": "strict", "chaining": False, "sphere_filter": False}, 66.9),
    ({"mask": True, "cycle": "relaxed", "chaining": False, "sphere_filter": False}, 68.4),
    ({"mask": True, "cycle": "relaxed", "chaining": True, "sphere_filter": False}, 70.0),
    ({"mask": True, "cycle": "none", "chaining": False, "sphere_filter": True}, 72.9),
    ({"mask": True, "cycle": "relaxed", "chaining": True, "sphere_filter": True}, 74.4),
)
FULL_METHOD = TAB5[-1][0]  # the settings of the paper's model

# The full method's adapter. Tab. 4 "Ours (SPair)", per image, 768 channels:
ADAPTER_PER_IMAGE = {ADAPTER_WIDTH: {0.1: 71.6, 0.05: 53.8, 0.01: 10.1}}
ADAPTER_PER_KEYPOINT = {  # Tab. 8, per keypoint, by adapter width
    128: {0.1: 74.08, 0.05: 56.28, 0.01: 11.26},
    384: {0.1: 74.39, 0.05: 56.87, 0.01: 11.53},
    768: {0.1: 74.43, 0.05: 56.76, 0.01: 11.22},
    1536: {0.1: 74.63, 0.05: 57.13, 0.01: 11.60},
}

# Tab. 1: zero-shot PCK@0.1 per image by circular azimuth-bin difference, and its column labels.
TAB1_ZERO_SHOT = {0: 75.9, 1: 68.1, 2: 57.2, 3: 54.0, 4: 52.6}
TAB1_LABELS = {
    0: "[0°, 45°)",
    1: "(0°, 90°)",
    2: "(45°, 135°)",
    3: "(90°, 180°)",
    4: "(135°, 225°)",
}


def same_settings(recorded: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """Whether recorded pseudo-label settings are a paper row's, toggle by toggle."""
    return all(t.value(recorded) == t.value(row) for t in TOGGLES)


def tab5_index(recorded: Mapping[str, Any]) -> int | None:
    """The Tab. 5 row (0-based, pseudo-label rows) run with these settings; None if none was."""
    return next((i for i, (row, _) in enumerate(TAB5) if same_settings(recorded, row)), None)


def tab5_pck(recorded: Mapping[str, Any]) -> float | None:
    """The paper's Tab. 5 figure for a run's settings (768 channels), None where it has no row."""
    index = tab5_index(recorded)
    return None if index is None else TAB5[index][1]


def adapter_pck(
    table: Mapping[int, Mapping[float, float]], recorded: Mapping[str, Any], width: int
) -> Mapping[float, float]:
    """A run's figures (by α) from an adapter table (`ADAPTER_PER_IMAGE` or
    `ADAPTER_PER_KEYPOINT`): the full method's at the run's width; none for other settings."""
    return table.get(width, {}) if same_settings(recorded, FULL_METHOD) else {}
