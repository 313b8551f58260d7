"""A small numpy ray-casting renderer for solid primitives, with a depth test.

Scenes are lists of `Primitive`s (box, ellipsoid, capped cylinder), each a unit shape placed by a
centre, a rotation and half-extents. A pinhole `Camera` casts one ray per pixel centre; the nearest
hit over all primitives wins (a z-buffer over analytic surfaces), which gives the colour, the object
mask and the depth. Keypoint visibility uses the same test: a 3D point is visible iff the first
surface along the ray from the camera through it is at its own depth.

Frames: the object frame has +x = the object's left, +y = up, +z = the object's front. Image
coordinates follow `diysc.geometry` (x right, y down, origin at the top-left pixel *corner*, so
pixel (i, j) has its centre at (i + 0.5, j + 0.5)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from diysc.datasets.synthetic import exact

BOX, ELLIPSOID, CYLINDER = "box", "ellipsoid", "cylinder"  # the cylinder's axis is its local y
_EPS = 1e-9


@dataclass(frozen=True)
class Texture:
    """Procedural pattern in object coordinates, so it stays on the surface across views."""

    kind: str = "plain"  # plain | stripes | checker | spots
    colour2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    frequency: float = 8.0
    direction: tuple[float, float, float] = (1.0, 0.0, 0.0)  # stripes only


@dataclass(frozen=True)
class Primitive:
    kind: str
    centre: np.ndarray  # (3,)
    half: np.ndarray  # (3,) half-extents along the local axes
    colour: tuple[float, float, float]  # RGB in [0, 1]
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # columns: local axes
    texture: Texture = Texture()
    part_of_object: bool = True  # False for occluders: they hide the object but are not in its mask


def rotation_x(degrees: float) -> np.ndarray:
    s, c = exact.sin_cos(exact.radians(degrees))
    return rotation_x_cos_sin(c, s)


def rotation_x_cos_sin(c: float, s: float) -> np.ndarray:
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rotation_z(degrees: float) -> np.ndarray:
    s, c = exact.sin_cos(exact.radians(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# --- camera -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """Pinhole camera. `rotation` rows are the camera axes (right, down, forward) in world frame."""

    position: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3) world -> camera
    focal: float  # pixels
    principal: tuple[float, float]  # (cx, cy) pixels
    width: int
    height: int
    azimuth: float = 0.0  # the `orbit` angles, degrees (kept: recomputing them needs atan2)
    elevation: float = 0.0

    @staticmethod
    def orbit(
        azimuth: float,
        elevation: float,
        distance: float,
        focal: float,
        width: int,
        height: int,
        principal: tuple[float, float] | None = None,
        target: np.ndarray | None = None,
    ) -> Camera:
        """Look at `target` from `azimuth` (0: the object's front, 90: its left side) and
        `elevation` (degrees above the horizon)."""
        target = np.zeros(3) if target is None else np.asarray(target, dtype=float)
        (sin_az, cos_az), (sin_el, cos_el) = (
            exact.sin_cos(exact.radians(a)) for a in (azimuth, elevation)
        )
        offset = np.array([sin_az * cos_el, sin_el, cos_az * cos_el])
        position = target + distance * offset
        forward = -offset
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= exact.norm(right)
        down = np.cross(forward, right)
        principal = (width / 2, height / 2) if principal is None else principal
        rotation = np.stack([right, down, forward])
        return Camera(position, rotation, focal, principal, width, height, azimuth, elevation)

    @property
    def intrinsics(self) -> np.ndarray:
        cx, cy = self.principal
        return np.array([[self.focal, 0, cx], [0, self.focal, cy], [0, 0, 1.0]])

    @property
    def extrinsics(self) -> np.ndarray:
        """(3, 4) [R | t] mapping world points to camera coordinates."""
        translation = -exact.apply(self.rotation, self.position)
        return np.concatenate([self.rotation, translation[:, None]], axis=1)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World (N, 3) -> image (N, 2) (x, y) and depth (N,) along the optical axis."""
        cam = exact.apply(self.rotation, np.asarray(points, dtype=float) - self.position)
        depth = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = self.focal * cam[:, :2] / depth[:, None] + np.asarray(self.principal)
        return xy, depth

    def pixel_rays(self) -> np.ndarray:
        """(H*W, 3) un-normalised world ray directions through every pixel centre, row-major."""
        cx, cy = self.principal
        xs = (np.arange(self.width) + 0.5 - cx) / self.focal
        ys = (np.arange(self.height) + 0.5 - cy) / self.focal
        gx, gy = np.meshgrid(xs, ys)
        cam = np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)], axis=1)
        return exact.apply(self.rotation.T, cam)  # camera -> world


# --- ray casting --------------------------------------------------------------------------------


def _hit_unit(kind: str, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry distance (inf on a miss) and local normal for rays o + t·d against a unit shape."""
    n = len(o)
    t = np.full(n, np.inf)
    normal = np.zeros((n, 3))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == ELLIPSOID:
            a, b, c = exact.dot(d, d), 2 * exact.dot(o, d), exact.dot(o, o) - 1
            disc = b * b - 4 * a * c
            root = (-b - np.sqrt(disc)) / (2 * a)
            ok = (disc >= 0) & (root > _EPS)
            t[ok] = root[ok]
            normal[ok] = o[ok] + root[ok, None] * d[ok]
        elif kind == BOX:
            t1, t2 = (-1 - o) / d, (1 - o) / d
            near, far = np.minimum(t1, t2), np.maximum(t1, t2)
            near = np.where(np.isnan(near), -np.inf, near)  # a ray lying in a face plane
            far = np.where(np.isnan(far), np.inf, far)
            t_in, t_out = near.max(1), far.min(1)
            ok = (t_in <= t_out) & (t_in > _EPS)
            t[ok] = t_in[ok]
            axis = near.argmax(1)[ok]
            normal[np.flatnonzero(ok), axis] = -np.sign(d[ok, axis])
        elif kind == CYLINDER:
            a = d[:, 0] ** 2 + d[:, 2] ** 2
            b = 2 * (o[:, 0] * d[:, 0] + o[:, 2] * d[:, 2])
            c = o[:, 0] ** 2 + o[:, 2] ** 2 - 1
            disc = b * b - 4 * a * c
            side = (-b - np.sqrt(disc)) / (2 * a)
            side_y = o[:, 1] + side * d[:, 1]
            side_ok = (disc >= 0) & (side > _EPS) & (np.abs(side_y) <= 1)
            cap_sign = -np.sign(d[:, 1])  # the cap facing the ray
            cap = (cap_sign - o[:, 1]) / d[:, 1]
            cap_xz = o[:, [0, 2]] + cap[:, None] * d[:, [0, 2]]
            cap_ok = (cap > _EPS) & (cap_xz[:, 0] ** 2 + cap_xz[:, 1] ** 2 <= 1)
            use_cap = cap_ok & (~side_ok | (cap < side))
            use_side = side_ok & ~use_cap
            t[use_side] = side[use_side]
            hit = o[use_side] + side[use_side, None] * d[use_side]
            normal[use_side] = hit * [1.0, 0.0, 1.0]
            t[use_cap] = cap[use_cap]
            normal[use_cap, 1] = cap_sign[use_cap]
        else:
            raise ValueError(f"unknown primitive kind {kind!r}")
    return t, normal


def cast(prims: list[Primitive], origin: np.ndarray, dirs: np.ndarray):
    """Nearest hit of rays `origin + t·dirs` (t in units of `dirs`) over all primitives.

    Returns (t (N,), index of the primitive hit (N,), -1 for none, world unit normal (N, 3)).
    """
    n = len(dirs)
    best_t = np.full(n, np.inf)
    best_i = np.full(n, -1)
    best_normal = np.zeros((n, 3))
    length2 = exact.dot(dirs, dirs)
    for i, prim in enumerate(prims):
        # Cull with the bounding sphere first: most rays miss small parts.
        rel = prim.centre - origin
        along = exact.dot(dirs, rel)
        miss2 = (
            exact.dot(rel, rel) - along**2 / length2
        )  # squared distance of the centre from the ray
        radius2 = exact.dot(prim.half, prim.half) * 1.0001
        near = np.flatnonzero((miss2 <= radius2) & (along > 0))
        if len(near) == 0:
            continue
        o = exact.apply(prim.rotation.T, origin - prim.centre) / prim.half
        d = exact.apply(prim.rotation.T, dirs[near]) / prim.half
        t, normal = _hit_unit(prim.kind, np.broadcast_to(o, d.shape), d)
        closer = t < best_t[near]
        idx = near[closer]
        best_t[idx] = t[closer]
        best_i[idx] = i
        world = exact.apply(prim.rotation, normal[closer] / prim.half)  # inverse-transpose scale
        best_normal[idx] = world / exact.norm(world).clip(_EPS)[:, None]
    return best_t, best_i, best_normal


def _pattern(texture: Texture, points: np.ndarray) -> np.ndarray:
    """Blend weight in [0, 1] of `colour2` at object-frame `points` (N, 3)."""
    f = texture.frequency
    if texture.kind == "stripes":
        return (exact.sin(f * exact.dot(points, texture.direction)) > 0).astype(float)
    if texture.kind == "checker":
        waves = exact.sin(f * points + 0.3)
        return (waves[:, 0] * waves[:, 1] * waves[:, 2] > 0).astype(float)
    if texture.kind == "spots":
        field_ = exact.sin(f * points[:, 0] + 1.3) + exact.sin(f * 1.3 * points[:, 1] + 0.7)
        field_ += exact.sin(f * 0.9 * points[:, 2] + 2.1)
        return (field_ > 1.4).astype(float)
    return np.zeros(len(points))


@dataclass(frozen=True)
class Render:
    image: np.ndarray  # (H, W, 3) float RGB in [0, 1]; NaN where no surface was hit
    object_mask: np.ndarray  # (H, W) bool: an object primitive is the nearest surface
    unoccluded_mask: np.ndarray  # (H, W) bool: the object's silhouette ignoring occluders
    depth: np.ndarray  # (H, W) ray distance (inf: background)


def render(
    prims: list[Primitive], camera: Camera, light: np.ndarray, ambient: float = 0.35
) -> Render:
    """Shade the nearest surface per pixel (Lambert + ambient, procedural texture)."""
    dirs = camera.pixel_rays()
    dirs = dirs / exact.norm(dirs)[:, None]
    t, index, normal = cast(prims, camera.position, dirs)
    hit = index >= 0
    colour = np.full((len(dirs), 3), np.nan)
    points = camera.position + t[hit, None] * dirs[hit]
    base = np.zeros((hit.sum(), 3))
    for i, prim in enumerate(prims):
        sel = index[hit] == i
        if sel.any():
            w = _pattern(prim.texture, points[sel])[:, None]
            base[sel] = (1 - w) * np.asarray(prim.colour) + w * np.asarray(prim.texture.colour2)
    light = np.asarray(light, dtype=float) / exact.norm(light)
    lambert = np.clip(exact.dot(normal[hit], light), 0, None)
    colour[hit] = np.clip(base * (ambient + (1 - ambient) * lambert[:, None]), 0, 1)
    is_object = np.array([p.part_of_object for p in prims] + [False])  # index -1 -> False
    object_mask = is_object[index]
    unoccluded = object_mask
    if not is_object[:-1].all():  # re-cast without the occluders to know what they hide
        _, silhouette, _ = cast([p for p in prims if p.part_of_object], camera.position, dirs)
        unoccluded = silhouette >= 0
    shape = (camera.height, camera.width)
    return Render(
        image=colour.reshape(*shape, 3),
        object_mask=object_mask.reshape(shape),
        unoccluded_mask=unoccluded.reshape(shape),
        depth=t.reshape(shape),
    )


def visible_points(
    prims: list[Primitive],
    camera: Camera,
    points: np.ndarray,
    owners: Sequence[Sequence[int]] = (),
    reach: np.ndarray | None = None,
    rel_tol: float = 1e-4,
) -> np.ndarray:
    """(N,) bool: each 3D point is in front of the camera, inside the image and not hidden.

    Hidden means another surface comes first along the ray from the camera to the point (a point
    on a surface facing away is hidden by the front of its own part). A point with `owners` (part
    indices; it lies inside them) is also visible where the first surface on its ray belongs to an
    owner and lies at most `reach` in front of it.
    """
    points = np.asarray(points, dtype=float)
    xy, depth = camera.project(points)
    inside = (depth > 0) & (xy[:, 0] >= 0) & (xy[:, 0] < camera.width)
    inside &= (xy[:, 1] >= 0) & (xy[:, 1] < camera.height)
    rays = points - camera.position
    t, index, _ = cast(prims, camera.position, rays)  # t = 1 at the point itself
    visible = t >= 1 - rel_tol
    if owners:
        gap = (1 - t) * exact.norm(rays)  # distance of the first surface in front
        owned = np.array([index[k] in owners[k] for k in range(len(points))])
        visible |= owned & (gap <= np.asarray(reach))
    return inside & visible
