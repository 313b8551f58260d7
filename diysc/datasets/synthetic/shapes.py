"""Procedural 3D model families for the synthetic dataset: a car, a quadruped and a chair.

Each family builds one random instance from a numpy `Generator`: proportions, colours and texture
vary, the part structure and the keypoints do not. Keypoints are 3D points in a fixed slot order;
names containing "left"/"right" are bilateral counterparts. A keypoint is either on a part's
surface (visible where the depth test reaches it: lights, roof corners, shoulders) or just inside a
part that owns it (wheels, eyes, ears, paws, feet: visible where the first surface along the
keypoint's line of sight is that part, close in front of the point, as an annotator marks a paw seen
from either side but not the far end of a rail seen end-on). Object frame as in
`diysc.datasets.synthetic.render`: +x = the object's left, +y = up, +z = its front; the model is
centred on its bounding box.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diysc.datasets.synthetic import exact
from diysc.datasets.synthetic.render import (
    BOX,
    CYLINDER,
    ELLIPSOID,
    Primitive,
    Texture,
    rotation_x,
    rotation_x_cos_sin,
    rotation_z,
)

SIDES = ((1.0, "left"), (-1.0, "right"))  # +x is the object's left


@dataclass(frozen=True)
class Model:
    category: str
    parts: list[Primitive]
    keypoints: np.ndarray  # (K, 3) object frame, in the slot order of `Family.names`
    owners: tuple[tuple[int, ...], ...]  # per keypoint: indices of the parts it lies inside
    reach: np.ndarray  # (K,) how far in front of a keypoint an owner's surface still shows it
    radius: float  # of the bounding sphere around the origin


@dataclass(frozen=True)
class Family:
    names: tuple[str, ...]  # keypoint slot i is names[i]
    build: Callable[[np.random.Generator], _Parts]

    @property
    def symmetry_pairs(self) -> list[list[int]]:
        """[i, j] slot pairs of left/right counterparts (i is the left one)."""
        return [
            [i, self.names.index(n.replace("left", "right"))]
            for i, n in enumerate(self.names)
            if "left" in n
        ]


def _colour(rng: np.random.Generator, hue=(0.0, 1.0), sat=(0.4, 0.9), val=(0.4, 0.95)):
    return colorsys.hsv_to_rgb(
        exact.uniform(rng, *hue) % 1.0, exact.uniform(rng, *sat), exact.uniform(rng, *val)
    )


def _texture(rng: np.random.Generator, kinds: tuple[str, ...], colour2) -> Texture:
    direction = exact.uniform(rng, -1, 1, 3)  # not isotropic, which a texture does not need
    return Texture(
        kind=str(rng.choice(kinds)),
        colour2=tuple(colour2),
        frequency=float(exact.uniform(rng, 6, 16)),
        direction=tuple(float(v) for v in direction / exact.norm(direction)),
    )


PLAIN = Texture()


def _prim(kind, centre, half, colour, rotation=None, texture=PLAIN) -> Primitive:
    return Primitive(
        kind,
        np.asarray(centre, dtype=float),
        np.asarray(half, dtype=float),
        tuple(float(c) for c in colour),
        np.eye(3) if rotation is None else rotation,
        texture,
    )


class _Parts:
    """Collects a model's primitives and named keypoints while a family builds it."""

    def __init__(self) -> None:
        self.parts: list[Primitive] = []
        self.keypoints: dict[str, tuple[np.ndarray, tuple[int, ...], float]] = {}

    def add(self, *args, **kwargs) -> int:
        self.parts.append(_prim(*args, **kwargs))
        return len(self.parts) - 1

    def point(self, name: str, xyz, owners: tuple[int, ...] = (), reach: float = 0.0) -> None:
        """A keypoint. With `owners` it sits inside those parts and is also visible where the first
        surface on its line of sight is an owner at most `reach` in front of it."""
        self.keypoints[name] = (np.asarray(xyz, dtype=float), owners, reach)


AXLE = rotation_z(90)  # a cylinder whose axis (local y) runs along the object's x


def _car(rng: np.random.Generator) -> _Parts:
    length, width = exact.uniform(rng, 1.8, 2.4), exact.uniform(rng, 0.8, 1.0)
    body_h, wheel_r, wheel_w = (
        exact.uniform(rng, 0.32, 0.45),
        exact.uniform(rng, 0.17, 0.23),
        exact.uniform(rng, 0.12, 0.17),
    )
    floor = wheel_r * exact.uniform(rng, 0.55, 0.8)  # underside of the body
    cab_len, cab_h = length * exact.uniform(rng, 0.45, 0.6), exact.uniform(rng, 0.25, 0.38)
    cab_z, cab_w = length * exact.uniform(rng, -0.15, 0.05), width * 0.86
    axle_z = length * exact.uniform(rng, 0.28, 0.36)
    paint = _colour(rng)
    skin = _texture(rng, ("plain", "plain", "stripes", "spots"), _colour(rng))
    glass = np.array([0.15, 0.2, 0.28]) * exact.uniform(rng, 0.7, 1.3)
    tyre, rim = (0.08, 0.08, 0.09), _colour(rng, sat=(0.0, 0.15), val=(0.6, 0.9))
    headlight = _colour(rng, hue=(0.1, 0.17), sat=(0.0, 0.3), val=(0.9, 1.0))
    top = floor + body_h + cab_h + 0.03  # roof top face
    m = _Parts()
    m.add(BOX, (0, floor + body_h / 2, 0), (width / 2, body_h / 2, length / 2), paint, texture=skin)
    m.add(BOX, (0, floor + body_h + cab_h / 2, cab_z), (cab_w / 2, cab_h / 2, cab_len / 2), glass)
    m.add(
        BOX,
        (0, top - 0.015, cab_z),
        (cab_w / 2 + 0.01, 0.015, cab_len / 2 + 0.01),
        paint,
        texture=skin,
    )
    light_x, light_y = (
        width * exact.uniform(rng, 0.28, 0.36),
        floor + body_h * exact.uniform(rng, 0.6, 0.8),
    )
    for sx, side in SIDES:
        for sz, end in ((1.0, "front"), (-1.0, "rear")):
            # four identical wheels: a tyre and a hub cap on its outer face
            wheel_x = sx * (width / 2 - wheel_w / 2 + 0.03)
            tyre_i = m.add(
                CYLINDER,
                (wheel_x, wheel_r, sz * axle_z),
                (wheel_r, wheel_w / 2, wheel_r),
                tyre,
                AXLE,
            )
            hub_i = m.add(
                CYLINDER,
                (sx * (width / 2 + 0.03), wheel_r, sz * axle_z),
                (wheel_r * 0.55, 0.015, wheel_r * 0.55),
                rim,
                AXLE,
            )
            m.point(
                f"{end} {side} wheel",
                (sx * (width / 2 + 0.03), wheel_r, sz * axle_z),
                (tyre_i, hub_i),
                wheel_r * 1.1,
            )
            lamp = headlight if end == "front" else (0.85, 0.05, 0.05)
            m.add(
                BOX,
                (sx * light_x, light_y, sz * (length / 2 + 0.01)),
                (width * 0.09, body_h * 0.12, 0.015),
                lamp,
            )
            m.point(f"{end} {side} light", (sx * light_x, light_y, sz * (length / 2 + 0.025)))
            m.point(
                f"roof {end} {side} corner",
                (sx * (cab_w / 2 - 0.03), top, cab_z + sz * (cab_len / 2 - 0.03)),
            )
        mirror = (sx * (cab_w / 2 + 0.05), floor + body_h + 0.06, cab_z + cab_len / 2 - 0.06)
        mirror_i = m.add(BOX, mirror, (0.05, 0.03, 0.02), paint)
        m.point(
            f"{side} mirror", (sx * (cab_w / 2 + 0.08), mirror[1], mirror[2]), (mirror_i,), 0.06
        )
    return m


def _quadruped(rng: np.random.Generator) -> _Parts:
    half_len, half_w, half_h = (
        exact.uniform(rng, 0.65, 0.9),
        exact.uniform(rng, 0.22, 0.32),
        exact.uniform(rng, 0.25, 0.33),
    )
    leg_len, leg_r = exact.uniform(rng, 0.5, 0.9), exact.uniform(rng, 0.055, 0.085)
    y0 = leg_len + half_h * 0.6  # torso centre height
    coat = _colour(rng, hue=(0.02, 0.12), sat=(0.2, 0.8), val=(0.2, 0.9))
    skin = _texture(
        rng, ("plain", "spots", "stripes"), _colour(rng, sat=(0.0, 0.3), val=(0.05, 1.0))
    )
    m = _Parts()
    m.add(ELLIPSOID, (0, y0, 0), (half_w, half_h, half_len), coat, texture=skin)
    # neck from the front of the torso up to the head
    angle, neck_len, neck_r = (
        exact.uniform(rng, 30, 60),
        exact.uniform(rng, 0.3, 0.55),
        exact.uniform(rng, 0.1, 0.15),
    )
    base = np.array([0, y0 + half_h * 0.5, half_len * 0.8])
    sin_angle, cos_angle = exact.sin_cos(exact.radians(angle))
    head_c = base + neck_len * np.array([0, sin_angle, cos_angle])
    m.add(
        ELLIPSOID,
        (base + head_c) / 2,
        (neck_r, neck_len / 2 + neck_r * 0.5, neck_r),
        coat,
        rotation_x(90 - angle),
        skin,
    )
    head = np.array(
        [
            exact.uniform(rng, 0.13, 0.18),
            exact.uniform(rng, 0.12, 0.17),
            exact.uniform(rng, 0.18, 0.26),
        ]
    )
    m.add(ELLIPSOID, head_c, head, coat, texture=skin)
    snout_c = head_c + [0, -head[1] * 0.3, head[2] * 0.9]
    snout = head * [0.6, 0.55, 0.55]
    snout_i = m.add(ELLIPSOID, snout_c, snout, _colour(rng, sat=(0.1, 0.4), val=(0.2, 0.7)))
    m.point("nose", snout_c + [0, 0, snout[2] * 0.8], (snout_i,), 0.6 * snout.max())
    for sx, side in SIDES:
        u = np.array([sx * 0.7, 0.35, 0.62])
        eye_c = head_c + u / exact.norm(u) * head  # on the head's surface
        eye_i = m.add(ELLIPSOID, eye_c, (0.035,) * 3, (0.02, 0.02, 0.02))
        m.point(f"{side} eye", eye_c, (eye_i,), 0.04)
        tilt = rotation_z(-sx * 20)
        ear_c = head_c + [sx * head[0] * 0.6, head[1] * 0.9 + 0.05, -head[2] * 0.3]
        ear_i = m.add(ELLIPSOID, ear_c, (0.05, 0.1, 0.035), coat, tilt)
        m.point(f"{side} ear tip", ear_c + exact.apply(tilt, [0, 0.08, 0]), (ear_i,), 0.06)
    for sx, side in SIDES:
        for sz, end in ((1.0, "front"), (-1.0, "hind")):
            leg_x, leg_z = sx * half_w * 0.6, sz * half_len * 0.62
            leg_i = m.add(
                CYLINDER, (leg_x, y0 / 2, leg_z), (leg_r, y0 / 2, leg_r), coat, texture=skin
            )
            m.point(f"{end} {side} paw", (leg_x, 0.04, leg_z), (leg_i,), leg_r * 1.2)
            joint = "shoulder" if end == "front" else "hip"
            m.point(
                f"{side} {joint}", (sx * half_w * np.sqrt(1 - 0.55**2), y0, sz * half_len * 0.55)
            )
    m.point("withers", (0, y0 + half_h * np.sqrt(1 - 0.5**2), half_len * 0.5))
    # tail: b > 0 hangs down, b < 0 points up
    b, tail_len = exact.radians(exact.uniform(rng, -40, 60)), exact.uniform(rng, 0.35, 0.6)
    sin_b, cos_b = exact.sin_cos(b)
    direction = np.array([0, -sin_b, -cos_b])
    start = np.array([0, y0 + half_h * 0.4, -half_len * 0.95])
    spin = rotation_x_cos_sin(-sin_b, -cos_b)  # turns the local y axis onto `direction`
    tail_i = m.add(
        ELLIPSOID, start + direction * tail_len / 2, (0.035, tail_len / 2, 0.035), coat, spin
    )
    m.point("tail tip", start + direction * tail_len * 0.92, (tail_i,), 0.06)
    return m


def _chair(rng: np.random.Generator) -> _Parts:
    seat_w, seat_d, seat_t = (
        exact.uniform(rng, 0.8, 1.1),
        exact.uniform(rng, 0.75, 1.0),
        exact.uniform(rng, 0.06, 0.12),
    )
    seat_y, leg_half = (
        exact.uniform(rng, 0.8, 1.05),
        exact.uniform(rng, 0.03, 0.05),
    )  # seat underside height
    back_t, back_h, inset = (
        exact.uniform(rng, 0.05, 0.09),
        exact.uniform(rng, 0.6, 1.0),
        exact.uniform(rng, 0.0, 0.05),
    )
    wood = _colour(rng, hue=(0.04, 0.12), sat=(0.4, 0.8), val=(0.3, 0.8))
    if exact.uniform(rng) < 0.4:
        wood = _colour(rng)
    grain = _texture(rng, ("plain", "stripes", "checker"), np.array(wood) * 0.6)
    leg_kind = CYLINDER if exact.uniform(rng) < 0.5 else BOX
    top = seat_y + seat_t
    m = _Parts()
    seat_i = m.add(
        BOX, (0, seat_y + seat_t / 2, 0), (seat_w / 2, seat_t / 2, seat_d / 2), wood, texture=grain
    )
    for sx, side in SIDES:
        for sz, end in ((1.0, "front"), (-1.0, "rear")):
            leg_x = sx * (seat_w / 2 - leg_half - inset)
            leg_z = sz * (seat_d / 2 - leg_half - inset)
            leg_i = m.add(
                leg_kind,
                (leg_x, seat_y / 2, leg_z),
                (leg_half, seat_y / 2, leg_half),
                wood,
                texture=grain,
            )
            m.point(f"{end} {side} foot", (leg_x, 0.03, leg_z), (leg_i,), leg_half * 1.5)
            corner_z = seat_d / 2 - 0.03 if end == "front" else -seat_d / 2 + back_t + 0.03
            m.point(
                f"seat {end} {side} corner",
                (sx * (seat_w / 2 - 0.03), top - 0.01, corner_z),
                (seat_i,),
                0.045,
            )
    # backrest, tilted backwards about its bottom edge
    pivot = np.array([0, top, -seat_d / 2 + back_t / 2])
    tilt = rotation_x(-exact.uniform(rng, 0, 12))
    if exact.uniform(rng) < 0.5:
        back = [((0, back_h / 2, 0), (seat_w / 2, back_h / 2, back_t / 2))]
    else:  # a top rail, a middle rail and two posts
        rail = exact.uniform(rng, 0.08, 0.15)
        back = [
            ((0, back_h - rail / 2, 0), (seat_w / 2, rail / 2, back_t / 2)),
            ((0, back_h * 0.5, 0), (seat_w / 2, rail / 3, back_t / 3)),
        ]
        back += [
            ((sx * (seat_w / 2 - leg_half), back_h / 2, 0), (leg_half, back_h / 2, back_t / 2))
            for sx, _ in SIDES
        ]
    back_i = [
        m.add(BOX, pivot + exact.apply(tilt, centre), half, wood, tilt, grain)
        for centre, half in back
    ]
    for sx, side in SIDES:  # inside the top rail (or the solid back), near its corner
        corner = pivot + exact.apply(tilt, [sx * (seat_w / 2 - 0.03), back_h - 0.03, 0])
        m.point(f"back top {side} corner", corner, (back_i[0],), 0.05)
    if exact.uniform(rng) < 0.3:  # armrests
        arm_y = top + exact.uniform(rng, 0.2, 0.3)
        for sx, _ in SIDES:
            m.add(BOX, (sx * (seat_w / 2 - 0.03), arm_y, 0), (0.03, 0.02, seat_d / 2 - 0.05), wood)
            m.add(
                BOX,
                (sx * (seat_w / 2 - 0.03), (top + arm_y) / 2, seat_d / 2 - 0.1),
                (0.025, (arm_y - top) / 2, 0.025),
                wood,
            )
    return m


def _names(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for g in groups for n in g)


FAMILIES: dict[str, Family] = {
    "car": Family(
        _names(
            ("front left wheel", "front right wheel", "rear left wheel", "rear right wheel"),
            ("front left light", "front right light", "rear left light", "rear right light"),
            ("left mirror", "right mirror"),
            (
                "roof front left corner",
                "roof front right corner",
                "roof rear left corner",
                "roof rear right corner",
            ),
        ),
        _car,
    ),
    "quadruped": Family(
        _names(
            ("left eye", "right eye", "left ear tip", "right ear tip", "nose"),
            ("front left paw", "front right paw", "hind left paw", "hind right paw"),
            ("left shoulder", "right shoulder", "left hip", "right hip", "withers", "tail tip"),
        ),
        _quadruped,
    ),
    "chair": Family(
        _names(
            (
                "seat front left corner",
                "seat front right corner",
                "seat rear left corner",
                "seat rear right corner",
            ),
            ("front left foot", "front right foot", "rear left foot", "rear right foot"),
            ("back top left corner", "back top right corner"),
        ),
        _chair,
    ),
}


def build(category: str, rng: np.random.Generator) -> Model:
    """One random instance of `category`, centred on its bounding box."""
    family = FAMILIES[category]
    made = family.build(rng)
    if set(made.keypoints) != set(family.names):  # a family's builder and its slot list agree
        raise AssertionError(
            f"{category}: keypoints {sorted(set(made.keypoints) ^ set(family.names))}"
        )
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    extent = np.concatenate(
        [p.centre + exact.apply(p.rotation, corners * p.half) for p in made.parts]
    )
    mid = (extent.min(0) + extent.max(0)) / 2
    parts = [
        Primitive(p.kind, p.centre - mid, p.half, p.colour, p.rotation, p.texture)
        for p in made.parts
    ]
    keypoints = np.array([made.keypoints[n][0] for n in family.names]) - mid
    owners = tuple(made.keypoints[n][1] for n in family.names)
    reach = np.array([made.keypoints[n][2] for n in family.names])
    return Model(category, parts, keypoints, owners, reach, float(exact.norm(extent - mid).max()))
