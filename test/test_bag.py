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
