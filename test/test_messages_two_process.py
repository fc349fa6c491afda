"""A TrackArray and a FlowArray published by one process arrive intact in another (DDS, loopback)."""
import os
import subprocess
import sys
import time

import pytest

rclpy = pytest.importorskip("rclpy")
from kltrace_ros.msg import FlowArray, Track, TrackArray  # noqa: E402

PUBLISHER = r"""
import sys, time, rclpy
from kltrace_ros.msg import Track, TrackArray, FlowArray
from geometry_msgs.msg import Point32, Vector3
rclpy.init()
node = rclpy.create_node("kltrace_test_pub")
pt = node.create_publisher(TrackArray, "test_tracks", 10)
pf = node.create_publisher(FlowArray, "test_flow", 10)
deadline = time.time() + 20
while (pt.get_subscription_count() == 0 or pf.get_subscription_count() == 0) and time.time() < deadline:
    rclpy.spin_once(node, timeout_sec=0.05)
msg = TrackArray()
msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = 1700000001, 250, "camera_optical"
msg.previous_stamp.sec, msg.previous_stamp.nanosec = 1700000000, 999999999
msg.tracks = [Track(id=2**63 + 5, x=12.25, y=-3.5, vx=0.125, vy=-7.75, visible=True, confidence=3.5, age=4000000000),
              Track(id=0, x=0.0, y=639.5, vx=-1e-3, vy=1e6, visible=False, confidence=0.0, age=0)]
flow = FlowArray()
flow.header = msg.header
flow.previous_stamp = msg.previous_stamp
flow.points = [Point32(x=1.0, y=2.0, z=0.0), Point32(x=3.5, y=4.25, z=0.0)]
flow.displacements = [Vector3(x=0.5, y=-0.25, z=0.0), Vector3(x=-8.0, y=16.0, z=0.0)]
flow.visible = [True, False]
flow.confidence = [0.75, 0.0]
for _ in range(100):  # until the receiver says stop (it kills us) or 10 s
    pt.publish(msg); pf.publish(flow)
    rclpy.spin_once(node, timeout_sec=0.1)
"""


def test_track_and_flow_round_trip_between_processes(ros_env):
    rclpy.init(domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    node = rclpy.create_node("kltrace_test_sub")
    got = {}
    node.create_subscription(TrackArray, "test_tracks", lambda m: got.setdefault("tracks", m), 10)
    node.create_subscription(FlowArray, "test_flow", lambda m: got.setdefault("flow", m), 10)
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER], env=ros_env)
    try:
        deadline = time.time() + 30
        while len(got) < 2 and time.time() < deadline and proc.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        proc.kill()
        proc.wait()
        node.destroy_node()
        rclpy.shutdown()
    assert set(got) == {"tracks", "flow"}, f"received only {sorted(got)} (publisher exit {proc.returncode})"
    m = got["tracks"]
    assert (m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) == (1700000001, 250, "camera_optical")
    assert (m.previous_stamp.sec, m.previous_stamp.nanosec) == (1700000000, 999999999)
    t0, t1 = m.tracks
    assert (t0.id, t0.x, t0.y, t0.vx, t0.vy, t0.visible, t0.confidence, t0.age) == (
        2**63 + 5, 12.25, -3.5, 0.125, -7.75, True, 3.5, 4000000000)
    assert (t1.id, t1.x, t1.y, t1.visible, t1.age) == (0, 0.0, 639.5, False, 0)
    assert t1.vx == pytest.approx(-1e-3) and t1.vy == 1e6
    f = got["flow"]
    assert f.header.frame_id == "camera_optical" and f.previous_stamp.nanosec == 999999999
    assert [(p.x, p.y) for p in f.points] == [(1.0, 2.0), (3.5, 4.25)]
    assert [(d.x, d.y) for d in f.displacements] == [(0.5, -0.25), (-8.0, 16.0)]
    assert list(f.visible) == [True, False]
    assert list(f.confidence) == [0.75, 0.0]
