"""`colcon build` of the package in a fresh workspace installs messages, Python code and launch files."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV = pathlib.Path(sys.prefix)


def test_colcon_build_in_workspace(tmp_path):
    colcon = shutil.which("colcon") or str(VENV / "bin" / "colcon")
    if not os.path.exists(colcon):
        pytest.skip("colcon is not installed (make setup installs colcon-common-extensions)")
    src = tmp_path / "src" / "kltrace_ros"
    src.parent.mkdir(parents=True)
    ignore = shutil.ignore_patterns(".venv", "build", "install", "log", ".git", "__pycache__", "*.egg-info", "runs")
    shutil.copytree(ROOT, src, ignore=ignore)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV),
               PATH=f"{VENV / 'bin'}:{os.environ['PATH']}")
    proc = subprocess.run(
        [colcon, "build", "--cmake-args", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    inst = tmp_path / "install" / "kltrace_ros"
    site = next(inst.glob("lib/python3*/site-packages"))
    assert (site / "kltrace_ros" / "msg" / "_track_array.py").is_file()
    assert (site / "kltrace_ros" / "tracing").is_dir(), "Python package not installed next to the messages"
    assert (inst / "share" / "kltrace_ros" / "launch" / "kltrace.launch.py").is_file()
    assert (inst / "share" / "kltrace_ros" / "config" / "kltrace.yaml").is_file()
    assert os.access(inst / "lib" / "kltrace_ros" / "kltrace_node", os.X_OK)
    # the installed messages import and serialise from the workspace alone
    code = ("from kltrace_ros.msg import TrackArray, Track; from rclpy.serialization import serialize_message, "
            "deserialize_message; m = TrackArray(tracks=[Track(id=7, x=1.5)]); "
            "print(deserialize_message(serialize_message(m), TrackArray).tracks[0].id)")
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(site)), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "7", out.stderr[-2000:]
