"""A camera stream -> tracks: the tracing engine plus the keypoint lifecycle, and the reset rule.

One ``TrackingPipeline`` per camera, used by the node, ``kltrace video`` and ``kltrace bag``
alike: ``push`` each frame with its stamp; it traces the pair (the frame the tracks live on,
this frame) once the frames are at least ``frame_gap`` apart, and resets the tracks when time
jumps back (bag loop, simulation reset) or the image size changes.

Two modes. ``chained``: every track is traced from the previous traced frame, so errors add up step by
step. ``anchored``: every track is traced from its anchor, the frame it was born on (or last re-anchored on)
at the point it had there, straight into the new frame (all anchors in one engine call); the search starts where
the track probably is now (its last position plus its velocity times the frames since), so the anchor's point is
found even when it has moved far.

Anchored rules, per traced pair (each a named piece with a test of its own):
- Jump test (``JumpTest``): a point found farther than ``MAX_JUMP`` (plus half its extrapolated motion) from where
  its own motion puts it, and farther than ``CAMERA_TOLERANCE`` from where the camera's motion puts it (a
  similarity fitted to every point found on this pair: a bump moves them all), has jumped to a look-alike (the next
  brick): a miss.
- Chained bridge (``TrackingPipeline._bridge_misses``): a miss (not visible: weak or smeared peak, failed backward
  check, no longer looks like the query, or a jump) of a track seen on the previous pair is traced chained from the
  previous frame instead. That answer must pass the jump test and still look like the anchor's point
  (``min_appearance``: a track dragged onto an occluder is not carried on with it). It is taken on the first
  ``ANCHOR_PATIENCE - 1`` misses in a row (a brief occluder, a blurred frame: the anchor is kept).
- Re-anchoring rule (``chained_answer_rule``): from the ``ANCHOR_PATIENCE``-th miss in a row, the chained answer is
  taken only if the point now looks less like the anchor's than ``REANCHOR_LIKENESS`` (the view changed: zoom, turn,
  light); the previous frame then becomes the track's anchor, at its position there. If it still looks the same,
  the anchor should still match and the search keeps missing it (a flat or repeated texture, where chained answers
  drift a few px a pair): the track is reported occluded and searched for from its anchor until found or timed out.
- Tracks that leave the image are kept (moving with the visible tracks, for the tracker's
  ``max_out_of_view_frames``, which the builder sets for anchored mode only) and are searched for from their anchor
  when their predicted position is back in view.
- Anchor budget (``anchors_to_keep``): anchor frames are shared by the tracks that use them and released when none
  does; about ``MAX_ANCHORS`` are kept (beyond, the visible tracks of the smallest groups are re-anchored on the
  previous frame, so the groups that hold most tracks, the first seeding's among them, keep theirs; occluded tracks
  keep their anchor, so at most one per track).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kltrace_ros.tracing.engine import Engine, TraceConfig

from .tracker import PointTracker, TrackerConfig, camera_motion, inside_image

MODES = ("chained", "anchored")
MAX_ANCHORS = 16
MAX_JUMP = 8.0            # working px: a tracked point found farther than this (plus half its extrapolated motion)
#                           from its motion prior is not taken ...
CAMERA_TOLERANCE = 4.0    # ... unless it is within this many working px of where the camera's motion puts it
ANCHOR_PATIENCE = 4       # the anchor's misses in a row after which a track's chained answer is taken only if it
REANCHOR_LIKENESS = 0.85  # looks less like the anchor's point than this (then it is re-anchored: the view changed)


def anchors_to_keep(anchor_frames: list, budget: int) -> set | None:
    """The anchor frames that keep their tracks when the tracks' ``anchor_frames`` name more than ``budget``
    frames (None: within budget): the ``budget - 1`` that hold most tracks (of equal ones, the oldest), leaving
    room for the frame the others move to."""
    count = {}
    for f in anchor_frames:
        count[f] = count.get(f, 0) + 1
    if len(count) <= budget:
        return None
    return set(sorted(count, key=lambda f: (-count[f], f))[:budget - 1])


def chained_answer_rule(anchor_misses: int, likeness: float) -> tuple[bool, bool]:
    """Re-anchoring rule for a chained answer (one that passed its tests) of a track its anchor missed
    ``anchor_misses`` times in a row, whose point looks like the anchor's point as much as ``likeness``: (take it,
    re-anchor on the previous frame). The first ``ANCHOR_PATIENCE - 1`` misses are bridged (a brief occluder, a
    blurred frame); after that the answer is taken, with the previous frame as the new anchor, only if the point now
    looks different (the view changed); if it still looks the same the anchor should still match, and chained answers,
    whose errors add up pair by pair, are not taken."""
    if anchor_misses < ANCHOR_PATIENCE:
        return True, False
    if likeness >= REANCHOR_LIKENESS:
        return False, False
    return True, True


@dataclass
class JumpTest:
    """Jump test: a point found farther than ``limit`` (``MAX_JUMP`` working px plus half its extrapolated motion:
    frames dropped under a slow CPU make the prior less sure) from where its own motion puts it (``prior``), and
    farther than ``CAMERA_TOLERANCE`` from where the camera's motion puts it (a similarity fitted to the points found
    on the pair: a bump moves them all), has jumped to a look-alike (the next brick)."""
    here: np.ndarray             # (N,2) image px: each track on the older frame
    prior: np.ndarray            # (N,2) image px: where its own motion puts it on the newer frame
    limit: np.ndarray            # (N,) working px
    to_working: np.ndarray       # (2,) image px -> working px

    @classmethod
    def for_pair(cls, here, prior, motion, working_size: int, shape) -> "JumpTest":
        """For tracks at ``here`` predicted at ``prior`` (``motion`` = prior - here) on a newer image of ``shape``."""
        to_working = np.array([working_size / shape[1], working_size / shape[0]])
        return cls(here, prior, MAX_JUMP + 0.5 * np.linalg.norm(motion * to_working, axis=1), to_working)

    def __call__(self, found, camera, idx=None) -> np.ndarray:
        """(M,) which of the points ``found`` (M,2) of tracks ``idx`` (default: all) jumped; ``camera``: a
        function of (M,2) points, the camera motion (``tracker.camera_motion``)."""
        idx = np.arange(len(self.here)) if idx is None else np.asarray(idx, int)
        off_prior = np.linalg.norm((found - self.prior[idx]) * self.to_working, axis=1) > self.limit[idx]
        off_camera = np.linalg.norm((found - camera(self.here[idx])) * self.to_working, axis=1) > CAMERA_TOLERANCE
        return off_prior & off_camera


@dataclass
class Frame:
    rgb: np.ndarray              # (H,W,3) uint8
    stamp_ns: int
    index: int                   # position in the stream (counts frames that were never traced)


@dataclass
class PairResult:
    tracks: list                 # live tracks after this pair (tracker.Track)
    starts: np.ndarray           # (N,2) positions in the older image of the tracks traced on this pair
    ends: np.ndarray             # (N,2) traced positions in the newer image
    visible: np.ndarray
    confidence: np.ndarray
    maps: list                   # per traced point (map, box) when the engine keeps maps
    seconds: float
    older_stamp_ns: int = 0
    newer_stamp_ns: int = 0
    frames: int = 1              # frames from the older to the newer image (dropped ones counted): tracks' vx, vy
    #                              are px per frame (displacement / frames); ends - starts is per pair


@dataclass
class Found:
    """What the traces of one anchored pair found, per live track (aligned with the tracker's tracks), and the
    anchor images they were traced from."""
    points: np.ndarray           # (N,2) image px of the newer image (the prior where not found)
    visible: np.ndarray          # (N,) bool
    confidence: np.ndarray       # (N,)
    maps: list                   # per track: (map, box) or None
    images: list                 # the anchor images in use
    source: np.ndarray           # (N,) each track's anchor image in ``images``
    anchor_points: np.ndarray    # (N,2) each track's point on its anchor image

    def take(self, idx, res, rows=None) -> None:
        """Take the answers ``rows`` (default: all) of the engine's ``res`` for the tracks ``idx``."""
        rows = list(range(len(idx))) if rows is None else list(rows)
        for j, i in zip(rows, idx):
            self.points[i], self.visible[i], self.confidence[i] = res.points[j], res.visible[j], res.confidence[j]
            self.maps[i] = res.maps[j] if res.maps else None


@dataclass(frozen=True)
class Reset:
    kind: str                    # "time" (stamp went back) | "size" (image size changed)
    message: str

    def __str__(self) -> str:
        return self.message


def reset_reason(older: Frame | None, rgb: np.ndarray, stamp_ns: int) -> Reset | None:
    """Why the tracks cannot continue from ``older`` to this frame, or None."""
    if older is None:
        return None
    if stamp_ns < older.stamp_ns:
        return Reset("time", f"time jumped back ({older.stamp_ns - stamp_ns} ns): tracks reset "
                             f"(bag loop or simulation reset?)")
    if older.rgb.shape != rgb.shape:
        (h0, w0), (h1, w1) = older.rgb.shape[:2], rgb.shape[:2]
        return Reset("size", f"image size changed {w0}x{h0} -> {w1}x{h1}: tracks reset")
    return None


class TrackingPipeline:
    def __init__(self, engine: Engine, tracker: TrackerConfig | None = None, trace: TraceConfig | None = None,
                 frame_gap: int = 1, on_reset: Callable[[Reset], None] | None = None, cancel=None,
                 motion_prior: bool = False, mode: str = "chained"):
        if mode not in MODES:
            raise ValueError(f"tracking mode must be one of {MODES}, got {mode!r}")
        self.engine = engine
        self.trace = trace or engine.cfg        # this stream's tracing settings (one engine serves many streams)
        self.tracker = PointTracker(tracker or TrackerConfig())
        self.tracker.config.validate()
        self.frame_gap = frame_gap
        self.on_reset = on_reset
        self.cancel = cancel                    # threading.Event: set to abandon a pair (engine.Cancelled)
        self.older: Frame | None = None
        # Off by default: extrapolating a velocity over the seconds a CPU pair takes, through a camera that turns
        # or jumps, sends the search out of reach (the 60 s soak's small-motion error rose from under 1 to 1.8 px).
        self.motion_prior = motion_prior
        self.mode = mode
        self.anchors: dict = {}                 # frame index -> RGB image of the anchors in use (anchored mode)

    def reset(self) -> None:
        """Forget every track and the frame they live on: the next frame starts a new sequence."""
        self.tracker.reset()
        self.older = None
        self.anchors = {}

    def push(self, rgb: np.ndarray, stamp_ns: int, index: int, period_ns: float | None = None) -> PairResult | None:
        """Take the next frame of the stream; returns the traced pair's result, or None (first frame of a
        sequence, or closer than ``frame_gap`` to the frame the tracks live on). The frames between the two
        images of a pair are counted from the stamps when the camera's frame period is known (``period_ns``:
        frames lost in transport count too), else from the stream indices."""
        reason = reset_reason(self.older, rgb, stamp_ns)
        if reason is not None:
            self.reset()
            if self.on_reset is not None:
                self.on_reset(reason)
        if self.older is None:
            self.older = Frame(rgb, stamp_ns, index)
            return None
        if index - self.older.index < self.frame_gap:
            return None
        frames = (max(1, round((stamp_ns - self.older.stamp_ns) / period_ns)) if period_ns
                  else max(1, index - self.older.index))
        res = self.step(self.older.rgb, rgb, frames, self.older)
        res.older_stamp_ns, res.newer_stamp_ns = self.older.stamp_ns, stamp_ns
        self.older = Frame(rgb, stamp_ns, index)
        return res

    def step(self, older: np.ndarray, newer: np.ndarray, frames: int = 1, seed_frame: Frame | None = None
             ) -> PairResult:
        """Seed on the older image if needed (new tracks are born on ``seed_frame``: its index and stamp), trace
        the live tracks into the newer one (``frames`` later), update them."""
        t0 = time.perf_counter()
        self.tracker.seed(older, *((seed_frame.index, seed_frame.stamp_ns) if seed_frame else (0, 0)))
        starts = self.tracker.query_points()
        if self.mode == "anchored" and seed_frame is not None:
            ends, visible, confidence, maps = self._anchored(older, newer, frames, seed_frame.index)
        else:
            prior = self.tracker.predictions(frames) if self.motion_prior else None
            res = self.engine.track(older, newer, starts, self.trace, self.cancel, prior)
            ends, visible, confidence, maps = res.points, res.visible, res.confidence, res.maps
        tracks = self.tracker.update(ends, visible, confidence, newer.shape[:2], frames)
        if self.mode == "anchored":
            used = {t.anchor_frame for t in tracks}
            self.anchors = {k: v for k, v in self.anchors.items() if k in used}
        return PairResult(list(tracks), starts, ends, visible, confidence, maps, time.perf_counter() - t0,
                          frames=frames)

    def _anchored(self, older, newer, frames: int, older_index: int):
        """Anchored tracing of the live tracks (see the module doc): points, visibility, confidence, maps. Each rule
        has its own place: the anchor budget (``_keep_anchor_budget``), the search from the anchors
        (``_search_from_anchors``), the jump test (``JumpTest``) and the chained bridge of a miss with the
        re-anchoring rule (``_bridge_misses``, ``chained_answer_rule``)."""
        tracks = self.tracker.tracks
        self.anchors[older_index] = older
        self._keep_anchor_budget(older_index)
        here = self.tracker.query_points()
        vel = np.array([[t.vx, t.vy] if t.visible else [0.0, 0.0] for t in tracks], np.float64).reshape(-1, 2)
        prior = here + vel * frames
        in_view = inside_image(prior, *newer.shape[:2])          # a track predicted out of view is not searched for
        found = self._search_from_anchors(newer, here, prior, in_view, older_index)
        jump = JumpTest.for_pair(here, prior, vel * frames, self.engine.p.image_size, newer.shape[:2])
        moving = np.array([t.visible and t.age > 0 for t in tracks], bool)
        seen = found.visible
        found.visible &= ~(moving & jump(found.points, camera_motion(here[seen], found.points[seen])))
        for i, t in enumerate(tracks):
            t.anchor_misses = 0 if found.visible[i] or not in_view[i] else t.anchor_misses + 1
        self._bridge_misses(older, newer, found, jump, in_view, older_index)
        maps = found.maps if any(m is not None for m in found.maps) else []
        return found.points, found.visible, found.confidence, maps

    def _keep_anchor_budget(self, older_index: int) -> None:
        """Anchor budget: over ``MAX_ANCHORS`` anchor frames, the visible tracks of the smallest groups move to the
        previous frame (an occluded track's position is only a guess: it keeps its anchor)."""
        keep = anchors_to_keep([t.anchor_frame for t in self.tracker.tracks], MAX_ANCHORS - 1)
        if keep is None:
            return
        for t in self.tracker.tracks:
            if t.anchor_frame not in keep and t.visible:
                t.anchor_frame, t.ax, t.ay, t.anchor_misses = older_index, t.x, t.y, 0

    def _search_from_anchors(self, newer, here, prior, in_view, older_index: int) -> "Found":
        """Every track in view traced from its anchor into ``newer``. One call for the tracks of older anchors,
        searched from their ``prior`` (and, where that fails, from where they were on the previous frame, ``here``:
        the whole schedule, as chained tracking searches, not from the anchor's position, which says nothing of where
        the point is now); one for those anchored on the previous frame."""
        tracks = self.tracker.tracks
        n = len(tracks)
        used = sorted({t.anchor_frame for t in tracks})
        number = {f: k for k, f in enumerate(used)}
        found = Found(prior.copy(), np.zeros(n, bool), np.zeros(n), [None] * n, [self.anchors[f] for f in used],
                      np.array([number[t.anchor_frame] for t in tracks], int),
                      np.array([[t.ax, t.ay] for t in tracks], np.float64).reshape(-1, 2))
        for from_prior in (True, False):
            idx = [i for i, t in enumerate(tracks) if in_view[i] and (t.anchor_frame != older_index) == from_prior]
            if not idx:
                continue
            res = self.engine.track(found.images, newer, found.anchor_points[idx], self.trace, self.cancel,
                                    prior[idx] if from_prior else None, source=found.source[idx],
                                    retry_from=here[idx] if from_prior else None)
            found.take(idx, res)
        return found

    def _bridge_misses(self, older, newer, found: "Found", jump: "JumpTest", in_view, older_index: int) -> None:
        """A miss of a track seen on the previous frame (only those: an occluded track's position there is only a
        guess; on a repeated texture a chained search from it lands on a look-alike that passes every test) is traced
        chained from the previous frame. The answer must still look like the anchor's point (``min_appearance``),
        pass the jump test (against the camera motion of every point found, the anchors' and these: after a bump
        most are found here) and the re-anchoring rule (``chained_answer_rule``)."""
        tracks = self.tracker.tracks
        here = self.tracker.query_points()
        lost = [i for i, t in enumerate(tracks) if in_view[i] and not found.visible[i] and t.visible
                and t.anchor_frame != older_index]
        if not lost:
            return
        res = self.engine.track(older, newer, here[lost], self.trace, self.cancel)
        likeness = self.engine.appearance(found.images, found.anchor_points[lost], newer, res.points,
                                          found.source[lost])
        if self.trace.min_appearance > 0:
            res.visible &= likeness >= self.trace.min_appearance
        seen = np.array(lost)[res.visible]
        camera = camera_motion(np.vstack([here[found.visible], here[seen]]),
                               np.vstack([found.points[found.visible], res.points[res.visible]]))
        far = jump(res.points, camera, np.array(lost))
        for j, i in enumerate(lost):
            if not res.visible[j] or far[j]:
                continue
            take, reanchor = chained_answer_rule(tracks[i].anchor_misses, float(likeness[j]))
            if take:
                found.take([i], res, [j])
            if reanchor:
                tracks[i].anchor_frame, tracks[i].ax, tracks[i].ay = older_index, here[i, 0], here[i, 1]
                tracks[i].anchor_misses = 0
