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

from rosutil import (Harness, domain_id, jpeg_declaring, node_log, rss_mb, shifted, start_node,  # noqa: E402
                     stop_node, textured, wait_log)


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
        assert wait_log(proc, "following 16 of 19 query points from ~/queries; dropped: 1 not finite (point 3); 1 "
                              "outside the 200x160 image (point 4); 1 beyond num_points=16 (point 18)"), node_log(proc)
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
        r = set_int("num_pointz", 8)                           # a typo: named, with the likely fix
        assert not r.successful and "kltrace has no parameter 'num_pointz' (did you mean num_points?)" in r.reason, r

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


def test_queries_log_what_was_dropped_while_a_camera_streams(tmp_path, ros_env):
    """The same call site used to log at info (all kept) and then at warning (some dropped), which rclpy refuses:
    every later frame was reported as a failed trace and the drops were never told."""
    big = textured()
    proc = start_node(tmp_path, ros_env, {"num_points": 16, "keypoints": "topic"})
    h = Harness(domain_id(ros_env))
    queries = h.node.create_publisher(PolygonStamped, "/kltrace/queries", 10)

    def send(pts, seconds=1.0):
        msg = PolygonStamped()
        msg.polygon.points = [Point32(x=float(x), y=float(y), z=0.0) for x, y in pts]
        queries.publish(msg)
        for i in range(int(seconds * 5)):            # a 5 Hz camera that never waits for the node
            h.publish(shifted(big, i % 3, 0))
            h.spin(0.2)

    try:
        assert h.wait_connected(60, proc), node_log(proc)
        h.wait_for(lambda: queries.get_subscription_count() > 0, 10)
        send([], 1.0)
        good = [(20.0 + 15 * i, 80.0) for i in range(9)]
        send(good)
        assert wait_log(proc, "following 9 of 9 query points"), node_log(proc)
        send(np.random.default_rng(0).uniform(0, 150, (10000, 2)))
        assert wait_log(proc, "following 16 of 10000 query points from ~/queries; dropped: 9984 beyond "
                              "num_points=16 (points 16, 17, 18, 19, 20, 21, 22, 23, ...)"), node_log(proc)
        send(good[:4] + [(float("nan"), 3.0), (float("inf"), 4.0), (900.0, 10.0), (-50.0, -50.0)])
        assert wait_log(proc, "following 4 of 8 query points from ~/queries; dropped: 2 not finite (points 4, 5); "
                              "2 outside the 200x160 image (points 6, 7)"), node_log(proc)
        n = len(h.tracks)
        send(good, 2.0)
        assert h.wait_for(lambda: len(h.tracks) > n, 30, proc), node_log(proc)
        log = node_log(proc)
        assert "Logger severity" not in log and "tracing failed" not in log, log
    finally:
        assert stop_node(proc) < 2.0
        h.close()


def test_tracks_in_view_never_exceed_num_points_when_the_view_jumps_back_and_forth(tmp_path, ros_env):
    """Anchored tracking keeps tracks that leave the view and re-seeds in their place; when the view jumps back they
    return, and used to add to the re-seeded ones (17-19 tracks in view at num_points 16)."""
    from kltrace_ros.io.images import camera_view

    # 320x240, 16 points on a 5x4 grid: a 40 px jump sends the left column out of view and the new seeds go to the
    # free grid places of the top row; jumping back brings the column back while the new seeds stay in view
    canvas = cv2.resize(textured(), (480, 360), interpolation=cv2.INTER_AREA)
    proc = start_node(tmp_path, ros_env, {"num_points": 16, "masks": 1, "scales": 0, "threads": 2})
    h = Harness(domain_id(ros_env))
    try:
        assert h.wait_connected(60, proc), node_log(proc)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 14:             # a 10 Hz camera jumping 40 px back and forth every second
            x = 60 if int(time.monotonic() - t0) % 2 else 100
            h.publish(camera_view(canvas, (320, 240), (x, 60)))
            h.spin(0.1)
        h.spin(1.0)
        in_view = [sum(-0.5 <= t.x <= 319.5 and -0.5 <= t.y <= 239.5 for t in m.tracks) for m in h.tracks]
        out_of_view = [len(m.tracks) - k for m, k in zip(h.tracks, in_view)]
        print(f"{len(h.tracks)} pairs; tracks in view max {max(in_view)}, out of view max {max(out_of_view)}")
        assert len(h.tracks) >= 10 and max(out_of_view) > 0      # tracks did leave the view and were kept
        assert max(in_view) <= 16, in_view
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


@pytest.mark.parametrize("reliable", [True, False])
def test_the_first_very_large_raw_frame(tmp_path, ros_env, reliable):
    """4096x3072 rgb8 (36 MB) from a new publisher that never waits, both processes with the large-image Fast DDS
    profile: best effort, Fast DDS loses the first sample over 16 MB (a plain subscriber too), and the node says what
    to set; with reliable QoS on both sides frame 0 arrives and starts the first pair."""
    from kltrace_ros.ros.transport import large_image_profile
    from rosutil import publish_process

    env = {**ros_env, "FASTDDS_DEFAULT_PROFILES_FILE": str(large_image_profile())}
    args = ["-p", "qos_overrides./test_cam/image_raw.subscription.reliability:=reliable"] if reliable else []
    proc = start_node(tmp_path, env, {"num_points": 4, "masks": 1, "scales": 1}, args=args)
    h = Harness(domain_id(ros_env))          # receives the tracks (small messages); the camera is a process
    try:
        assert h.wait_for(lambda: h.node.count_publishers(h.tracks_topic) > 0, 60, proc), node_log(proc)
        camera = publish_process(env, 4096, 3072, 4, reliable=reliable)
        camera.wait(timeout=120)
        h.wait_for(lambda: len(h.tracks) >= 1, 60, proc)
        log = node_log(proc)
        assert h.tracks, log
        first = h.tracks[0].previous_stamp.sec - 1_700_000_000
        if reliable:
            assert first == 0 and "frames over best-effort DDS" not in log, (first, log)
        else:   # (frame 0 is lost here as a rule; the transport decides, so only the advice is asserted)
            assert "36 MB frames over best-effort DDS: Fast DDS loses the first sample over 16 MB" in log, (first, log)
    finally:
        assert stop_node(proc) < 5.0
        h.close()
