"""`kltrace bag`: images from an mcap bag in, the node's messages out (rosbags, no ROS needed)."""
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("rosbags")
from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402

from kltrace_ros.io.bag import typestore, write_image_bag  # noqa: E402
from rosutil import shifted, textured  # noqa: E402


def write_camera_bag(path, frames):
    """A camera bag on /cam/image_raw at 10 Hz, stamps from 1 s."""
    return write_image_bag(path, frames, "/cam/image_raw", 10.0, "cam", 10**9)


def test_bag_in_tracks_out(tmp_path):
    big = textured()
    write_camera_bag(tmp_path / "in", [shifted(big, 2 * i, 0) for i in range(4)])
    out = tmp_path / "out.mcap"
    proc = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "bag", str(tmp_path / "in"), "--topic",
                           "/cam/image_raw", "--out", str(out), "--points", "12", "--masks", "2", "--foxglove", "0"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ts = typestore()
    seen = {}
    with AnyReader([out], default_typestore=ts) as r:
        for conn, t, raw in r.messages():
            seen.setdefault(conn.topic, []).append(r.deserialize(raw, conn.msgtype))
    assert {k: len(v) for k, v in seen.items()} == {"/kltrace/tracks": 3, "/kltrace/flow": 3,
                                                   "/kltrace/debug/overlay": 3}
    last = seen["/kltrace/tracks"][-1]
    assert last.header.frame_id == "cam" and last.header.stamp.nanosec == 3 * 10**8
    assert last.previous_stamp.nanosec == 2 * 10**8
    assert abs(np.median([t.vx for t in last.tracks if t.visible]) - 2.0) < 1.0
    again = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "bag", str(tmp_path / "in"), "--topic",
                            "/nope", "--out", str(tmp_path / "o2.mcap")], capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "/cam/image_raw" in again.stderr


def test_bag_errors_are_one_line_and_leave_no_output(tmp_path):
    ts = typestore()
    with Writer(tmp_path / "strings", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c = w.add_connection("/cam/image_raw", "std_msgs/msg/String", typestore=ts)
        w.write(c, 10**9, ts.serialize_cdr(ts.types["std_msgs/msg/String"](data="hi"), "std_msgs/msg/String"))
    big = textured()
    write_camera_bag(tmp_path / "good", [shifted(big, 2 * i, 0) for i in range(3)])
    (mcap,) = (tmp_path / "good").glob("*.mcap")
    truncated = tmp_path / "truncated.mcap"
    truncated.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    noise = tmp_path / "noise.mcap"
    noise.write_bytes(np.random.default_rng(0).bytes(4000))
    cases = [(tmp_path / "strings", "carries std_msgs/msg/String, not sensor_msgs/Image"),
             (truncated, "truncated.mcap"), (noise, "cannot read"), (tmp_path / "nope", "does not exist")]
    for src, text in cases:
        out = tmp_path / "out.mcap"
        proc = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "bag", str(src), "--topic", "/cam/image_raw",
                               "--out", str(out), "--points", "8", "--masks", "1"], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert text in proc.stderr and len(proc.stderr.strip().splitlines()[-1]) > 0, proc.stderr[-2000:]
        assert not out.exists() and not (tmp_path / "out.mcap.partial").exists(), src


def test_rgbd_bag_gives_the_node_s_3d_fields(tmp_path):
    """An RGB-D recording (colour, 16UC1 depth recorded after it, camera_info with a distorted lens): the tracks
    carry 3D positions matching the exact geometry and /kltrace/tracks_cloud is written."""
    from kltrace_ros.eval.rgbd import rgbd_camera

    cam = rgbd_camera()
    rays = cam.rays()
    frames = [cam.render(i, rays) for i in range(4)]
    write_image_bag(tmp_path / "in", [f[0] for f in frames], "/cam/color/image_raw", cam.rate, "cam", 10**9,
                    depths=("/cam/aligned_depth_to_color/image_raw", [f[1] for f in frames]),
                    camera=("/cam/color/camera_info", cam.K, cam.D))
    out = tmp_path / "out.mcap"
    proc = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "bag", str(tmp_path / "in"), "--topic",
                           "/cam/color/image_raw", "--depth-topic", "/cam/aligned_depth_to_color/image_raw",
                           "--camera-info-topic", "/cam/color/camera_info", "--out", str(out), "--points", "16",
                           "--masks", "1", "--no-overlay"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'pairs_3d': 3" in proc.stdout, proc.stdout
    seen = {}
    with AnyReader([out], default_typestore=typestore()) as r:
        for conn, t, raw in r.messages():
            seen.setdefault(conn.topic, []).append(r.deserialize(raw, conn.msgtype))
    assert len(seen["/kltrace/tracks"]) == 3 and len(seen["/kltrace/tracks_cloud"]) == 3
    placed = 0
    for i, msg in enumerate(seen["/kltrace/tracks"], start=1):
        for t in msg.tracks:
            if t.has_position:
                pos = cam.truth(i, np.array([[t.x, t.y]]))[0][0]
                assert np.linalg.norm([t.position.x - pos[0], t.position.y - pos[1], t.position.z - pos[2]]) \
                    < 0.02 * pos[2]
                placed += 1
    assert placed >= 20
    assert seen["/kltrace/tracks_cloud"][-1].width == sum(t.has_position for t in seen["/kltrace/tracks"][-1].tracks)
    # one topic without the other is refused, naming both
    half = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "bag", str(tmp_path / "in"), "--topic",
                           "/cam/color/image_raw", "--depth-topic", "/cam/aligned_depth_to_color/image_raw", "--out",
                           str(tmp_path / "half.mcap")], capture_output=True, text=True, timeout=120)
    assert half.returncode != 0 and "--depth-topic and --camera-info-topic together" in half.stderr
