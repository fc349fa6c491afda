"""The node under a real camera rate: frames published at 10 or 30 Hz whatever the node does; it traces (frame the
tracks live on -> newest frame) across the frames it dropped, and reports velocities in px per frame."""
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from kltrace_ros.io.images import skimage_photo  # noqa: E402
from rosutil import Harness, domain_id, node_log, start_node, stop_node  # noqa: E402

FRAMES = 200
SIZE = (320, 240)
# (rate Hz, content motion px/frame, roll deg/frame, zoom per frame): a 10 Hz camera panning and rolling, a 30 Hz
# one panning and zooming in
CAMERAS = {"10Hz-pan-roll": (10.0, (1.2, 0.6), 0.02, 1.0), "30Hz-pan-zoom": (30.0, (1.0, -0.5), 0.0, 1.001)}


def view_matrix(i: int, camera: str) -> np.ndarray:
    """3x3 map canvas -> view of frame i (the camera pans, rolls and zooms about the view's centre)."""
    _, velocity, spin, zoom = CAMERAS[camera]
    w, h = SIZE
    c = np.array([w / 2, h / 2])
    r = cv2.getRotationMatrix2D(tuple(c), spin * i, zoom ** i)
    m = np.vstack([r, [0, 0, 1]])
    shift = np.array([[1, 0, velocity[0] * i - 140], [0, 1, velocity[1] * i - 130], [0, 0, 1]])
    return m @ shift


def truth_velocity(points: np.ndarray, i_old: int, i_new: int, camera: str) -> np.ndarray:
    """Per-frame velocity of the content at ``points`` (in view i_new) over frames i_old -> i_new."""
    back = view_matrix(i_old, camera) @ np.linalg.inv(view_matrix(i_new, camera))
    p = np.c_[points, np.ones(len(points))]
    old = (back @ p.T).T[:, :2]
    return (points - old) / (i_new - i_old)


@pytest.mark.parametrize("camera", list(CAMERAS))
def test_tracks_follow_the_per_frame_motion_of_a_camera_that_does_not_wait(tmp_path, ros_env, camera):
    rate = CAMERAS[camera][0]
    canvas = cv2.resize(skimage_photo("astronaut.png"), (700, 600), interpolation=cv2.INTER_AREA)
    frames = [cv2.warpAffine(canvas, view_matrix(i, camera)[:2].astype(np.float32), SIZE, flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT) for i in range(FRAMES)]
    # frame_gap 3: pairs span several frames however fast the node is, so per-frame and per-pair units differ
    proc = start_node(tmp_path, ros_env, {"num_points": 16, "masks": 1, "scales": 3, "fb_threshold": 0.0,
                                          "frame_gap": 3})
    h = Harness(domain_id(ros_env))
    base = h.stamp
    try:
        assert h.wait_connected(60, proc), node_log(proc)
        t0 = time.monotonic()
        for i, f in enumerate(frames):                      # never waits for the node
            h.publish(f, stamp_ns=base + int(i * 1e9 / rate))
            while time.monotonic() < t0 + (i + 1) / rate:
                h.executor.spin_once(timeout_sec=max(0.0, t0 + (i + 1) / rate - time.monotonic()))
        h.spin(3.0)
    finally:
        stop_node(proc)
        h.close()
    gaps, errors, frozen, per_pair = [], [], [], []
    for m in h.tracks:
        i_new = round((m.header.stamp.sec * 10**9 + m.header.stamp.nanosec - base) * rate / 1e9)
        i_old = round((m.previous_stamp.sec * 10**9 + m.previous_stamp.nanosec - base) * rate / 1e9)
        vis = [t for t in m.tracks if t.visible]
        if not vis or i_new <= i_old:
            continue
        gaps.append(i_new - i_old)
        pts = np.array([[t.x, t.y] for t in vis])
        got = np.array([[t.vx, t.vy] for t in vis])
        want = truth_velocity(pts, i_old, i_new, camera)
        errors.append(np.median(np.linalg.norm(got - want, axis=1)))
        frozen.append(np.median(np.linalg.norm(want, axis=1)))                        # what vx = 0 would score
        per_pair.append(np.median(np.linalg.norm(got * (i_new - i_old) - want, axis=1)))   # vx as px per pair
    assert len(errors) >= 8, (len(h.tracks), node_log(proc)[-2000:])
    assert np.median(gaps) >= 2, gaps              # the node is slower than the camera: frames were skipped
    assert np.median(errors) < 0.4, (np.round(errors, 2), gaps)
    # the test tells both mistakes apart: vx = 0 (a frozen tracker) and vx in px per traced pair
    assert np.median(frozen) > 1.0 and np.median(per_pair) > 1.0, (np.round(frozen, 2), np.round(per_pair, 2))
    print(f"{camera}: {len(errors)} messages, frame gap median {np.median(gaps):.0f}, per-frame error median "
          f"{np.median(errors):.2f} px")
