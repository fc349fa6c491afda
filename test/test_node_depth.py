"""kltrace_node as a process with an RGB-D camera (use_depth:=true): a generated stream (a textured board moving
in 3D before a wall, a distorted lens, 16UC1 depth with a hole) -> tracks with 3D positions and velocities that
match the exact geometry, ~/tracks_cloud as a PointCloud2 that decodes to the same, and bad depth or camera_info
named while 2D tracking goes on."""
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rosutil import Harness, domain_id, encode_image, node_log, start_node, stop_node, wait_log  # noqa: E402

from kltrace_ros.eval.rgbd import HOLE, WALL_Z, rgbd_camera  # noqa: E402


def _cloud_points(msg) -> np.ndarray:
    """A PointCloud2 decoded by its own field table, as a generic subscriber would."""
    kinds = {7: "<f4", 6: "<u4"}
    dtype = np.dtype({"names": [f.name for f in msg.fields], "formats": [kinds[f.datatype] for f in msg.fields],
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    return np.frombuffer(bytes(msg.data), dtype, count=msg.width)


def test_rgbd_stream_gives_tracks_in_3d(tmp_path, ros_env):
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from rclpy.qos import qos_profile_sensor_data

    cam = rgbd_camera()
    rays = cam.rays()
    proc = start_node(tmp_path, ros_env, {"use_depth": True, "num_points": 16, "threads": 2},
                      args=["-r", "depth:=/test_cam/depth", "-r", "camera_info:=/test_cam/camera_info"])
    h = Harness(domain_id(ros_env))
    depth_pub = h.node.create_publisher(Image, "/test_cam/depth", qos_profile_sensor_data)
    info_pub = h.node.create_publisher(CameraInfo, "/test_cam/camera_info", qos_profile_sensor_data)
    from visualization_msgs.msg import Marker, MarkerArray

    clouds, markers = [], []
    h.node.create_subscription(PointCloud2, "/kltrace/tracks_cloud", clouds.append, 20)
    h.node.create_subscription(MarkerArray, "/kltrace/markers", markers.append, 20)

    def info(fx=None):
        m = CameraInfo(width=cam.size[0], height=cam.size[1], distortion_model="plumb_bob", d=list(cam.D))
        k = cam.K.copy()
        if fx is not None:
            k[0, 0] = fx
        m.k = list(k.reshape(-1))
        m.header.frame_id = "cam"
        return m

    def send(i, depth=None, stamp_shift=0, camera_info=None, encoding="16UC1"):
        """Frame i of the camera: colour, its depth and camera_info, stamped at 10 Hz; then wait for its pair."""
        rgb, depth_mm, _ = cam.render(i, rays)
        stamp = 1_700_000_000 * 10**9 + i * 100_000_000
        d = encode_image(Image(), depth_mm if depth is None else depth, "16UC1")
        d.encoding = encoding
        d.header.stamp.sec, d.header.stamp.nanosec = divmod(stamp + stamp_shift, 10**9)
        d.header.frame_id = "cam"
        info_pub.publish(camera_info or info())
        depth_pub.publish(d)
        h.spin(0.05)
        before = len(h.tracks)
        h.publish(rgb, stamp_ns=stamp)
        if i:
            assert h.wait_for(lambda: len(h.tracks) > before, 60, proc), node_log(proc)

    try:
        assert h.wait_connected(60, proc) and h.wait_for(
            lambda: depth_pub.get_subscription_count() > 0 and info_pub.get_subscription_count() > 0, 30, proc)
        h.spin(0.5)
        for i in range(5):
            send(i)
        h.spin(0.5)
        log = node_log(proc)
        assert "tracing failed" not in log and "ERROR" not in log, log
        board_v, wall_v, placed, checked_hole = [], [], 0, 0
        for k, msg in enumerate(h.tracks):
            i = k + 1
            assert msg.header.frame_id == "cam"
            for t in msg.tracks:
                if not t.visible:
                    assert not t.has_position
                    continue
                x0, x1, y0, y1 = HOLE
                if x0 * 320 + 3 < t.x < x1 * 320 - 3 and y0 * 240 + 3 < t.y < y1 * 240 - 3:
                    assert not t.has_position, "a track in the depth hole got a 3D position"
                    checked_hole += 1
                    continue
                if not t.has_position:
                    continue
                placed += 1
                pos, vel, _ = cam.truth(i, np.array([[t.x, t.y]]))
                got = np.array([t.position.x, t.position.y, t.position.z])
                assert np.linalg.norm(got - pos[0]) < 0.02 * pos[0, 2], (t, pos)
                if t.has_velocity:
                    v = np.array([t.velocity.x, t.velocity.y, t.velocity.z])
                    (board_v if np.linalg.norm(vel[0]) else wall_v).append(v)
        assert placed >= 30 and checked_hole >= 1 and len(board_v) >= 8 and len(wall_v) >= 8, \
            (placed, checked_hole, len(board_v), len(wall_v))
        speed = np.linalg.norm(cam.board_velocity)
        board_err = np.linalg.norm(np.array(board_v) - cam.board_velocity, axis=1)
        assert np.median(board_err) < 0.15 * speed, (np.median(board_err), speed)
        # the wall stands still: what it shows is the 2D trackers' noise, under a pixel per frame (1 px at 3 m and
        # 10 Hz is 0.12 m/s; mm read as m would be 1000 times more, a per-frame time step 10 times less)
        one_px = WALL_Z / cam.K[0, 0] * cam.rate
        assert np.median(np.linalg.norm(wall_v, axis=1)) < one_px, (np.median(np.linalg.norm(wall_v, axis=1)), one_px)
        # the cloud: the same tracks, decoded by its field table
        assert clouds
        cloud, last = _cloud_points(clouds[-1]), h.tracks[-1]
        mine = {t.id: t for t in last.tracks if t.has_position}
        assert clouds[-1].header.frame_id == "cam" and sorted(cloud["id"]) == sorted(mine)
        for p in cloud:
            t = mine[int(p["id"])]
            assert np.allclose([p["x"], p["y"], p["z"]], [t.position.x, t.position.y, t.position.z], atol=1e-6)
            assert t.has_velocity == np.isfinite(p["vx"])

        # the markers: an arrow per track with a velocity, ending at its 3D position
        arrows = [m for m in markers[-1].markers if m.type == Marker.ARROW and m.action == Marker.ADD]
        ends = sorted((round(a.points[1].x, 4), round(a.points[1].y, 4), round(a.points[1].z, 4)) for a in arrows)
        assert ends and ends == sorted((round(t.position.x, 4), round(t.position.y, 4), round(t.position.z, 4))
                                       for t in last.tracks if t.has_velocity)
        assert markers[-1].markers[0].action == Marker.DELETEALL

        # bad input: each named, and tracks keep coming (2D)
        bad = [("depth image 160x120 does not match the colour image 320x240", dict(depth=np.zeros((120, 160),
                                                                                                  np.uint16))),
               ("camera_info focal length fx=0", dict(camera_info=info(fx=0.0))),
               ("unsupported depth encoding 'mono16'", dict(encoding="mono16")),
               ("no depth image within depth_tolerance=0.02 s", dict(stamp_shift=500_000_000))]
        for j, (text, how) in enumerate(bad):
            n = len(h.tracks)
            send(5 + j, **how)
            assert wait_log(proc, text, 10), node_log(proc)
            assert len(h.tracks) == n + 1 and not any(t.has_position for t in h.tracks[-1].tracks)
        send(9)                                  # good again: 3D again
        assert any(t.has_position for t in h.tracks[-1].tracks)
        assert "tracing failed" not in node_log(proc)
    finally:
        assert stop_node(proc) < 5.0
        h.close()
