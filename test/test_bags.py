"""`kltrace bags`: a folder of recordings, one by one and on a local Ray instance; broken bags reported,
finished ones skipped on a rerun, interrupted ones redone."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags")
from rosbags.highlevel import AnyReader  # noqa: E402

from kltrace_ros.batch.jobs import discover  # noqa: E402
from kltrace_ros.io.bag import typestore  # noqa: E402
from rosutil import shifted, textured  # noqa: E402
from test_bag import write_camera_bag  # noqa: E402

SHIFT = 2   # px per frame, x for the bags, y for the video


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """robot0, robot1: good bags; robot2: truncated; day2/walk.mp4: a video; notes.txt: not a recording."""
    root = tmp_path_factory.mktemp("fleet")
    big = textured()
    for k in range(3):
        write_camera_bag(root / f"robot{k}", [shifted(big, SHIFT * i, k) for i in range(4)])
    (mcap,) = (root / "robot2").glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    (root / "day2").mkdir()
    w = cv2.VideoWriter(str(root / "day2" / "walk.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 15, (200, 160))
    for i in range(4):
        w.write(cv2.cvtColor(shifted(big, 0, SHIFT * i), cv2.COLOR_RGB2BGR))
    w.release()
    (root / "notes.txt").write_text("not a recording")
    return root


def bags(fleet, out, *extra):
    cmd = [sys.executable, "-m", "kltrace_ros.cli", "bags", str(fleet), "--topic", "/cam/image_raw", "--out", str(out),
           "--points", "12", "--masks", "2", "--threads", "1", *extra]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None
    return proc, summary


def tracks_of(bag_dir):
    """(x, y, vx, visible) of every track message of an output bag, in order."""
    ts = typestore()
    rows = []
    with AnyReader([bag_dir], default_typestore=ts) as r:
        conns = [c for c in r.connections if c.topic == "/kltrace/tracks"]
        for conn, _, raw in r.messages(connections=conns):
            m = r.deserialize(raw, conn.msgtype)
            rows.append(np.array([[t.x, t.y, t.vx, t.visible] for t in m.tracks]))
    return rows


def by_name(summary):
    return {r["name"]: r for r in summary["recordings"]}


def test_discover_finds_bags_and_videos(fleet):
    jobs = discover(fleet)
    assert [(j.name, j.kind) for j in jobs] == [("day2/walk_mp4", "video"), ("robot0", "bag"), ("robot1", "bag"),
                                               ("robot2", "bag")]


def test_bags_one_by_one_and_on_ray_agree_and_reruns_skip(fleet, tmp_path):
    serial, ray_out = tmp_path / "serial", tmp_path / "ray"
    proc, s1 = bags(fleet, serial)
    assert proc.returncode == 1, proc.stderr[-3000:]          # one recording failed: the run says so
    assert s1 is not None and (s1["done"], s1["failed"], s1["skipped"]) == (3, 1, 0), proc.stderr[-3000:]
    broken = by_name(s1)["robot2"]
    assert broken["status"] == "failed" and "robot2" in broken["error"] and "cannot read" in broken["error"]
    assert "robot2" in proc.stdout and "failed" in proc.stdout
    assert not (serial / "robot2").exists() and not (serial / "robot2.partial").exists()

    # the tracks follow the motion (a frozen engine would report vx = 0)
    rows = tracks_of(serial / "robot0" / "tracks")
    assert len(rows) == 3
    vis = rows[-1][rows[-1][:, 3] > 0]
    assert len(vis) >= 3 and abs(np.median(vis[:, 2]) - SHIFT) < 1.0
    video = json.loads((serial / "day2" / "walk_mp4" / "tracks.json").read_text())
    assert len(video) == 3 and (serial / "day2" / "walk_mp4" / "overlay.mp4").stat().st_size > 0
    vy = [t["vy"] for t in video[-1]["tracks"] if t["visible"]]
    assert len(vy) >= 3 and abs(np.median(vy) - SHIFT) < 1.0

    # the same jobs on a local Ray instance (2 workers, one model each) give the same outputs
    proc, s2 = bags(fleet, ray_out, "--ray", "auto", "--workers", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert s2["mode"] == "ray auto" and s2["workers"] == 2 and (s2["done"], s2["failed"]) == (3, 1)
    for name in ("robot0", "robot1"):
        a, b = tracks_of(serial / name / "tracks"), tracks_of(ray_out / name / "tracks")
        assert len(a) == len(b) and all(np.allclose(x, y, atol=1e-3) for x, y in zip(a, b)), name
    assert json.loads((ray_out / "day2" / "walk_mp4" / "tracks.json").read_text()) == video
    assert "cannot read" in by_name(s2)["robot2"]["error"]

    # rerun: finished recordings are skipped (not rewritten); an interrupted one is redone
    mtime = (serial / "robot0" / "tracks" / "metadata.yaml").stat().st_mtime_ns
    os.rename(serial / "robot1", tmp_path / "moved")
    (serial / "robot1.partial" / "robot1").mkdir(parents=True)          # what a killed run leaves
    (serial / "robot1.partial" / ".kltrace-partial").touch()
    (serial / "robot1.partial" / "robot1" / "result.json").write_text("{}")
    proc, s3 = bags(fleet, serial)
    status = {k: r["status"] for k, r in by_name(s3).items()}
    assert status == {"day2/walk_mp4": "skipped", "robot0": "skipped", "robot1": "done", "robot2": "failed"}
    assert (serial / "robot0" / "tracks" / "metadata.yaml").stat().st_mtime_ns == mtime
    assert not (serial / "robot1.partial").exists()
    assert all(np.array_equal(x, y) for x, y in zip(tracks_of(serial / "robot1" / "tracks"),
                                                     tracks_of(tmp_path / "moved" / "tracks")))

    # other settings than the finished outputs were made with, or a damaged record: reported, nothing deleted
    (serial / "robot0" / "result.json").write_text("{not json")
    proc, s4 = bags(fleet, serial, "--points", "8", "--no-overlay")
    status = by_name(s4)
    assert "other settings" in status["robot1"]["error"] and "'points': (12, 8)" in status["robot1"]["error"]
    assert "damaged" in status["robot0"]["error"] and (serial / "robot0" / "tracks").is_dir()

def test_bags_errors_name_the_fix(fleet, tmp_path):
    proc, _ = bags(tmp_path / "nowhere", tmp_path / "out")
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc, _ = bags(tmp_path / "empty", tmp_path / "out")
    assert proc.returncode == 2 and "no bags" in proc.stderr
    (tmp_path / "out" / "robot0").mkdir(parents=True)          # a folder this command did not write
    (tmp_path / "out" / "robot0" / "mine.txt").write_text("keep")
    (tmp_path / "out" / "robot1.partial").mkdir()                # a staging name this command did not make
    (tmp_path / "out" / "robot1.partial" / "mine.txt").write_text("keep")
    proc, s = bags(fleet, tmp_path / "out", "--no-overlay")
    assert "move it away" in by_name(s)["robot0"]["error"] and "move it away" in by_name(s)["robot1"]["error"]
    assert (tmp_path / "out" / "robot0" / "mine.txt").read_text() == "keep"
    assert (tmp_path / "out" / "robot1.partial" / "mine.txt").read_text() == "keep"
    # outputs inside the input folder are not taken for recordings; two recordings may not share an output
    inside = tmp_path / "in"
    shutil.copytree(fleet / "robot0", inside / "robot0")
    (inside / "out" / "robot0" / "tracks").mkdir(parents=True)
    (inside / "out" / "robot0" / "tracks" / "metadata.yaml").write_text("x")
    assert [j.name for j in discover(inside, inside / "out")] == ["robot0"]
    (inside / "a.b.mp4").write_bytes(b"")
    (inside / "a_b.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="would both write a_b_mp4"):
        discover(inside)
