"""DDS settings for full-resolution images: the Fast DDS profile that ships in config/."""
from __future__ import annotations

import os
from pathlib import Path

PROFILE = "fastdds_large_images.xml"
ENV = "FASTDDS_DEFAULT_PROFILES_FILE"


def large_image_profile() -> Path | None:
    """The profile in the source tree or the installed share folder (None when neither is found)."""
    here = Path(__file__).resolve().parents[2] / "config" / PROFILE
    if here.is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory  # only in a ROS workspace

        installed = Path(get_package_share_directory("kltrace_ros")) / "config" / PROFILE
        return installed if installed.is_file() else None
    except Exception:  # noqa: BLE001 - no ament index: no installed profile
        return None


def with_large_images(env: dict | None = None) -> dict:
    """``env`` (default: this process's) with the profile set, unless the user chose a profile already."""
    env = dict(os.environ if env is None else env)
    profile = large_image_profile()
    if profile is not None and not env.get(ENV):
        env[ENV] = str(profile)
    return env
