"""The azimuth-bin convention: every dataset's viewpoint is written as one of 8 bins of 45°.

SPair-71k annotates `azimuth_id` 0..7 this way (45° sectors from 0°, so a horizontal mirror maps
bin b to 7 − b: `diysc.datasets.spair.local`); the synthetic set renders bin b centred on b·45°
(`azimuth_to_bin`). Chains step one bin at a time; the sphere's viewpoint loss and Tab. 1 read
circular bin differences.
"""

from __future__ import annotations

AZIMUTH_BINS = 8
BIN_DEGREES = 360 / AZIMUTH_BINS  # 45°


def azimuth_to_bin(degrees: float) -> int:
    """The bin of an azimuth in degrees, bin b centred on b·45° (the synthetic renderer's)."""
    return int(round(degrees / BIN_DEGREES)) % AZIMUTH_BINS


def azimuth_difference(a: int | None, b: int | None) -> int | None:
    """Circular difference of two azimuth bins, 0..4; None when either is unknown."""
    if a is None or b is None:
        return None
    d = abs(int(a) - int(b)) % AZIMUTH_BINS
    return min(d, AZIMUTH_BINS - d)
