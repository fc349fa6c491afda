import os
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """../shared/data (research-only evaluation data); tests using it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (evaluation data lives outside the project)")
    return SHARED_DATA


@pytest.fixture
def ros_env(tmp_path):
    """Environment for child ROS processes: an isolated DDS domain per test run."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(os.getpid() % 200 + 10)
    env["ROS_LOG_DIR"] = str(tmp_path / "roslog")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None
