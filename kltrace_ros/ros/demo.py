"""`kltrace demo` / `make demo`: the real node on real footage, fed by this process over DDS.

Starts ``kltrace_node`` as a separate process with ``--ros-args``, publishes the frames of a
real video (../shared/data/video when present, else a real photo shipped by scikit-image moved
by a slow camera-like motion) as sensor_msgs/Image, records the node's ~/debug/overlay and
~/tracks, and writes an overlay video and a tracks file. With an RGB-D camera (``kltrace demo --video rgbd``:
the generated one of ``eval/rgbd.py``) it publishes depth and camera_info too and starts the node with
``use_depth``: tracks in 3D.
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
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from tqdm import tqdm

from kltrace_ros.io.image_msgs import image_to_rgb, rgb_to_image
from kltrace_ros.io.images import read_frames, skimage_photo
from kltrace_ros.io.video import VideoWriter
from kltrace_ros.msg import TrackArray
from kltrace_ros.tracking.tracker import track_record

from .transport import ENV, with_large_images

FOOTAGE = [Path("../shared/data/video/tree.avi"), Path("../shared/data/video/davis-demo")]


def builtin_sequence(n: int):
    """A real photo (scikit-image's coffee) seen by a camera that pans and zooms slowly."""
    img = skimage_photo("coffee.png")
    h, w = img.shape[:2]
    for i in range(n):
        s = 1.0 + 0.004 * i
        m = np.float32([[s, 0, -1.5 * i - (s - 1) * w / 2], [0, s, -0.8 * i - (s - 1) * h / 2]])
        yield cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)[60:300, 80:400]


def footage(video: Path | None, frames: int) -> tuple[list, str]:
    source = None if str(video) == "builtin" else video or next((p for p in FOOTAGE if p.exists()), None)
    if source is None:
        return list(builtin_sequence(frames)), "scikit-image coffee.png with a simulated camera motion"
    return list(read_frames(source, frames, 640)), str(source)


def rgbd_messages(header, depth_mm: np.ndarray, K, D) -> tuple:
    """An RGB-D camera's depth (16UC1, millimetres) and camera_info (plumb_bob ``D``, intrinsics ``K``) for the
    colour frame of ``header``."""
    h, w = depth_mm.shape
    depth = Image(header=header, height=h, width=w, encoding="16UC1", is_bigendian=0, step=2 * w,
                  data=np.ascontiguousarray(depth_mm, "<u2").tobytes())
    info = CameraInfo(header=header, width=w, height=h, distortion_model="plumb_bob", d=[float(v) for v in D],
                      k=[float(v) for v in np.reshape(K, -1)])
    return depth, info


class Player:
    """This process's side: a camera publisher and the recorder of the node's outputs."""

    def __init__(self, domain: int, node_proc: subprocess.Popen, lens=None):
        self.proc = node_proc
        self.lens = lens                      # RGB-D: (K 3x3, plumb_bob D) of the camera_info published
        rclpy.init(domain_id=domain)
        self.node = rclpy.create_node("kltrace_demo_camera")
        self.pub = self.node.create_publisher(Image, "/demo_camera/image_raw", qos_profile_sensor_data)
        self.tracks, self.overlays = [], []
        self.node.create_subscription(TrackArray, "/kltrace/tracks", self.tracks.append, 50)
        self.node.create_subscription(Image, "/kltrace/debug/overlay",
                                      lambda m: self.overlays.append(image_to_rgb(m)), 50)

    def spin_until(self, done, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not done() and time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kltrace_node exited with {self.proc.returncode}")
            rclpy.spin_once(self.node, timeout_sec=0.02)

    def wait_connected(self) -> None:
        self.spin_until(lambda: self.pub.get_subscription_count() > 0
                        and self.node.count_publishers("/kltrace/debug/overlay") > 0, 120)
        self.spin_until(lambda: False, 0.5)

    def play(self, seq: list) -> float:
        """Publish each frame (10 Hz stamps) and wait for the node's answer before the next; seconds spent.
        A frame (colour, depth in mm) of an RGB-D camera is published with its depth and camera_info."""
        t0 = time.monotonic()
        stamp = time.time_ns()
        for i, frame in enumerate(tqdm(seq, desc="demo", unit="frame")):
            stamp += 100_000_000
            msg = rgb_to_image(frame[0] if isinstance(frame, tuple) else frame)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
            msg.header.frame_id = "demo_camera"
            if isinstance(frame, tuple):
                self._publish_depth(msg.header, frame[1])
            before = len(self.tracks)
            self.pub.publish(msg)
            self.spin_until(lambda: i > 0 and len(self.tracks) > before, 0.5 if i == 0 else 120)
        self.spin_until(lambda: False, 1.0)
        return time.monotonic() - t0

    def _publish_depth(self, header, depth_mm: np.ndarray) -> None:
        if not hasattr(self, "depth_pubs"):
            self.depth_pubs = (self.node.create_publisher(Image, "/demo_camera/depth", qos_profile_sensor_data),
                               self.node.create_publisher(CameraInfo, "/demo_camera/camera_info",
                                                          qos_profile_sensor_data))
            self.spin_until(lambda: all(p.get_subscription_count() for p in self.depth_pubs), 30)
        depth, info = rgbd_messages(header, depth_mm, *self.lens)
        self.depth_pubs[1].publish(info)
        self.depth_pubs[0].publish(depth)
        self.spin_until(lambda: False, 0.02)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.node.destroy_node()
        rclpy.try_shutdown()


def write_outputs(out: Path, overlays: list, tracks: list) -> list:
    writer = VideoWriter(out / "overlay.mp4", 8)
    for img in overlays:
        writer.write(img)
    writer.close()
    if overlays:
        cv2.imwrite(str(out / "overlay_last.png"), cv2.cvtColor(overlays[-1], cv2.COLOR_RGB2BGR))
    records = [{"stamp": m.header.stamp.sec + m.header.stamp.nanosec * 1e-9,
                "tracks": [track_record(t) for t in m.tracks]} for m in tracks]
    (out / "tracks.json").write_text(json.dumps(records))
    return records


def run_demo(video: Path | None, frames: int, points: int, out: Path, device: str = "cpu", rgbd=None) -> dict:
    """``rgbd``: (frames as (RGB, depth mm) pairs, K, D, label) of an RGB-D camera instead of ``video``."""
    seq, label = footage(video, frames) if rgbd is None else (rgbd[0], rgbd[3])
    out.mkdir(parents=True, exist_ok=True)
    domain = 100 + os.getpid() % 100
    cmd = [sys.executable, "-m", "kltrace_ros.ros.node", "--ros-args", "-r", "image:=/demo_camera/image_raw",
           "-p", f"num_points:={points}", "-p", f"device:={device}", "-p", "heatmap_points:=0"]
    if rgbd is not None:
        cmd += ["-p", "use_depth:=true", "-r", "depth:=/demo_camera/depth",
                "-r", "camera_info:=/demo_camera/camera_info"]
    print(f"starting: {' '.join(cmd[1:])}")
    env = with_large_images(dict(os.environ, ROS_DOMAIN_ID=str(domain)))   # both processes: full-size frames
    if ENV in env:
        os.environ[ENV] = env[ENV]
    cam = Player(domain, subprocess.Popen(cmd, env=env), None if rgbd is None else rgbd[1:3])
    try:
        cam.wait_connected()
        print(f"footage: {label} ({len(seq)} frames)")
        elapsed = cam.play(seq)
    finally:
        cam.close()
    records = write_outputs(out, cam.overlays, cam.tracks)
    n = sum(len(r["tracks"]) for r in records)
    stats = {"footage": label, "pairs": len(records), "tracks": n, "seconds": elapsed,
             "tracks_with_3d": sum("position" in t for r in records for t in r["tracks"]),
             "tracks_per_s": n / elapsed if elapsed else 0.0, "overlay": str(out / "overlay.mp4"),
             "tracks_file": str(out / "tracks.json")}
    print(f"overlay video: {stats['overlay']} ({len(cam.overlays)} frames)\ntracks: {stats['tracks_file']} "
          f"({len(records)} frame pairs)\nmeasured: {stats['tracks_per_s']:.1f} tracks/s end to end "
          f"({elapsed / max(len(records), 1):.2f} s per frame pair, {points} points, CPU)")
    if stats["tracks_with_3d"]:
        print(f"3D: {stats['tracks_with_3d']} tracks with a position in the camera frame (metres), velocities in "
              f"m/s, in {stats['tracks_file']}")
    return stats
