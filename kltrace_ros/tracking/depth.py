"""Tracks in 3D for RGB-D cameras: depth read at a track, the pixel back-projected through the camera model, and a
velocity from two frames' depths and stamps.

Frame and units (REP-103, the optical frame of the colour image's ``header.frame_id``): x right, y down, z forward,
metres and metres per second. Depth is aligned to the colour image (one depth value per colour pixel, REP-118) and
is the z of the point, not the length of its ray.

Depth is read robustly: the median of the valid values (finite, > 0) in a small square around the pixel. A track
gets no 3D where too few values are valid (a hole) or where the neighbourhood straddles a depth edge (its valid
values spread by more than ``edge`` of their median: a near surface beside a far one, where any one value may be
the wrong surface); a value is never interpolated across an edge.
"""
from __future__ import annotations

import threading
import warnings
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

MODELS = ("plumb_bob", "rational_polynomial")   # camera_info distortion models handled (ROS names)
# why a track has no 3D (``depth_at``'s status codes)
OK, OUTSIDE, HOLE, EDGE = 0, 1, 2, 3


class CameraError(ValueError):
    """camera_info that cannot be used; the message names the problem and the fix."""


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics ``K`` (3x3) and distortion ``D`` (plumb_bob: 5, rational_polynomial: 8 coefficients; none:
    no distortion) of an image of ``size`` (W, H)."""
    K: np.ndarray
    D: np.ndarray
    size: tuple[int, int]

    @classmethod
    def from_info(cls, k, d, distortion_model: str, width: int, height: int, p=None) -> "CameraModel":
        """From the fields of a sensor_msgs/CameraInfo (``k`` row-major 3x3, ``d``), checked. ``p`` (the 3x4
        projection): the images are rectified, so their intrinsics are P's left 3x3 and there is no distortion."""
        if p is not None:
            P = np.asarray(p, np.float64).reshape(-1)
            if P.size != 12:
                raise CameraError(f"camera_info p must be 12 numbers for rectified images, got {P.size}")
            return cls.from_info(P.reshape(3, 4)[:, :3].reshape(-1), [], "", width, height)
        K = np.asarray(k, np.float64).reshape(-1)
        if K.size != 9 or not np.isfinite(K).all():
            raise CameraError(f"camera_info k must be 9 finite numbers, got {K.size}: calibrate the camera "
                              f"(camera_calibration) or publish its intrinsics")
        K = K.reshape(3, 3)
        fx, fy = K[0, 0], K[1, 1]
        if fx <= 0 or fy <= 0:
            raise CameraError(f"camera_info focal length fx={fx:g}, fy={fy:g}: an uncalibrated camera (k all zero) "
                              f"cannot place points in 3D; calibrate it (camera_calibration) or publish its intrinsics")
        D = np.asarray(d, np.float64).reshape(-1)
        model = (distortion_model or "").strip()
        if D.size and np.any(D != 0) and model not in MODELS:
            raise CameraError(f"camera_info distortion model '{model}' is not handled (only {', '.join(MODELS)}): "
                              f"track rectified images (image_proc's image_rect) and set rectified:=true (their "
                              f"camera_info's p is used, without distortion)")
        sizes = {"plumb_bob": (4, 5), "rational_polynomial": (8,)}.get(model, ())
        if D.size and np.any(D != 0) and D.size not in sizes:
            raise CameraError(f"camera_info has {D.size} distortion coefficients for '{model}' (expected "
                              f"{' or '.join(map(str, sizes))}): recalibrate the camera or fix its driver's "
                              f"camera_info")
        if not np.isfinite(D).all():
            raise CameraError("camera_info distortion coefficients are not finite: recalibrate the camera")
        if int(width) <= 0 or int(height) <= 0:
            raise CameraError(f"camera_info size {width}x{height}: publish the calibrated image size")
        return cls(K, D if np.any(D != 0) else np.zeros(0), (int(width), int(height)))

    def rays(self, pixels: np.ndarray) -> np.ndarray:
        """(N,3) rays (x, y, 1) of pixels (N,2) (x, y; pixel centres at whole numbers, as ROS's camera_info),
        distortion removed: a point at depth z is z times its ray."""
        pts = np.asarray(pixels, np.float64).reshape(-1, 1, 2)
        if len(pts) == 0:
            return np.zeros((0, 3))
        if self.D.size:
            xy = cv2.undistortPoints(pts, self.K, self.D).reshape(-1, 2)
        else:
            xy = (pts.reshape(-1, 2) - self.K[:2, 2]) / [self.K[0, 0], self.K[1, 1]]
        return np.concatenate([xy, np.ones((len(xy), 1))], 1)


def depth_at(depth: np.ndarray, pixels: np.ndarray, radius: int = 2, edge: float = 0.1,
             min_valid: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Depth (N,) in metres at pixels (N,2) of a depth image (H,W) in metres (NaN, inf or 0 where unknown) and a
    status per pixel (``OK``, ``OUTSIDE`` the image, a ``HOLE``: under ``min_valid`` of the (2r+1)^2 values valid,
    an ``EDGE``: the valid values spread by more than ``edge`` of their median). Depth is NaN unless OK."""
    pts = np.asarray(pixels, np.float64).reshape(-1, 2)
    h, w = depth.shape[:2]
    z = np.full(len(pts), np.nan)
    status = np.full(len(pts), OUTSIDE, np.int8)
    if len(pts) == 0:
        return z, status
    col, row = np.rint(pts[:, 0]), np.rint(pts[:, 1])
    inside = np.isfinite(pts).all(1) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    if not inside.any():
        return z, status
    d = np.arange(-radius, radius + 1)
    rr = np.clip(row[inside, None, None].astype(int) + d[None, :, None], 0, h - 1)
    cc = np.clip(col[inside, None, None].astype(int) + d[None, None, :], 0, w - 1)
    near = np.asarray(depth[rr, cc], np.float64).reshape(len(rr), -1)      # M, (2r+1)^2
    near = np.where(np.isfinite(near) & (near > 0), near, np.nan)
    valid = np.isfinite(near).sum(1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN neighbourhoods: holes, reported as such
        med = np.nanmedian(near, 1)
        spread = (np.nanmax(near, 1) - np.nanmin(near, 1)) / med
    hole = valid < max(1, min_valid * near.shape[1])
    on_edge = ~hole & ~(spread <= edge)
    st = np.where(hole, HOLE, np.where(on_edge, EDGE, OK)).astype(np.int8)
    status[inside] = st
    z[inside] = np.where(st == OK, med, np.nan)
    return z, status


@dataclass
class Lift:
    """3D of the tracks of one pair (N = tracks): positions at the newer frame and velocities, with validity."""
    position: np.ndarray          # (N,3) m, NaN where not valid
    velocity: np.ndarray          # (N,3) m/s, NaN where not valid
    has_position: np.ndarray      # (N,) bool
    has_velocity: np.ndarray      # (N,) bool
    status: np.ndarray            # (N,) why not: depth_at's codes at the newer frame


def lift_tracks(camera: CameraModel, depth: np.ndarray, pixels: np.ndarray, older_depth: np.ndarray | None = None,
                older_pixels: np.ndarray | None = None, seconds: float = 0.0, radius: int = 2,
                edge: float = 0.1) -> Lift:
    """Positions of tracks at ``pixels`` (N,2) of the newer frame with its ``depth`` (H,W) m; with the older frame's
    depth and the tracks' ``older_pixels`` (N,2; NaN: not traced on this pair) ``seconds`` earlier, velocities too."""
    z, status = depth_at(depth, pixels, radius, edge)
    pos = camera.rays(pixels) * z[:, None]
    has_pos = status == OK
    vel = np.full_like(pos, np.nan)
    has_vel = np.zeros(len(pos), bool)
    if older_depth is not None and older_pixels is not None and seconds > 0:
        old = np.asarray(older_pixels, np.float64).reshape(-1, 2)
        z0, st0 = depth_at(older_depth, old, radius, edge)
        has_vel = has_pos & (st0 == OK)
        if has_vel.any():
            vel[has_vel] = (pos[has_vel] - camera.rays(old[has_vel]) * z0[has_vel, None]) / seconds
    return Lift(pos, vel, has_pos, has_vel, status)


class DepthError(ValueError):
    """Depth that cannot be used with the colour frames (size, units, stamps); the message names the fix."""


class DepthStream:
    """The depth side of one RGB-D camera: its camera_info, depth frames matched to colour frames by stamp, and the
    3D of each traced pair's tracks. ``add`` may be called from another thread (a subscription callback); the rest
    belongs to the thread that traces. ``decode`` turns what ``add`` was given into a depth image (H,W) in metres,
    only for the frames that are used. Depth is matched when a pair has been traced (its depth has had the tracing
    time to arrive); the newer frame's decoded depth is kept as the next pair's older one."""

    def __init__(self, tolerance_ns: int, decode=lambda item: item, keep: int = 64, rectified: bool = False):
        self.tolerance_ns = int(tolerance_ns)
        self.decode = decode
        self.rectified = rectified
        self._lock = threading.Lock()
        self._items: deque = deque(maxlen=keep)          # (stamp_ns, item), as received
        self._last: tuple | None = None                   # (colour stamp, its depth, ids of tracks visible there)
        self._info = None
        self.camera: CameraModel | CameraError | None = None
        self.matched = 0
        self.unmatched = 0                                # pairs without depth within the tolerance
        self.nearest_ms: float | None = None              # how far the nearest depth was, at the last miss
        self.latest_ns: int | None = None                 # stamp of the newest depth added

    def add(self, stamp_ns: int, item) -> None:
        with self._lock:
            self._items.append((int(stamp_ns), item))
            self.latest_ns = int(stamp_ns)

    def use_camera_info(self, info) -> None:
        """The camera model of a sensor_msgs/CameraInfo (rclpy or rosbags); a new one replaces the old."""
        if info is self._info:
            return
        self._info = info
        try:
            self.camera = CameraModel.from_info(info.k, info.d, info.distortion_model, info.width, info.height,
                                                p=info.p if self.rectified else None)
        except CameraError as err:
            self.camera = err

    def _depth(self, stamp_ns: int) -> np.ndarray | None:
        """The decoded depth nearest in stamp to ``stamp_ns`` within the tolerance, or None."""
        with self._lock:
            items = list(self._items)
        best = min(items, key=lambda it: abs(it[0] - stamp_ns), default=None)
        if best is None or abs(best[0] - stamp_ns) > self.tolerance_ns:
            self.nearest_ms = None if best is None else abs(best[0] - stamp_ns) / 1e6
            return None
        return np.asarray(self.decode(best[1]), np.float32)

    def lift(self, result, shape: tuple[int, int]) -> Lift | None:
        """3D of ``result``'s visible tracks (a ``pipeline.PairResult`` of colour frames of ``shape`` (H, W)), or
        None (counted) when its newer frame has no depth. A velocity needs the older frame's depth and the track
        measured there (visible, or seeded there), not guessed. Raises CameraError or DepthError (ImageError from
        ``decode``) with the fix when camera_info or the depth image cannot be used."""
        if self.camera is None:
            raise CameraError("no camera_info received: remap camera_info to the colour camera's")
        if isinstance(self.camera, CameraError):
            raise self.camera
        newer_ns, older_ns = int(result.newer_stamp_ns), int(result.older_stamp_ns)
        last, self._last = self._last, None
        depth = self._depth(newer_ns)
        if depth is None:
            self.unmatched += 1
            return None
        self.matched += 1
        h, w = shape
        if depth.shape != (h, w):
            raise DepthError(f"depth image {depth.shape[1]}x{depth.shape[0]} does not match the colour image {w}x{h}: "
                             f"publish depth registered to the colour camera (e.g. depth_image_proc/register, or the "
                             f"driver's aligned depth topic)")
        if self.camera.size != (w, h):
            raise DepthError(f"camera_info is for {self.camera.size[0]}x{self.camera.size[1]} images, the colour "
                             f"image is {w}x{h}: publish the colour camera's own camera_info")
        tracks = result.tracks
        xy = np.array([[t.x, t.y] for t in tracks], np.float64).reshape(-1, 2)
        older = xy - np.array([[t.vx, t.vy] for t in tracks], np.float64).reshape(-1, 2) * result.frames
        visible = np.array([t.visible for t in tracks], bool)
        xy[~visible] = np.nan                               # a guess, not a measurement: no 3D
        if last is not None and last[0] == older_ns:       # the older frame: its depth and the tracks measured there
            older_depth, seen = last[1], last[2]
        else:
            older_depth, seen = self._depth(older_ns), set()
        measured = np.array([t.id in seen or t.born_stamp_ns == older_ns for t in tracks], bool)
        older[~measured] = np.nan
        self._last = (newer_ns, depth, {t.id for t, v in zip(tracks, visible) if v})
        return lift_tracks(self.camera, depth, xy, older_depth, older, (newer_ns - older_ns) / 1e9)
