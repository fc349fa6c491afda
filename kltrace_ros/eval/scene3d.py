"""3D scenes for `kltrace eval-long`: textured planes and boxes at several depths seen by a moving pinhole camera.

The world is in metres, in the camera's optical convention (x right, y down, z forward, REP-103): a ground plane
1.4 m below the camera, a back wall and side walls, boxes standing at 2-10 m and a pillar close to the camera, each
face a quad textured with a freely licensed photo (scikit-image's data folder) and shaded by its orientation. The
camera moves on one of three paths: ``sideways`` (a strafe: near and far surfaces move at very different speeds),
``forward`` (walking towards the wall with a gentle turn: surfaces grow) and ``orbit`` (around a box: faces turn
away, boxes hide each other). Rendering is exact ray casting (4 rays per pixel, averaged), so every query's track is
exact: its 3D point projected into every frame, visible when in view, in front of the camera, facing it and not
behind a nearer surface (a ray cast from the camera to it). Depth (z of the nearest surface at each pixel centre)
and the intrinsics come with the frames. Deterministic per seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .suite import photo_rgb

PATHS = ("sideways", "forward", "orbit")
TEXTURES = ["brick.png", "grass.png", "gravel.png", "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg",
            "hubble_deep_field.jpg", "color.png", "retina.jpg", "camera.png", "coins.png", "moon.png"]
LIGHT = np.array([0.4, -0.8, -0.45]) / np.linalg.norm([0.4, -0.8, -0.45])


@dataclass
class Quad:
    """A textured rectangle: corner ``origin``, edges ``u`` (along the texture's width) and ``v`` (its height)."""
    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    texture: np.ndarray      # (th, tw, 3) uint8, already shaded

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.u, self.v)
        return n / np.linalg.norm(n)


def hit(quads: list[Quad], origin: np.ndarray, dirs: np.ndarray, subsets: list | None = None):
    """Nearest intersection of rays ``origin + s * dirs`` (origin (3,), dirs (N,3)) with ``quads``: the ray parameter
    s (N,) (inf where nothing is hit), the quad index (N,) (-1) and the texture coordinates (N,2) in [0, 1].
    ``subsets[i]`` (indices, or None for all): the only rays that can meet quad i (a bounding box)."""
    n = len(dirs)
    best = np.full(n, np.inf)
    which = np.full(n, -1)
    uv = np.zeros((n, 2))
    for i, q in enumerate(quads):
        idx = subsets[i] if subsets is not None and subsets[i] is not None else slice(None)
        d = dirs[idx]
        normal = np.cross(q.u, q.v)
        denom = d @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            s = ((q.origin - origin) @ normal) / denom
        p = origin + s[:, None] * d - q.origin
        a = p @ q.u / (q.u @ q.u)
        b = p @ q.v / (q.v @ q.v)
        ok = (np.abs(denom) > 1e-12) & (s > 1e-6) & (s < best[idx]) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
        rows = np.arange(n)[idx][ok]
        best[rows], which[rows], uv[rows] = s[ok], i, np.stack([a[ok], b[ok]], 1)
    return best, which, uv


def sample(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup (N,3) float at coordinates ``uv`` (N,2) in [0, 1]."""
    th, tw = texture.shape[:2]
    x, y = uv[:, 0] * (tw - 1), uv[:, 1] * (th - 1)
    x0, y0 = np.minimum(x.astype(int), tw - 2), np.minimum(y.astype(int), th - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    t = texture.astype(np.float32)
    return ((t[y0, x0] * (1 - fx) + t[y0, x0 + 1] * fx) * (1 - fy)
            + (t[y0 + 1, x0] * (1 - fx) + t[y0 + 1, x0 + 1] * fx) * fy)


@dataclass
class Camera:
    """Pinhole camera: intrinsics ``K``, rotation ``R`` (world -> camera) and centre ``c`` (world)."""
    K: np.ndarray
    R: np.ndarray
    c: np.ndarray

    def rays(self, xy: np.ndarray) -> np.ndarray:
        """World directions (N,3) of the rays through pixel positions ``xy`` (N,2) (pixel centres at integers)."""
        d = np.linalg.solve(self.K, np.column_stack([xy, np.ones(len(xy))]).T).T
        return d @ self.R                                     # R^T d for each row

    def project(self, points: np.ndarray):
        """Pixels (N,2) and depth z (N,) of world points (N,3)."""
        cam = (points - self.c) @ self.R.T
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            px = (cam @ self.K.T)[:, :2] / z[:, None]
        return px, z

    @property
    def pose(self) -> np.ndarray:
        """4x4 camera-to-world transform."""
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = self.R.T, self.c
        return m


def look(K, c, target, roll: float = 0.0) -> Camera:
    """A camera at ``c`` looking at ``target`` (y down: the world's up is -y), rolled by ``roll`` radians."""
    z = np.asarray(target, float) - c
    z /= np.linalg.norm(z)
    x = np.cross([0.0, -1.0, 0.0], z) * -1
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])
    cr, sr = np.cos(roll), np.sin(roll)
    r = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]]) @ r
    return Camera(np.asarray(K, float), r, np.asarray(c, float))


def render(quads: list[Quad], cam: Camera, size: tuple[int, int], supersample: int = 2):
    """(H,W,3) uint8 image (``supersample``^2 rays per pixel, averaged) and (H,W) float32 depth (z of the nearest
    surface at each pixel centre, inf where none)."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    centres = np.column_stack([xs.ravel(), ys.ravel()]).astype(float)
    subsets = []
    for q in quads:   # the pixels a quad can cover: the box around its projected corners (all, if it is behind)
        corners = np.array([q.origin, q.origin + q.u, q.origin + q.v, q.origin + q.u + q.v])
        px, z = cam.project(corners)
        if (z <= 0.01).any():
            subsets.append(None)
            continue
        lo, hi = px.min(0) - 1, px.max(0) + 1
        subsets.append(np.flatnonzero((centres[:, 0] >= lo[0]) & (centres[:, 0] <= hi[0])
                                      & (centres[:, 1] >= lo[1]) & (centres[:, 1] <= hi[1])))
    acc = np.zeros((h * w, 3))
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    for dy in offsets:
        for dx in offsets:
            _, which, uv = hit(quads, cam.c, cam.rays(centres + [dx, dy]), subsets)
            for i, q in enumerate(quads):
                m = np.flatnonzero(which == i)
                if len(m):
                    acc[m] += sample(q.texture, uv[m])
    img = np.clip(acc / supersample ** 2 + 0.5, 0, 255).astype(np.uint8).reshape(h, w, 3)
    s, _, _ = hit(quads, cam.c, cam.rays(centres), subsets)     # rays with z = 1 in the camera: s is the depth
    return img, s.reshape(h, w).astype(np.float32)


def visible_from(quads: list[Quad], cam: Camera, points: np.ndarray, normals: np.ndarray, size) -> np.ndarray:
    """(N,) bool: world ``points`` (on surfaces with ``normals``) in view of ``cam``, in front of it, on a side facing
    it, and not behind a nearer surface (a ray from the camera reaches them first)."""
    w, h = size
    px, z = cam.project(points)
    inside = (z > 0.05) & (px[:, 0] >= 0) & (px[:, 0] <= w - 1) & (px[:, 1] >= 0) & (px[:, 1] <= h - 1)
    facing = np.einsum("nk,nk->n", normals, cam.c - points) > 0
    to = points - cam.c
    dist = np.linalg.norm(to, axis=1)
    s, _, _ = hit(quads, cam.c, to / dist[:, None])
    return inside & facing & (s >= dist * (1 - 1e-6) - 1e-6)


def _texture(rng, names, size_px: int, shade: float) -> np.ndarray:
    photo = photo_rgb(names[rng.integers(len(names))])
    ph, pw = photo.shape[:2]
    side = int(min(ph, pw) * rng.uniform(0.5, 0.9))
    y0, x0 = rng.integers(0, ph - side + 1), rng.integers(0, pw - side + 1)
    crop = cv2.resize(photo[y0:y0 + side, x0:x0 + side], (size_px, size_px), interpolation=cv2.INTER_AREA)
    return np.clip(crop.astype(np.float32) * shade, 0, 255).astype(np.uint8)


def _shade(normal) -> float:
    return 0.55 + 0.45 * abs(float(np.dot(normal, LIGHT)))


def _face(rng, origin, u, v, px_per_m: float = 90) -> Quad:
    origin, u, v = (np.asarray(a, float) for a in (origin, u, v))
    n = np.cross(u, v)
    size = int(np.clip(max(np.linalg.norm(u), np.linalg.norm(v)) * px_per_m, 64, 512))
    return Quad(origin, u, v, _texture(rng, TEXTURES, size, _shade(n / np.linalg.norm(n))))


def box(rng, centre, size) -> list[Quad]:
    """The five faces of a box standing on the ground (its bottom is hidden), each with its own texture."""
    (cx, cy, cz), (sx, sy, sz) = centre, size
    x0, x1, y0, y1, z0, z1 = cx - sx / 2, cx + sx / 2, cy - sy / 2, cy + sy / 2, cz - sz / 2, cz + sz / 2
    return [_face(rng, (x0, y0, z0), (sx, 0, 0), (0, sy, 0)),      # front (facing -z)
            _face(rng, (x1, y0, z1), (-sx, 0, 0), (0, sy, 0)),     # back
            _face(rng, (x0, y0, z1), (0, 0, -sz), (0, sy, 0)),     # left
            _face(rng, (x1, y0, z0), (0, 0, sz), (0, sy, 0)),      # right
            _face(rng, (x0, y0, z1), (sx, 0, 0), (0, 0, -sz))]     # top (y0 is up: y points down)


def _clear(centre, size, path_points, margin: float = 1.5) -> bool:
    """Whether a box at ``centre`` of ``size`` stays ``margin`` m away from every camera position (ground plane)."""
    half = np.asarray(size)[[0, 2]] / 2 + margin
    d = np.abs(np.asarray(path_points)[:, [0, 2]] - np.asarray(centre)[[0, 2]])
    return not ((d[:, 0] < half[0]) & (d[:, 1] < half[1])).any()


def scene(rng, path_points) -> list[Quad]:
    """Ground, back wall, two side walls, five to seven boxes at 3.5-10 m, and a pillar close to the camera's path
    (every box at least 1.5 m from the camera positions ``path_points``)."""
    ground_y = 1.4
    quads = [_face(rng, (-8, ground_y, -4), (16, 0, 0), (0, 0, 20), px_per_m=40),           # ground
             _face(rng, (-8, ground_y - 6, 14), (16, 0, 0), (0, 6, 0), px_per_m=40),        # back wall
             _face(rng, (-6, ground_y - 4, -2), (0, 0, 16), (0, 4, 0), px_per_m=40),        # left wall
             _face(rng, (6, ground_y - 4, 14), (0, 0, -16), (0, 4, 0), px_per_m=40)]        # right wall
    boxes = [((rng.uniform(-3.5, 3.5), 0, rng.uniform(3.5, 10)), (rng.uniform(0.6, 1.6), rng.uniform(0.5, 2.2),
                                                                  rng.uniform(0.6, 1.6))) for _ in range(12)]
    boxes = [b for b in boxes if _clear(*b, path_points)][: rng.integers(5, 8)]
    pillars = [((rng.uniform(-1.2, 1.2), 0, rng.uniform(1.8, 3.2)), (0.35, 2.8, 0.35)) for _ in range(8)]
    boxes += [b for b in pillars if _clear(*b, path_points)][:1]          # a pillar near the camera's path
    for (cx, _, cz), (sx, sy, sz) in boxes:
        quads += box(rng, (cx, ground_y - sy / 2, cz), (sx, sy, sz))
    return quads


def path(kind: str, rng, n_frames: int, K) -> list[Camera]:
    """The camera of every frame for a path ``kind`` (see the module doc); about 5-15 px per frame at 320 px."""
    t = np.linspace(0, 1, n_frames)
    cams = []
    if kind == "sideways":
        span, look_z = rng.uniform(3.5, 5.0), rng.uniform(6, 10)
        for s in t:
            c = np.array([(s - 0.5) * span, rng.uniform(-0.01, 0.01), 0.0])
            cams.append(look(K, c, (0.3 * (s - 0.5) * span, 0.3, look_z), roll=0.03 * np.sin(6 * s)))
    elif kind == "forward":
        dist, turn = rng.uniform(2.0, 3.0), rng.uniform(-0.25, 0.25)
        for s in t:
            c = np.array([0.4 * np.sin(np.pi * s) * np.sign(turn), 0.0, dist * s])
            heading = turn * np.sin(np.pi * s / 2)
            cams.append(look(K, c, c + (np.sin(heading), 0.12, np.cos(heading)), roll=0.02 * np.sin(5 * s)))
    elif kind == "orbit":
        centre, radius, sweep = np.array([0.0, 0.4, 6.0]), rng.uniform(4.0, 5.0), rng.uniform(0.5, 0.8)
        a0 = rng.uniform(-0.2, 0.2)
        for s in t:
            a = a0 + sweep * (s - 0.5)
            c = centre + radius * np.array([np.sin(a), 0.0, -np.cos(a)]) + [0, -0.5, 0]
            cams.append(look(K, c, centre))
    else:
        raise ValueError(f"path must be one of {PATHS}, got {kind!r}")
    return cams


def render_sequence(seed: int, n_frames: int = 48, size: tuple[int, int] = (320, 240), n_queries: int = 64,
                    kind: str | None = None) -> dict:
    """Frames (T,H,W,3), depth (T,H,W), intrinsics K, camera poses (T,4,4) (camera to world), queries (N,2) on
    surfaces of frame 0, exact tracks (T,N,2) and visibility (T,N), and each query's 3D point and surface normal."""
    rng = np.random.default_rng(seed)
    kind = kind or PATHS[seed % len(PATHS)]
    w, h = size
    f = 0.9 * w
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    cams = path(kind, rng, n_frames, K)
    quads = scene(rng, [cam.c for cam in cams])
    frames, depth = zip(*(render(quads, cam, size) for cam in cams))
    # queries: pixels of frame 0 on a surface, away from the border, spread over near and far
    margin = 0.06 * min(w, h)
    cand = rng.uniform([margin, margin], [w - 1 - margin, h - 1 - margin], (8 * n_queries, 2))
    s, which, _ = hit(quads, cams[0].c, cams[0].rays(cand))
    cand, s, which = cand[which >= 0], s[which >= 0], which[which >= 0]
    q = cand[:n_queries]
    points = cams[0].c + s[:n_queries, None] * cams[0].rays(q)
    normals = np.stack([quads[i].normal for i in which[:n_queries]])
    normals *= np.sign(np.einsum("nk,nk->n", normals, cams[0].c - points))[:, None]   # the side seen at frame 0
    tracks = np.stack([cam.project(points)[0] for cam in cams])
    visible = np.stack([visible_from(quads, cam, points, normals, size) for cam in cams])
    return {"name": f"3d_{seed:03d}_{kind}_{w}x{h}", "frames": np.stack(frames), "depth": np.stack(depth), "K": K,
            "poses": np.stack([cam.pose for cam in cams]), "queries": q, "tracks": tracks, "visible": visible,
            "points": points, "normals": normals}
