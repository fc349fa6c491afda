"""The node against hostile or careless input, as a process: decompression bombs, work bounds, ~/reset bursts,
bad query points. Each case logs a clear reason and the node keeps tracking."""
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import Point32, PolygonStamped  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from rosutil import (Harness, domain_id, node_log, rss_mb, shifted, start_node, stop_node, textured,  # noqa: E402
                     wait_log)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A valid 16x16 JPEG whose frame header (SOF0) claims ``width`` x ``height``: a few hundred bytes that a
    decoder would expand to width * height * 3 bytes."""
    ok, jpg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    b = bytearray(jpg.tobytes())
    i = b.index(b"\xff\xc0")
    b[i + 5:i + 7], b[i + 7:i + 9] = height.to_bytes(2, "big"), width.to_bytes(2, "big")
    return bytes(b)


def png(img):
    return CompressedImage(format="png", data=cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes())


def test_decompression_bombs_cost_nothing(tmp_path, ros_env):
    big = textured()
    topic = "/test_cam/image_raw/compressed"
    proc = start_node(tmp_path, ros_env, {"compressed": True}, args=["-r", f"image/compressed:={topic}"])
    h = Harness(domain_id(ros_env), compressed=True)
    try:
        assert h.wait_connected(60, proc), node_log(proc)
        h.publish_msg(png(shifted(big, 0, 0)))
        h.spin(0.5)
        h.publish_msg(png(shifted(big, 2, 0)))
        assert h.wait_for(lambda: len(h.tracks) == 1, 60, proc), node_log(proc)
        before = rss_mb(proc)
        bombs = [jpeg_declaring(30000, 30000), jpeg_declaring(12000, 12000)]   # 2.7 GB and 432 MB decoded
        assert max(len(b) for b in bombs) < 1000
        for _ in range(3):
            for b in bombs:
                h.publish_msg(CompressedImage(format="jpeg", data=b), stamp_ns=h.stamp)   # no frame period goes by
                h.spin(0.3)
        assert wait_log(proc, "refused before decoding"), node_log(proc)
        grown = rss_mb(proc) - before
        print(f"six decompression bombs (30000x30000 and 12000x12000 JPEG headers): RSS {before:.0f} -> "
              f"{before + grown:.0f} MB")
        assert grown < 100, f"RSS grew {grown:.0f} MB on six bombs"
        n = len(h.tracks)
        h.publish_msg(png(shifted(big, 4, 0)))             # still tracking, from the last good frame
        assert h.wait_for(lambda: len(h.tracks) > n, 60, proc), node_log(proc)
        assert abs(np.median([t.vx for t in h.tracks[-1].tracks if t.visible]) - 2.0) < 1.0
    finally:
        assert stop_node(proc) < 2.0
        h.close()


def test_work_budget_reset_burst_and_bad_queries(tmp_path, ros_env):
    big = textured()
    proc = start_node(tmp_path, ros_env, {"num_points": 16, "keypoints": "topic"})
    h = Harness(domain_id(ros_env))
    queries = h.node.create_publisher(PolygonStamped, "/kltrace/queries", 10)
    setp = h.node.create_client(SetParameters, "/kltrace/set_parameters")
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    reset = h.node.create_client(Trigger, "/kltrace/reset", qos_profile=QoSProfile(
        history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE))   # a client that keeps every answer
    try:
        assert h.wait_connected(60, proc), node_log(proc)
        assert setp.wait_for_service(timeout_sec=10) and reset.wait_for_service(timeout_sec=10)
        h.wait_for(lambda: queries.get_subscription_count() > 0, 10)

        def set_int(name, value):
            f = setp.call_async(SetParameters.Request(parameters=[Parameter(name=name, value=ParameterValue(
                type=ParameterType.PARAMETER_INTEGER, integer_value=value))]))
            assert h.wait_for(f.done, 10)
            return f.result().results[0]

        # queries: non-finite, outside the image and beyond num_points are reported, the rest followed
        pts = [(50.0, 60.0), (0.0, 0.0), (199.0, 159.0), (float("nan"), 5.0), (500.0, 20.0)] + [(10.0 + i, 100.0)
                                                                                                  for i in range(14)]
        h.publish(shifted(big, 0, 0))
        h.spin(0.5)
        msg = PolygonStamped()
        msg.polygon.points = [Point32(x=x, y=y, z=0.0) for x, y in pts]
        queries.publish(msg)
        assert wait_log(proc, "following 16 of 19 query points from ~/queries, 1 non finite, 1 outside, "
                              "1 beyond num points"), node_log(proc)
        n = len(h.tracks)
        h.publish(shifted(big, 2, 0))
        assert h.wait_for(lambda: len(h.tracks) > n, 60, proc), node_log(proc)
        tracks = h.tracks[-1].tracks
        # the corner pixels were accepted as queries (the log above; they used to be refused as out of view); where
        # they went is the model's call (a window there is 3/4 padding), the other 14 followed the 2 px move
        assert len(tracks) >= 14 and abs(np.median([t.vx for t in tracks if t.visible]) - 2.0) < 0.5, tracks
        # the work budget: refused with the time it would take, measured on this machine
        r = set_int("num_points", 4096)
        assert not r.successful and "point-passes per pair, over max_point_passes=4096" in r.reason, r.reason
        assert "ms per point-pass measured here" in r.reason, r.reason
        assert set_int("masks", 32).successful                 # 16 x 32 x (1 + 1) = 1024: within the budget
        r = set_int("scales", 8)                               # 16 x 32 x (8 + 1) = 4608: over it
        assert not r.successful and "4608 point-passes" in r.reason, r.reason
        assert set_int("masks", 1).successful and set_int("num_points", 8).successful
        # a burst of resets while frames flow: every call answered, promptly
        futures, answered = [], []
        for i in range(200):
            futures.append(reset.call_async(Trigger.Request()))
            futures[-1].add_done_callback(lambda _, t0=time.monotonic(): answered.append(time.monotonic() - t0))
            if i % 20 == 0:
                h.publish(shifted(big, 2 + i // 20, 0))
            h.spin(0.005)
        assert h.wait_for(lambda: all(f.done() for f in futures), 30), sum(f.done() for f in futures)
        assert all(f.result().success for f in futures)
        print(f"200 ~/reset calls 5 ms apart: all answered, median {1000 * np.median(answered):.0f} ms")
        assert proc.poll() is None
    finally:
        assert stop_node(proc) < 2.0
        h.close()


def test_over_budget_settings_refuse_to_start(tmp_path, ros_env):
    proc = start_node(tmp_path, ros_env, {"num_points": 4096, "masks": 32, "scales": 8})
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "over max_point_passes" in node_log(proc), node_log(proc)


def test_reset_warnings_are_rate_limited_with_a_count(tmp_path, ros_env):
    """20 frames alternating between two sizes: 19 resets, logged at most once per 5 s, with the count."""
    big = textured()
    proc = start_node(tmp_path, ros_env)
    h = Harness(domain_id(ros_env))
    try:
        assert h.wait_connected(60, proc), node_log(proc)
        for i in range(20):
            img = shifted(big, 0, 0)
            h.publish(img if i % 2 == 0 else cv2.resize(img, (100, 80)))
            h.spin(0.1)
        assert wait_log(proc, "image size changed"), node_log(proc)
        h.spin(1.0)
        lines = [line for line in node_log(proc).splitlines() if "image size changed" in line]
        assert 1 <= len(lines) <= 2 and "resets so far" in lines[0], lines
        assert proc.poll() is None
    finally:
        assert stop_node(proc) < 2.0
        h.close()
