"""Keypoint lifecycle across frames (ROS-free): seeding, persistent ids, occlusion, re-seeding.

Each call to :meth:`PointTracker.update` takes the tracing result for the live tracks on one
frame pair and returns the tracks of the newer frame. Tracks keep their id while they are
visible; an occluded track is kept for ``max_occluded_frames`` pairs, moving as the visible tracks did (the
camera's motion as far as they tell: a similarity transform fitted to them; where it is searched for next), and
then dropped; tracks that leave the image are dropped at once (or, with ``max_out_of_view_frames``, kept for
that many pairs, moving with the visible ones and not counted towards ``num_points``: anchored tracing finds them
again when they come back into view); new points are seeded (grid, good-features-to-track corners, or external
queries) whenever there are fewer than ``num_points`` tracks in view, away from existing ones. Every track keeps the frame (stream index and stamp) it
was seeded on, and the tracker counts what it lost and why, and what it seeded again, so that a full set of
tracks is never mistaken for the original points (:class:`TrackCounts`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

SOURCES = ("grid", "features", "topic")


@dataclass
class Track:
    id: int
    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0
    visible: bool = True
    confidence: float = 0.0
    age: int = 0
    occluded_for: int = 0
    born_frame: int = 0          # stream index of the image the track was seeded on
    born_stamp_ns: int = 0       # and its stamp
    anchor_frame: int = 0        # anchored tracing: the frame it is traced from (born or last re-anchored on)
    ax: float = 0.0              # and its position there
    ay: float = 0.0
    anchor_misses: int = 0       # consecutive traced pairs on which its anchor did not find it
    out_of_view_for: int = 0     # consecutive traced pairs it has been out of view (kept with max_out_of_view_frames)


def inside_image(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N,) bool: (N,2) pixel positions on an (h, w) image (pixel i spans [i - 0.5, i + 0.5], as the engine's
    out-of-view test), so the edge pixels (0, 0) and (w - 1, h - 1) are inside."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    return (p[:, 0] >= -0.5) & (p[:, 0] <= w - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= h - 0.5)


def camera_motion(before: np.ndarray, after: np.ndarray, min_points: int = 4, tolerance: float = 3.0):
    """How the image moved between two frames, as the tracks seen on both tell (``before``, ``after``: (N,2)):
    a function of (M,2) points. A similarity transform (shift, rotation, zoom) fitted robustly (RANSAC, inliers
    within ``tolerance`` px) when ``min_points`` tracks agree, so a track not seen follows a camera that rolls or
    zooms; else their median shift (none without tracks)."""
    before, after = np.asarray(before, np.float64).reshape(-1, 2), np.asarray(after, np.float64).reshape(-1, 2)
    if len(before) >= min_points:
        m, inliers = cv2.estimateAffinePartial2D(before, after, method=cv2.RANSAC, ransacReprojThreshold=tolerance)
        if m is not None and inliers is not None and int(inliers.sum()) >= min_points:
            return lambda p: np.asarray(p, np.float64) @ m[:, :2].T + m[:, 2]
    shift = np.median(after - before, axis=0) if len(before) else np.zeros(2)
    return lambda p: np.asarray(p, np.float64) + shift


TRACK_FIELDS = ("id", "x", "y", "vx", "vy", "visible", "confidence", "age")   # what outputs carry of a track


def track_record(track) -> dict:
    """A JSON-ready dict of a track (a ``Track`` or a kltrace_ros/Track message), with the stamp (and, for a
    ``Track``, the stream index) of the image it was seeded on."""
    rec = {k: getattr(track, k) for k in TRACK_FIELDS}
    if isinstance(track, Track):
        rec.update(born_frame=track.born_frame, born_stamp_ns=track.born_stamp_ns)
    else:
        rec["born_stamp_ns"] = int(track.born.sec) * 1_000_000_000 + int(track.born.nanosec)
        for name, flag in (("position", "has_position"), ("velocity", "has_velocity")):   # 3D (RGB-D), when known
            if getattr(track, flag, False):
                v = getattr(track, name)
                rec[name] = [v.x, v.y, v.z]
    return rec


@dataclass
class TrackCounts:
    """What happened to the tracks of a stream since it started: ``seeded`` tracks in all (the first seeding
    included), of which ``reseeded`` replaced lost ones; ``lost_out_of_view`` (left the image),
    ``lost_occluded`` (occluded longer than ``max_occluded_frames``), ``lost_reset`` (dropped by a reset:
    time jump, size change, ``~/reset``, new external queries) and ``lost_crowded`` (more than ``num_points`` in
    view when tracks came back into view: the youngest went)."""
    seeded: int = 0
    reseeded: int = 0
    lost_out_of_view: int = 0
    lost_occluded: int = 0
    lost_reset: int = 0
    lost_crowded: int = 0

    @property
    def lost(self) -> int:
        return self.lost_out_of_view + self.lost_occluded + self.lost_reset + self.lost_crowded


@dataclass
class TrackerConfig:
    num_points: int = 64
    source: str = "grid"            # grid | features | topic
    max_occluded_frames: int = 12
    min_distance: float = 8.0       # px between a new seed and any live track
    border: int = 4                 # px kept free at the image border when seeding
    max_out_of_view_frames: int = 0  # traced pairs a track that left the image is kept (moving with the visible
    #                                  ones, not visible; it does not count towards num_points) before it is dropped;
    #                                  0: dropped at once. Anchored tracing can find it again when it comes back

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"keypoint source must be one of {SOURCES}, got {self.source!r}")
        if self.num_points < 1 or self.num_points > 4096:
            raise ValueError(f"num_points must be in [1, 4096], got {self.num_points}")
        for name in ("max_occluded_frames", "max_out_of_view_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class PointTracker:
    config: TrackerConfig = field(default_factory=TrackerConfig)
    tracks: list = field(default_factory=list)
    next_id: int = 0
    external: np.ndarray | None = None   # queries from a topic (source == "topic")
    counts: TrackCounts = field(default_factory=TrackCounts)
    started: bool = False                # tracks were seeded in this sequence (later seeds replace lost ones)

    def limit(self, n: int) -> None:
        """Keep at most ``n`` tracks (a lowered ``num_points``); the rest count as lost by a reset."""
        self.counts.lost_reset += max(0, len(self.tracks) - n)
        del self.tracks[n:]

    def reset(self) -> None:
        self.counts.lost_reset += len(self.tracks)
        self.tracks = []
        self.started = False

    def set_external_queries(self, points, image_size=None) -> dict:
        """Points (N,2) to follow when ``source == 'topic'``; they replace the current tracks.

        Returns what was kept and why the rest was not: non-finite, outside the image (when its
        ``image_size`` (H, W) is known) or beyond ``num_points``: counts, and under ``dropped`` the indices."""
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        finite = np.isfinite(pts).all(1)
        inside = finite.copy()
        if image_size is not None:
            inside &= inside_image(pts, *image_size)
        order = np.flatnonzero(inside)
        kept = pts[order[: self.config.num_points]]
        self.external = kept
        self.reset()
        dropped = {"non_finite": np.flatnonzero(~finite).tolist(), "outside": np.flatnonzero(finite & ~inside).tolist(),
                   "beyond_num_points": order[self.config.num_points:].tolist()}
        return {"given": len(pts), "kept": len(kept), "dropped": dropped, **{k: len(v) for k, v in dropped.items()}}

    def in_view(self, image_size) -> np.ndarray:
        """(N,) bool: which live tracks are inside an image of (H, W)."""
        return inside_image(self.query_points(), *image_size)

    def query_points(self) -> np.ndarray:
        return np.array([[t.x, t.y] for t in self.tracks], np.float64).reshape(-1, 2)

    def predictions(self, frames: int) -> np.ndarray | None:
        """The motion prior: where each live track probably is ``frames`` later, from its own velocity, or for
        a new or occluded track the median velocity of the tracks seen moving; None when no track has a
        velocity yet (the search then starts at the query points)."""
        seen = np.array([t.age > 0 and t.visible for t in self.tracks], bool)
        if not seen.any():
            return None
        v = np.array([[t.vx, t.vy] for t in self.tracks], np.float64).reshape(-1, 2)
        v[~seen] = np.median(v[seen], axis=0)
        return self.query_points() + v * frames

    def seed(self, image: np.ndarray, frame: int = 0, stamp_ns: int = 0) -> None:
        """Add new tracks on ``image`` (H,W,3 or H,W; stream index ``frame``, ``stamp_ns``) up to ``num_points``.
        New tracks after the first ones of a sequence count as re-seeded."""
        cfg = self.config
        h, w = image.shape[:2]
        need = cfg.num_points - int(self.in_view((h, w)).sum())     # tracks out of view leave room for new ones
        if need <= 0:
            return
        if cfg.source == "topic":
            cand = self.external if self.external is not None and not self.tracks else np.zeros((0, 2))
        elif cfg.source == "features":
            gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            pts = cv2.goodFeaturesToTrack(gray, maxCorners=cfg.num_points * 2, qualityLevel=0.01,
                                          minDistance=cfg.min_distance, blockSize=7)
            cand = pts.reshape(-1, 2).astype(np.float64) if pts is not None else np.zeros((0, 2))
        else:
            n = int(np.ceil(np.sqrt(cfg.num_points * w / h)))
            m = int(np.ceil(cfg.num_points / n))
            xs = (np.arange(n) + 0.5) * (w - 2 * cfg.border) / n + cfg.border - 0.5
            ys = (np.arange(m) + 0.5) * (h - 2 * cfg.border) / m + cfg.border - 0.5
            cand = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
        if len(cand):
            cand = cand[inside_image(cand, h, w)]
        live = self.query_points()[self.in_view((h, w))]
        first = not self.started          # the first seeding of a sequence replaces nothing
        for p in cand:
            if need <= 0:
                break
            if len(live) and np.min(np.linalg.norm(live - p, axis=1)) < cfg.min_distance and cfg.source != "topic":
                continue
            self.tracks.append(Track(self.next_id, float(p[0]), float(p[1]), born_frame=frame, born_stamp_ns=stamp_ns,
                                     anchor_frame=frame, ax=float(p[0]), ay=float(p[1])))
            self.next_id += 1
            self.counts.seeded += 1
            self.counts.reseeded += not first
            self.started = True
            live = np.vstack([live, p[None]])
            need -= 1

    def update(self, points, visible, confidence, image_size, frames: int = 1) -> list:
        """Apply tracing results (aligned with :meth:`query_points`) for a pair with the newer image of (H, W),
        ``frames`` after the older one: velocities are px per frame."""
        h, w = image_size
        kept = []
        points = np.asarray(points).reshape(-1, 2)
        old = self.query_points().reshape(-1, 2)
        seen = np.asarray(visible, bool) & inside_image(points, h, w)
        camera = camera_motion(old[seen], points[seen])
        cfg = self.config
        for t, p, inside, v, c in zip(self.tracks, points, inside_image(points, h, w), visible, confidence):
            if not inside and not cfg.max_out_of_view_frames:
                self.counts.lost_out_of_view += 1
                continue
            t.age += 1
            t.confidence = float(c)
            if v and inside:
                t.vx, t.vy = float(p[0] - t.x) / frames, float(p[1] - t.y) / frames
                t.x, t.y = float(p[0]), float(p[1])
                t.visible, t.occluded_for, t.out_of_view_for = True, 0, 0
                kept.append(t)
                continue
            # not seen: it moves as the visible tracks did (a guess, reported as not visible)
            t.visible = False
            moved = camera(np.array([[t.x, t.y]]))[0]
            t.vx, t.vy = float(moved[0] - t.x) / frames, float(moved[1] - t.y) / frames
            t.x, t.y = float(moved[0]), float(moved[1])
            if inside_image(np.array([t.x, t.y]), h, w)[0]:    # occluded in view
                t.occluded_for, t.out_of_view_for = t.occluded_for + 1, 0
                if t.occluded_for > cfg.max_occluded_frames:
                    self.counts.lost_occluded += 1
                    continue
            else:                                                # out of view
                t.occluded_for, t.out_of_view_for = 0, t.out_of_view_for + 1
                if t.out_of_view_for > cfg.max_out_of_view_frames:
                    self.counts.lost_out_of_view += 1
                    continue
            kept.append(t)
        out = [i for i, t in enumerate(kept) if t.out_of_view_for]
        for i in sorted(out, key=lambda i: -kept[i].out_of_view_for)[:max(0, len(out) - cfg.num_points)]:
            self.counts.lost_out_of_view += 1      # at most num_points kept out of view: the longest gone go
            kept[i] = None
        kept = [t for t in kept if t is not None]
        self.tracks = self._crowded_out(kept)
        return self.tracks

    def _crowded_out(self, tracks: list) -> list:
        """At most ``num_points`` tracks in view. Tracks that come back into view (anchored tracking keeps them
        while out of view and re-seeds in their place) would add to those seeded meanwhile: the ones not seen go
        first, then the youngest; they count as ``lost_crowded``."""
        in_view = [t for t in tracks if not t.out_of_view_for]
        excess = len(in_view) - self.config.num_points
        if excess <= 0:
            return tracks
        drop = {t.id for t in sorted(in_view, key=lambda t: (t.visible, t.age, -t.id))[:excess]}
        self.counts.lost_crowded += excess
        return [t for t in tracks if t.id not in drop]
