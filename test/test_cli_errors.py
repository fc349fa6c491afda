"""Careless input to the CLI: one-line errors, non-zero exits, valid or no output, never a partial file."""
import json
import subprocess
import sys

import numpy as np
import pytest

from rosutil import shifted, textured

cv2 = pytest.importorskip("cv2")


def kltrace(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "kltrace_ros.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(proc, text):
    assert proc.returncode == 2, proc.stdout[-500:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and text in proc.stderr, proc.stderr[-2000:]


@pytest.fixture
def pair(tmp_path):
    big = textured()
    cv2.imwrite(str(tmp_path / "a.png"), shifted(big, 0, 0))
    cv2.imwrite(str(tmp_path / "b.png"), shifted(big, 2, 0))
    return tmp_path / "a.png", tmp_path / "b.png"


@pytest.mark.parametrize("points,text", [
    ("[[1, 2, 3]]", "point 0 is [1, 2, 3]"),
    ("[[[1, 2], [3, 4]]]", "point 0 is [[1, 2], [3, 4]]"),
    ("[[true, false]]", "point 0 is [True, False]"),
    ("[[1, NaN]]", "point 0 is [1, nan]"),
    ("[[1, Infinity]]", "point 0 is [1, inf]"),
    ('{"x": 1}', "must hold a list of [x, y] pairs"),
    ("[[1, 2]", "is not valid JSON"),
])
def test_track_pair_refuses_malformed_points_by_name(tmp_path, pair, points, text):
    (tmp_path / "q.json").write_text(points)
    one_line_error(kltrace("track-pair", *pair, tmp_path / "q.json", tmp_path / "o.json"), text)
    assert not (tmp_path / "o.json").exists()


def test_track_pair_output_checks_and_many_points_with_progress(tmp_path, pair):
    (tmp_path / "q.json").write_text(json.dumps([[50, 60]]))
    (tmp_path / "outdir").mkdir()
    one_line_error(kltrace("track-pair", *pair, tmp_path / "q.json", tmp_path / "outdir"), "is a directory")
    many = np.random.default_rng(0).uniform([20, 20], [180, 140], (300, 2)).tolist()
    (tmp_path / "many.json").write_text(json.dumps(many))
    one_line_error(kltrace("track-pair", *pair, tmp_path / "many.json", tmp_path / "o.json", "--max-points", 100),
                   "more than --max-points 100")
    proc = kltrace("track-pair", *pair, tmp_path / "many.json", tmp_path / "o.json", "--masks", 1, "--scales", 1)
    assert proc.returncode == 0 and "track-pair" in proc.stderr          # a progress bar past 256 points
    out = json.loads((tmp_path / "o.json").read_text())                 # strict JSON: no NaN/Infinity
    assert len(out["points"]) == 300 and not list(tmp_path.glob("*.partial*"))


def test_video_refuses_what_is_not_a_video_and_leaves_nothing(tmp_path):
    (tmp_path / "text.mp4").write_text("this is text\n")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    for bad in ("text.mp4", "empty.mp4", "noise.mp4"):
        one_line_error(kltrace("video", tmp_path / bad, "--out", tmp_path / "o.mp4", "--tracks", tmp_path / "t.json"),
                       "is not a video OpenCV can read")
    frames = tmp_path / "frames"
    frames.mkdir()
    big = textured()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i:03d}.png"), shifted(big, 2 * i, 0))
    (frames / "004.png").write_text("not an image")
    one_line_error(kltrace("video", frames, "--out", tmp_path / "o.mp4", "--tracks", tmp_path / "t.json", "--points",
                           8, "--masks", 1), "cannot read image")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.mp4", "frames", "noise.mp4", "text.mp4"]


def test_track_pair_answers_queries_outside_frame_1_by_index_and_warns_of_a_size_change(tmp_path, pair):
    (tmp_path / "q.json").write_text(json.dumps([[50, 60], [1e9, 1e9], [-50, -50], [199.4, 159.4]]))
    proc = kltrace("track-pair", *pair, tmp_path / "q.json", tmp_path / "o.json", "--masks", 1, "--scales", 1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 of 4 queries lie outside" in proc.stderr and "points 1, 2 answered not visible" in proc.stderr
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["points"][1] == out["points"][2] == [None, None] and not any(out["visible"][1:3])
    assert out["reason"][1] == out["reason"][2] == "query outside frame 1 (200x160)"
    assert out["reason"][0] is None and out["reason"][3] is None       # the corner pixel is inside
    assert all(v is not None for v in out["points"][0] + out["points"][3])
    big = cv2.resize(cv2.imread(str(pair[1])), (400, 320))
    cv2.imwrite(str(tmp_path / "big.png"), big)
    proc = kltrace("track-pair", pair[0], tmp_path / "big.png", tmp_path / "q.json", tmp_path / "o2.json",
                   "--masks", 1, "--scales", 1)
    assert proc.returncode == 0 and "big.png is 400x320" in proc.stderr and "scaled" in proc.stderr, proc.stderr


def test_unreadable_images_are_named_without_opencv_noise(tmp_path, pair):
    (tmp_path / "q.json").write_text("[[50, 60]]")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all" * 10)
    for bad, text in (("missing.png", "missing.png: no such file"),
                      ("garbage.png", "garbage.png: not an image OpenCV can decode")):
        proc = kltrace("track-pair", pair[0], tmp_path / bad, tmp_path / "q.json", tmp_path / "o.json")
        one_line_error(proc, text)
        assert "WARN" not in proc.stderr and "findDecoder" not in proc.stderr, proc.stderr
