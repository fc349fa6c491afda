"""A camera stream -> tracks: the tracing engine plus the keypoint lifecycle, and the reset rule.

One ``TrackingPipeline`` per camera, used by the node, ``kltrace video`` and ``kltrace bag``
alike: ``push`` each frame with its stamp; it traces the pair (the frame the tracks live on,
this frame) once the frames are at least ``frame_gap`` apart, and resets the tracks when time
jumps back (bag loop, simulation reset) or the image size changes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kltrace_ros.tracing.engine import Engine, TraceConfig

from .tracker import PointTracker, TrackerConfig


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
                 motion_prior: bool = False):
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

    def reset(self) -> None:
        """Forget every track and the frame they live on: the next frame starts a new sequence."""
        self.tracker.reset()
        self.older = None

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
        prior = self.tracker.predictions(frames) if self.motion_prior else None
        res = self.engine.track(older, newer, starts, self.trace, self.cancel, prior)
        tracks = self.tracker.update(res.points, res.visible, res.confidence, newer.shape[:2], frames)
        return PairResult(list(tracks), starts, res.points, res.visible, res.confidence, res.maps,
                          time.perf_counter() - t0, frames=frames)
