"""`kltrace demo` / `make demo`: the real node on real footage, fed by this process over DDS.

Starts ``kltrace_node`` as a separate process with ``--ros-args``, publishes the frames of a
real video (../shared/data/video when present, else a real photo shipped by scikit-image moved
by a slow camera-like motion) as sensor_msgs/Image, records the node's ~/debug/overlay and
~/tracks, and writes an overlay video and a tracks file.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

FOOTAGE = [Path("../shared/data/video/tree.avi"), Path("../shared/data/video/davis-demo")]


def builtin_sequence(n: int):
    """A real photo (scikit-image's coffee) seen by a camera that pans and zooms slowly."""
    from skimage import data

    img = data.coffee()
    h, w = img.shape[:2]
    for i in range(n):
        s = 1.0 + 0.004 * i
        m = np.float32([[s, 0, -1.5 * i - (s - 1) * w / 2], [0, s, -0.8 * i - (s - 1) * h / 2]])
        yield cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)[60:300, 80:400]


def run_demo(video: Path | None, frames: int, points: int, out: Path, device: str = "cpu") -> dict:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from kltrace_ros.msg import TrackArray
    from kltrace_ros.offline import read_frames
    from kltrace_ros.ros.convert import fill_image, image_to_rgb

    source = None if str(video) == "builtin" else video or next((p for p in FOOTAGE if p.exists()), None)
    seq = list(read_frames(source, frames, 640) if source else builtin_sequence(frames))
    label = str(source) if source else "scikit-image coffee.png with a simulated camera motion"
    out.mkdir(parents=True, exist_ok=True)
    domain = 100 + os.getpid() % 100
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    cmd = [sys.executable, "-m", "kltrace_ros.ros.node", "--ros-args", "-r", "image:=/demo_camera/image_raw",
           "-p", f"num_points:={points}", "-p", f"device:={device}", "-p", "heatmap_points:=0"]
    print(f"starting: {' '.join(cmd[1:])}")
    node_proc = subprocess.Popen(cmd, env=env)
    rclpy.init(domain_id=domain)
    node = rclpy.create_node("kltrace_demo_camera")
    pub = node.create_publisher(Image, "/demo_camera/image_raw", qos_profile_sensor_data)
    tracks, overlays = [], []
    node.create_subscription(TrackArray, "/kltrace/tracks", tracks.append, 50)
    node.create_subscription(Image, "/kltrace/debug/overlay", lambda m: overlays.append(image_to_rgb(m)), 50)
    writer = None
    try:
        deadline = time.monotonic() + 120
        while (pub.get_subscription_count() == 0 or node.count_publishers("/kltrace/debug/overlay") == 0) \
                and time.monotonic() < deadline:
            if node_proc.poll() is not None:
                raise RuntimeError(f"kltrace_node exited with {node_proc.returncode}")
            rclpy.spin_once(node, timeout_sec=0.1)
        for _ in range(10):
            rclpy.spin_once(node, timeout_sec=0.05)
        print(f"footage: {label} ({len(seq)} frames)")
        from tqdm import tqdm

        t0 = time.monotonic()
        stamp = time.time_ns()
        for i, frame in enumerate(tqdm(seq, desc="demo", unit="frame")):
            msg = fill_image(Image(), frame)
            stamp += 100_000_000
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
            msg.header.frame_id = "demo_camera"
            before = len(tracks)
            pub.publish(msg)
            end = time.monotonic() + (0.5 if i == 0 else 120)
            while (i == 0 or len(tracks) == before) and time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.02)
                if node_proc.poll() is not None:
                    raise RuntimeError(f"kltrace_node exited with {node_proc.returncode}")
        for _ in range(20):
            rclpy.spin_once(node, timeout_sec=0.05)
        elapsed = time.monotonic() - t0
    finally:
        node_proc.send_signal(signal.SIGINT)
        try:
            node_proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            node_proc.kill()
        node.destroy_node()
        rclpy.try_shutdown()
    for img in overlays:
        if writer is None:
            writer = cv2.VideoWriter(str(out / "overlay.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 8,
                                     (img.shape[1], img.shape[0]))
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if writer is not None:
        writer.release()
        cv2.imwrite(str(out / "overlay_last.png"), cv2.cvtColor(overlays[-1], cv2.COLOR_RGB2BGR))
    records = [{"stamp": m.header.stamp.sec + m.header.stamp.nanosec * 1e-9, "tracks": [
        {"id": t.id, "x": t.x, "y": t.y, "vx": t.vx, "vy": t.vy, "visible": t.visible, "confidence": t.confidence,
         "age": t.age} for t in m.tracks]} for m in tracks]
    (out / "tracks.json").write_text(json.dumps(records))
    n = sum(len(r["tracks"]) for r in records)
    stats = {"footage": label, "pairs": len(records), "tracks": n, "seconds": elapsed,
             "tracks_per_s": n / elapsed if elapsed else 0.0, "overlay": str(out / "overlay.mp4"),
             "tracks_file": str(out / "tracks.json")}
    print(f"overlay video: {stats['overlay']} ({len(overlays)} frames)\ntracks: {stats['tracks_file']} "
          f"({len(records)} frame pairs)\nmeasured: {stats['tracks_per_s']:.1f} tracks/s end to end "
          f"({elapsed / max(len(records), 1):.2f} s per frame pair, {points} points, CPU)")
    return stats
