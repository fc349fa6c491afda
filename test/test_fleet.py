"""Many robots, one GPU server: two robot camera processes publish compressed images over UDP on loopback
(UDP only, no shared memory: the path frames take between machines; static discovery peers), one kltrace node serves both."""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.qos import QoSProfile

from kltrace_ros.msg import FlowArray
from robot_camera import BASE_NS, shift_at
from rosutil import domain_id, node_log, start_node, stop_node, wait_log

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROBOTS = {"robot1": (1, 0), "robot2": (0, 1)}          # texture motion per step (px): robot1 pans, robot2 tilts
PERIOD_NS = 100_000_000                                 # robots publish at 10 Hz
# what the README tells a user to set on every machine of the fleet (here all on one machine, over loopback)
FLEET_ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": "127.0.0.1",
             "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}


def truth(stamp_ns: int, prev_ns: int, motion) -> np.ndarray:
    """True displacement (px) between two frames of a robot camera, from their stamps."""
    i, j = round((stamp_ns - BASE_NS) / PERIOD_NS), round((prev_ns - BASE_NS) / PERIOD_NS)
    return np.array(motion, float) * (shift_at(i) - shift_at(j))


def stamp_ns(t) -> int:
    return t.sec * 10**9 + t.nanosec


def test_two_robots_one_node_compressed_over_loopback(tmp_path, ros_env, monkeypatch):
    env = {**ros_env, **FLEET_ENV}
    for k, v in FLEET_ENV.items():
        monkeypatch.setenv(k, v)                       # this process's DDS participant too
    inputs = [f"{r}/camera/image_raw" for r in ROBOTS]
    node = start_node(tmp_path, env, {"inputs": inputs, "num_points": 12, "fb_threshold": 0.0,    # compressed: from
                                      "frame_gap": 4},   # a pair spans enough motion to tell a frozen tracker
                      ["--params-file", str(ROOT / "config" / "kltrace_fleet.yaml")])          # the shipped file
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id(env))
    sub = rclpy.create_node("fleet_monitor", context=ctx)
    flows = {r: [] for r in ROBOTS}
    for r in ROBOTS:
        sub.create_subscription(FlowArray, f"/kltrace/{r}_camera_image_raw/flow", flows[r].append, QoSProfile(depth=50))
    ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
    ex.add_node(sub)
    cams = []
    try:
        assert wait_log(node, "kltrace ready", 60), node_log(node)[-3000:]
        cams = [subprocess.Popen([sys.executable, str(HERE / "robot_camera.py"), r, str(dx), str(dy), "30"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for r, (dx, dy) in ROBOTS.items()]
        end = time.monotonic() + 40
        while time.monotonic() < end and not all(len(f) >= 9 for f in flows.values()):
            ex.spin_once(timeout_sec=0.05)
            assert node.poll() is None, node_log(node)[-3000:]
    finally:
        for c in cams:
            c.kill()
            c.wait()
        ex.shutdown()
        sub.destroy_node()
        rclpy.shutdown(context=ctx)
        code = stop_node(node)
    assert code < 5
    for r, motion in ROBOTS.items():
        assert len(flows[r]) >= 9, (r, {k: len(v) for k, v in flows.items()}, node_log(node)[-3000:])
        errors, moved = [], 0.0
        for m in flows[r][1:]:
            d = np.array([[v.x, v.y] for v, ok in zip(m.displacements, m.visible) if ok])
            want = truth(stamp_ns(m.header.stamp), stamp_ns(m.previous_stamp), motion)
            moved += np.abs(want).sum()
            if len(d):
                errors.append(np.linalg.norm(np.median(d, axis=0) - want))
        assert moved >= 4, (r, "the camera moved too little between traced frames to tell a frozen tracker")
        assert len(errors) >= 6 and np.median(errors) < 1.0, (r, errors)
        assert m.header.frame_id == f"{r}_camera"
