"""`kltrace bench node`: the node as a process under a camera that never waits, for minutes.

A publisher process (this one) pans a window over a large real photo at ``rate`` Hz: smooth motion
(``speed`` px/s at most) with a jump of ``jump`` px every ``jump_every`` seconds (large-motion pairs). It subscribes to the
node's tracks, overlay and heatmap (so every output is produced), samples the node's memory every
second, and at the end sends SIGINT. Reported: frames published/received/processed/dropped,
latency (frame publish -> its tracks), accuracy of the pairs the node chose (true motion from the
stamps), what the node says about large-motion pairs (visible fraction, error of visible tracks),
RSS of the first and last minute, the steady-state RSS trend (per pair cycle), exit code and time on
SIGINT.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from tqdm import tqdm

from kltrace_ros.io.image_msgs import rgb_to_image
from kltrace_ros.io.images import camera_view, skimage_photo
from kltrace_ros.io.messages import stamp_ns
from kltrace_ros.msg import TrackArray

from .demo import rgbd_messages
from .transport import ENV, with_large_images


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def rss_floor_rise_mb_per_min(samples: list) -> float:
    """Leak rate (MB/min): how much the RSS floor (20th percentile) of the second half of the run lies above
    the floor of the first half, per minute between the halves' middles. Within a run RSS steps up and down by
    10-50 MB for seconds at a time as glibc keeps or trims freed tracing buffers (it depends on the scene, so
    a camera jump can hold a step for as long as it lasts); such steps do not lift the floor of a half that is
    mostly lower, while a leak lifts every moment. ``samples``: (s, MB), at least 4."""
    t = np.array([s[0] for s in samples])
    r = np.array([s[1] for s in samples])
    mid = (t[0] + t[-1]) / 2
    first, last = r[t < mid], r[t >= mid]
    return float((np.percentile(last, 20) - np.percentile(first, 20)) / max((t[-1] - t[0]) / 2 / 60, 1e-9))


class Pan:
    """Window (w, h) over a large photo: offset of frame i (px), a smooth pan of at most ``speed`` px/s with a
    jump of ``jump`` px every ``jump_every`` s (0: none)."""

    def __init__(self, w: int, h: int, rate: float, speed: float, jump: float, jump_every: float):
        self.w, self.h, self.rate, self.speed, self.jump, self.jump_every = w, h, rate, speed, jump, jump_every
        canvas = skimage_photo("astronaut.png")
        self.canvas = cv2.resize(canvas, (w + 400, h + 300), interpolation=cv2.INTER_CUBIC)

    def offset(self, i: int) -> np.ndarray:
        t = i / self.rate
        jumps = self.jump * ((t // self.jump_every) % 2) if self.jump_every else 0.0
        x = 200 + self.speed * 17 / (2 * np.pi) * np.sin(2 * np.pi * t / 17) + jumps
        y = 150 + 0.5 * self.speed * 11 / (2 * np.pi) * np.sin(2 * np.pi * t / 11)
        return np.array([x, y])

    def frame(self, i: int) -> np.ndarray:
        return camera_view(self.canvas, (self.w, self.h), self.offset(i))


@dataclass
class Recorder:
    tracks: list = field(default_factory=list)
    received_at: dict = field(default_factory=dict)     # stamp ns -> monotonic time the tracks arrived
    diags: list = field(default_factory=list)
    images: int = 0


def start_node(params: dict, env: dict, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kltrace_ros.ros.node", "--ros-args", "-r", "image:=/soak_camera/image_raw",
           "-r", "depth:=/soak_camera/depth", "-r", "camera_info:=/soak_camera/camera_info"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> tuple[int, float]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30), time.monotonic() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(), float("inf")


def run_soak(minutes: float = 10.0, size: tuple = (640, 480), rate: float = 30.0, params: dict | None = None,
             out: Path | None = None, speed: float = 20.0, jump: float = 70.0, jump_every: float = 5.0,
             warmup_pairs: int = 5, depth: bool = False) -> dict:
    """Run the node for ``minutes`` after ``warmup_pairs`` traced pairs; returns the report (and writes
    ``out/soak.json``, ``out/soak.png`` and ``out/node.log``). ``depth``: an RGB-D camera (the node with
    ``use_depth``; the photo seen as a wall 2 m away, 16UC1 depth and camera_info with every frame)."""
    out = Path(out or "out/soak")
    out.mkdir(parents=True, exist_ok=True)
    domain = 150 + os.getpid() % 50
    env = with_large_images(dict(os.environ, ROS_DOMAIN_ID=str(domain)))
    if ENV in env:
        os.environ[ENV] = env[ENV]
    proc = start_node({**(params or {}), **({"use_depth": "true"} if depth else {})}, env, out / "node.log")
    pan = Pan(*size, rate, speed, jump, jump_every)
    rec = Recorder()
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node("kltrace_soak_camera", context=ctx)
    executor = rclpy.executors.SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    pub = node.create_publisher(Image, "/soak_camera/image_raw", qos_profile_sensor_data)
    rgbd = _rgbd_publishers(node, size) if depth else None

    def on_tracks(m):
        rec.tracks.append(m)
        rec.received_at[stamp_ns(m.header.stamp)] = time.monotonic()

    node.create_subscription(TrackArray, "/kltrace/tracks", on_tracks, 50)
    node.create_subscription(Image, "/kltrace/debug/overlay", lambda m: setattr(rec, "images", rec.images + 1), 5)
    node.create_subscription(Image, "/kltrace/debug/heatmap", lambda m: setattr(rec, "images", rec.images + 1), 5)
    node.create_subscription(DiagnosticArray, "/diagnostics", rec.diags.append, 10)
    published: dict = {}                               # stamp ns -> (frame index, monotonic publish time)
    rss: list = []
    try:
        end = time.monotonic() + 120
        while pub.get_subscription_count() == 0 and time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"kltrace_node exited with {proc.returncode}: see {out / 'node.log'}")
            executor.spin_once(timeout_sec=0.1)
        base, t0, i, warm = time.time_ns(), time.monotonic(), 0, None
        bar = tqdm(total=int(minutes * 60), desc="soak", unit="s")
        while warm is None or time.monotonic() - warm < minutes * 60:
            stamp = base + i * int(1e9 / rate)
            msg = rgb_to_image(pan.frame(i))
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
            msg.header.frame_id = "soak_camera"
            pub.publish(msg)
            if rgbd is not None:
                rgbd(msg.header)
            published[stamp] = (i, time.monotonic())
            i += 1
            while time.monotonic() < t0 + i / rate:
                executor.spin_once(timeout_sec=max(0.0, t0 + i / rate - time.monotonic()))
            if warm is None and len(rec.tracks) >= warmup_pairs:
                warm = time.monotonic()
            if warm is not None and i % 5 == 0:
                rss.append((time.monotonic() - warm, rss_mb(proc.pid)))
                bar.update(int(time.monotonic() - warm) - bar.n)
            if proc.poll() is not None:
                raise RuntimeError(f"kltrace_node exited with {proc.returncode}: see {out / 'node.log'}")
        bar.close()
        for _ in range(40):
            executor.spin_once(timeout_sec=0.05)
    finally:
        code, took = stop(proc)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    report = summarise(rec, published, pan, rss, size, rate, minutes, code, took)
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    plot(rss, rec, published, out / "soak.png")
    return report


def _rgbd_publishers(node, size):
    """Publishers of the soak camera's depth (a wall 2 m away, tilted: 1.8-2.2 m across the image, 16UC1) and
    camera_info (f = 0.8 x width, no distortion); returns a function that publishes both with a header."""
    w, h = size
    depth = np.tile(np.linspace(1800, 2200, w, dtype=np.uint16), (h, 1))
    K = [[0.8 * w, 0.0, w / 2], [0.0, 0.8 * w, h / 2], [0.0, 0.0, 1.0]]
    pubs = (node.create_publisher(Image, "/soak_camera/depth", qos_profile_sensor_data),
            node.create_publisher(CameraInfo, "/soak_camera/camera_info", qos_profile_sensor_data))

    def publish(header):
        for pub, msg in zip(pubs, rgbd_messages(header, depth, K, [0.0] * 5)):
            pub.publish(msg)
    return publish


def summarise(rec: Recorder, published: dict, pan: Pan, rss: list, size, rate, minutes, code,
              took) -> dict:
    small, large_vis, large_err, latency = [], [], [], []
    for m in rec.tracks:
        new, old = stamp_ns(m.header.stamp), stamp_ns(m.previous_stamp)
        if new not in published or old not in published:
            continue
        true = -(pan.offset(published[new][0]) - pan.offset(published[old][0]))   # content motion in the frame
        latency.append(1000 * (rec.received_at[new] - published[new][1]))
        gap = published[new][0] - published[old][0]                               # frames of the traced pair
        vis = gap * np.array([[t.vx, t.vy] for t in m.tracks if t.visible]).reshape(-1, 2)   # px/frame -> px/pair
        err = np.linalg.norm(vis - true, axis=1) if len(vis) else np.zeros(0)
        if np.linalg.norm(true) >= 60:
            large_vis.append(len(vis) / max(len(m.tracks), 1))
            large_err.extend(err.tolist())
        elif np.linalg.norm(true) < 16 and len(err):
            small.append(float(np.median(err)))
    diag = {kv.key: kv.value for kv in rec.diags[-1].status[0].values} if rec.diags else {}
    first = [r for t, r in rss if t < 60]
    last = [r for t, r in rss if t >= rss[-1][0] - 60] if rss else []
    return {
        "machine": f"{os.cpu_count()} cores", "size": f"{size[0]}x{size[1]}", "rate_hz": rate, "minutes": minutes,
        "published": len(published), "received": int(diag.get("received", 0)),
        "processed": int(diag.get("processed", 0)), "dropped": int(diag.get("dropped", 0)),
        "overlay_and_heatmap_images": rec.images,
        "latency_ms_median": float(np.median(latency)) if latency else None,
        "latency_ms_first_pairs": float(np.median(latency[:5])) if latency else None,
        "latency_ms_last_pairs": float(np.median(latency[-5:])) if latency else None,
        "latency_ms_p90": float(np.percentile(latency, 90)) if latency else None,
        "pairs_under_16px": len(small), "median_error_px_under_16px": float(np.median(small)) if small else None,
        "pairs_over_60px": len(large_vis),
        "visible_fraction_over_60px": float(np.mean(large_vis)) if large_vis else None,
        "median_error_px_of_visible_over_60px": float(np.median(large_err)) if large_err else None,
        "rss_mb_first_minute": float(np.mean(first)) if first else None,
        "rss_mb_last_minute": float(np.mean(last)) if last else None,
        "rss_floor_rise_mb_per_min": rss_floor_rise_mb_per_min(rss) if len(rss) >= 4 else None,
        "exit_code_on_sigint": code, "seconds_to_exit": took,
        **({"depth_ms_per_pair": float(diag["depth_ms"]), "depth_matched": int(diag["depth_matched"]),
            "depth_unmatched": int(diag["depth_unmatched"]), "depth_errors": int(diag["depth_errors"]),
            "tracks_with_3d": float(np.mean([np.mean([t.has_position for t in m.tracks if t.visible] or [0])
                                             for m in rec.tracks]))} if "depth_ms" in diag else {}),
    }


def plot(rss: list, rec: Recorder, published: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # heavy, only for the picture

    fig = Figure(figsize=(10, 3.5))
    a, b = fig.subplots(1, 2)
    if rss:
        a.plot([t / 60 for t, _ in rss], [r for _, r in rss])
    a.set_title("node RSS (MB)")
    a.set_xlabel("minutes after warm-up")
    lat = [(published[stamp_ns(m.header.stamp)][1], 1000 * (rec.received_at[stamp_ns(m.header.stamp)]
                                                             - published[stamp_ns(m.header.stamp)][1]))
           for m in rec.tracks if stamp_ns(m.header.stamp) in published]
    if lat:
        t0 = lat[0][0]
        b.plot([(t - t0) / 60 for t, _ in lat], [v for _, v in lat], ".")
    b.set_title("latency: frame published -> its tracks (ms)")
    b.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
