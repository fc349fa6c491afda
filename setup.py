import xml.etree.ElementTree as ET
from pathlib import Path

from setuptools import find_packages, setup

# The version is written once, in package.xml (what ROS tooling reads); the package reports it
# through importlib.metadata.
VERSION = ET.parse(Path(__file__).with_name("package.xml")).getroot().findtext("version")

setup(
    name="kltrace_ros",
    version=VERSION,
    description="Zero-shot optical flow and point tracks for ROS 2 (KL-tracing on LRAS)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["kltrace_ros", "kltrace_ros.*"]),
    package_data={"kltrace_ros": ["models/*.pt", "models/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/kltrace_ros"]),
        ("share/kltrace_ros", ["package.xml"]),
        ("share/kltrace_ros/launch", ["launch/kltrace.launch.py", "launch/kltrace_fleet.launch.py"]),
        ("share/kltrace_ros/config", ["config/kltrace.yaml", "config/kltrace_fleet.yaml",
                                          "config/fastdds_large_images.xml"]),
    ],
    # torch is a documented pip dependency (CPU: torch==2.13.0; see README). Exact pins: requirements.txt.
    install_requires=["numpy<2.3", "opencv-python-headless<5", "cv-bridge", "tqdm", "torch", "scikit-image",
                      "matplotlib", "rosbags", "foxglove-sdk", "Pillow"],
    entry_points={
        "console_scripts": [
            "kltrace = kltrace_ros.cli:main",
            "kltrace_node = kltrace_ros.ros.node:main",
        ],
    },
)
