"""Arithmetic whose results are the same bits on every CPU, for everything that decides a pixel.

The synthetic dataset must be byte-identical on any x86-64 (AVX2 or AVX-512) and arm64 machine.
Two numpy facilities are not: matrix products (`@`, `np.dot`, `np.einsum`, `np.linalg.norm` of a
vector) go to BLAS, whose kernels are chosen per CPU and differ in fused multiply-adds and
summation order; and vectorised `np.sin`/`np.cos`/`np.arctan2` have per-CPU SIMD implementations
(e.g. SVML on AVX-512) that differ in the last bits. Single IEEE-754 operations (+, -, *, /, sqrt,
floor) are correctly rounded everywhere, and numpy applies each one separately, so anything
written as a fixed sequence of them is reproducible. This module writes the few products and the
sine/cosine the generator needs that way.
"""

from __future__ import annotations

import numpy as np

_HALF_PI_HI = 1.5707963267948966  # pi/2 = _HALF_PI_HI + _HALF_PI_LO (Cody-Waite reduction)
_HALF_PI_LO = 6.123233995736766e-17
# Taylor coefficients on |r| <= pi/4: the first omitted terms are below 1e-16 of the result.
_SIN = (-1 / 6, 1 / 120, -1 / 5040, 1 / 362880, -1 / 39916800, 1 / 6227020800, -1 / 1307674368000)
_COS = (-1 / 2, 1 / 24, -1 / 720, 1 / 40320, -1 / 3628800, 1 / 479001600, -1 / 87178291200)


def _poly(r2, coefficients):
    acc = coefficients[-1] * r2
    for c in reversed(coefficients[:-1]):
        acc = (acc + c) * r2
    return acc


def sin_cos(x):
    """(sin x, cos x) for a float or an array, to within 2 ulp, from +, *, floor only."""
    x = np.asarray(x, dtype=float)
    k = np.floor(x / _HALF_PI_HI + 0.5)
    r = (x - k * _HALF_PI_HI) - k * _HALF_PI_LO
    r2 = r * r
    s = r + r * _poly(r2, _SIN)
    c = 1.0 + _poly(r2, _COS)
    quadrant = (k % 4).astype(int)
    sin = np.choose(quadrant, [s, c, -s, -c])
    cos = np.choose(quadrant, [c, -s, -c, s])
    if sin.ndim == 0:
        return float(sin), float(cos)
    return sin, cos


def sin(x):
    return sin_cos(x)[0]


def cos(x):
    return sin_cos(x)[1]


def radians(degrees):
    return np.asarray(degrees, dtype=float) * (np.pi / 180)


def dot(a, b) -> np.ndarray:
    """Dot product over the last axis (length 3), broadcasting, in a fixed order."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def norm(v) -> np.ndarray:
    """Euclidean length over the last axis."""
    return np.sqrt(dot(v, v))


def apply(matrix, vectors) -> np.ndarray:
    """`matrix` (3, 3) applied to each row of `vectors` (..., 3): `vectors @ matrix.T`."""
    matrix = np.asarray(matrix, dtype=float)
    return dot(np.asarray(vectors, dtype=float)[..., None, :], matrix)


def uniform(rng: np.random.Generator, low=0.0, high=1.0, size=None):
    """Like `rng.uniform`, but from 53 random integer bits and two separate IEEE operations, so a
    compiler's fused multiply-add (as on arm64) cannot change the value."""
    u = rng.integers(0, 2**53, size=size) * 2.0**-53
    value = np.asarray(low, dtype=float) + (np.asarray(high, dtype=float) - low) * u
    return float(value) if np.ndim(value) == 0 else value
