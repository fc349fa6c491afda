"""Classical two-frame baselines for the same query protocol: zero motion, pyramidal LK, DIS."""
from __future__ import annotations

import cv2
import numpy as np

from kltrace_ros.tracing.polish import gray as _gray


def zero_motion(frame1, frame2, queries):
    return np.asarray(queries, np.float64).copy(), np.ones(len(queries), bool)


def lucas_kanade(frame1, frame2, queries):
    """OpenCV pyramidal Lucas-Kanade (21x21 window, 3 pyramid levels); status = visible."""
    p0 = np.asarray(queries, np.float32).reshape(-1, 1, 2)
    p1, st, _ = cv2.calcOpticalFlowPyrLK(_gray(frame1), _gray(frame2), p0, None, winSize=(21, 21), maxLevel=3,
                                         criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    return p1.reshape(-1, 2).astype(np.float64), st.reshape(-1).astype(bool)


def dis(frame1, frame2, queries):
    """OpenCV DIS dense flow (medium preset), sampled bilinearly at the queries; always visible."""
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(_gray(frame1), _gray(frame2), None)
    q = np.asarray(queries, np.float32)
    fx = cv2.remap(flow[..., 0], q[:, 0:1], q[:, 1:2], cv2.INTER_LINEAR)[:, 0]
    fy = cv2.remap(flow[..., 1], q[:, 0:1], q[:, 1:2], cv2.INTER_LINEAR)[:, 0]
    return q + np.stack([fx, fy], -1), np.ones(len(q), bool)


BASELINES = {"zero": zero_motion, "lk": lucas_kanade, "dis": dis}
