"""Frame pair -> tracks: the tracing engine plus the keypoint lifecycle (used by the node and the offline tools)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from kltrace_ros.tracing.engine import Engine

from .tracker import PointTracker, TrackerConfig


@dataclass
class PairResult:
    tracks: list                 # live tracks after this pair (tracker.Track)
    starts: np.ndarray           # (N,2) positions in the older image of the tracks traced on this pair
    ends: np.ndarray             # (N,2) traced positions in the newer image
    visible: np.ndarray
    confidence: np.ndarray
    maps: list                   # per traced point (map, box) when the engine keeps maps
    seconds: float


class TrackingPipeline:
    def __init__(self, engine: Engine, tracker: TrackerConfig | None = None):
        self.engine = engine
        self.tracker = PointTracker(tracker or TrackerConfig())
        self.tracker.config.validate()

    def reset(self) -> None:
        self.tracker.reset()

    def step(self, older: np.ndarray, newer: np.ndarray) -> PairResult:
        """Seed on the older image if needed, trace the live tracks into the newer one, update them."""
        t0 = time.perf_counter()
        self.tracker.seed(older)
        starts = self.tracker.query_points()
        res = self.engine.track(older, newer, starts)
        tracks = self.tracker.update(res.points, res.visible, res.confidence, newer.shape[:2])
        return PairResult(list(tracks), starts, res.points, res.visible, res.confidence, res.maps,
                          time.perf_counter() - t0)
