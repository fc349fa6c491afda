"""Helpers for tests that run kltrace_node as a real process and talk to it over DDS."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from kltrace_ros.msg import TrackArray
from kltrace_ros.io.image_msgs import ENCODINGS


def encode_image(msg, array: np.ndarray, encoding: str):
    """Fill ``msg`` (sensor_msgs/Image) with ``array`` in ``encoding``: the test camera's side, for every
    encoding the node takes (cv_bridge's cv2_to_imgmsg refuses 16UC1)."""
    ch, bpc = ENCODINGS[encoding.lower()]
    a = np.ascontiguousarray(array)
    msg.height, msg.width = a.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = a.shape[1] * ch * bpc
    msg.data = a.astype("<u2" if bpc == 2 else np.uint8).tobytes()
    return msg


def start_node(tmp_path, env, params: dict | None = None, args: list | None = None, name: str = "kltrace"):
    """kltrace_node with a params file and remapping, as a user would start it."""
    p = {"num_points": 16, "masks": 1, "scales": 1, "threads": 1, **(params or {})}
    lines = ["/**:", "  ros__parameters:"]
    for k, v in p.items():
        lines.append(f"    {k}: {repr(v) if not isinstance(v, (bool, str, list)) else _yaml(v)}")
    pfile = tmp_path / f"{name}_params.yaml"
    pfile.write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "kltrace_ros.ros.node", "--ros-args", "-r", "image:=/test_cam/image_raw",
           "-r", f"__node:={name}", "--params-file", str(pfile)] + (args or [])
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = tmp_path / f"{name}.log"
    return proc


def _yaml(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return "[" + ", ".join(_yaml(x) if isinstance(x, (str, bool)) else repr(x) for x in v) + "]"


def node_log(proc) -> str:
    return proc.log_path.read_text()


def wait_log(proc, text, timeout=20.0) -> bool:
    """Wait until the node's log holds ``text``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in node_log(proc):
            return True
        time.sleep(0.1)
    return False


def rss_mb(proc) -> float:
    """Resident memory of the node process (MB)."""
    with open(f"/proc/{proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def stop_node(proc, timeout=5.0) -> float:
    """SIGINT, wait; returns the seconds it took (kills it if it does not stop)."""
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return float("inf")
    return time.monotonic() - t0


class Harness:
    """A test-side node: publishes images like a camera and collects the node's outputs."""

    def __init__(self, domain_id: int, topic="/test_cam/image_raw", out_ns="/kltrace", compressed=False,
                 qos=qos_profile_sensor_data):
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node("kltrace_test_harness", context=self.ctx)
        from sensor_msgs.msg import CompressedImage

        self.pub = self.node.create_publisher(CompressedImage if compressed else Image,
                                              topic + ("/compressed" if compressed else ""), qos)
        self.tracks: list = []
        self.tracks_topic = out_ns + "/tracks"
        self.node.create_subscription(TrackArray, self.tracks_topic, self.tracks.append, 50)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.stamp = 1_700_000_000 * 10**9

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def wait_for(self, cond, timeout: float, proc=None) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            if proc is not None and proc.poll() is not None:
                return False
            self.executor.spin_once(timeout_sec=0.05)
        return cond()

    def wait_connected(self, timeout=30.0, proc=None) -> bool:
        """Both directions matched (our images -> node, node's tracks -> us), then let discovery settle."""
        ok = self.wait_for(lambda: self.pub.get_subscription_count() > 0
                           and self.node.count_publishers(self.tracks_topic) > 0, timeout, proc)
        self.spin(0.5)
        return ok

    def publish(self, array: np.ndarray, encoding="rgb8", stamp_ns: int | None = None, frame_id="cam") -> None:
        msg = encode_image(Image(), array, encoding)
        self._stamp(msg, stamp_ns, frame_id)
        self.pub.publish(msg)

    def publish_msg(self, msg, stamp_ns=None, frame_id="cam") -> None:
        self._stamp(msg, stamp_ns, frame_id)
        self.pub.publish(msg)

    def _stamp(self, msg, stamp_ns, frame_id):
        if stamp_ns is None:
            self.stamp += 100_000_000
            stamp_ns = self.stamp
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
        msg.header.frame_id = frame_id

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


def textured(h=160, w=200):
    """A real textured RGB image (scikit-image's astronaut), 32 px larger than (h, w) on every side,
    so that :func:`shifted` can cut (h, w) windows moved by up to 32 px."""
    import cv2
    from skimage import data

    img = cv2.resize(data.astronaut(), (w + 64, h + 64), interpolation=cv2.INTER_AREA)
    return img


def shifted(big, dx, dy, h=160, w=200):
    """Window (h, w) of ``big`` whose content moved by (dx, dy) px (integer shifts)."""
    x0, y0 = 32 - dx, 32 - dy
    return np.ascontiguousarray(big[y0:y0 + h, x0:x0 + w])


def domain_id(env):
    return int(env["ROS_DOMAIN_ID"])


def jpeg_declaring(width: int, height: int) -> bytes:
    """A valid 16x16 JPEG whose frame header (SOF0) claims ``width`` x ``height``: a few hundred bytes that a
    decoder would expand to width * height * 3 bytes."""
    import cv2

    ok, jpg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    b = bytearray(jpg.tobytes())
    i = b.index(b"\xff\xc0")
    b[i + 5:i + 7], b[i + 7:i + 9] = height.to_bytes(2, "big"), width.to_bytes(2, "big")
    return bytes(b)


def publish_process(env, width: int, height: int, frames: int, rate_hz: float = 2.0, reliable: bool = False,
                    topic: str = "/test_cam/image_raw"):
    """A camera in a process of its own (its own DDS participant, so it reads ``env``'s Fast DDS profile): waits
    for a subscriber, then publishes ``frames`` textured rgb8 frames at ``rate_hz`` without waiting for anyone."""
    return subprocess.Popen([sys.executable, __file__, topic, str(width), str(height), str(frames), str(rate_hz),
                             str(int(reliable))], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


if __name__ == "__main__":   # the camera of publish_process
    import cv2
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    topic, w, h, n, rate, rel = sys.argv[1], *map(int, sys.argv[2:4]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
    rclpy.init()
    node = rclpy.create_node("test_camera")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE) if rel == "1" else qos_profile_sensor_data
    pub = node.create_publisher(Image, topic, qos)
    end = time.monotonic() + 60
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    rclpy.spin_once(node, timeout_sec=0.5)
    canvas = cv2.resize(textured(), (w + 64, h + 64), interpolation=cv2.INTER_LINEAR)
    for i in range(n):
        msg = encode_image(Image(), shifted(canvas, 4 * i, 0, h, w), "rgb8")
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000 + i, 0
        pub.publish(msg)
        print(f"sent {i}", flush=True)
        end = time.monotonic() + 1 / rate
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.02)
