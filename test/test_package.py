"""Package files agree with each other: parameters in node, config and README; launch file; package.xml."""
import pathlib
import py_compile
import xml.etree.ElementTree as ET

import pytest
import yaml

from kltrace_ros.ros.node import PARAMETERS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_config_and_readme_document_every_parameter():
    cfg = yaml.safe_load((ROOT / "config" / "kltrace.yaml").read_text())["/**"]["ros__parameters"]
    assert set(cfg) == set(PARAMETERS)
    for k, v in cfg.items():
        assert v == PARAMETERS[k].default, k
    readme = (ROOT / "README.md").read_text()
    for k in PARAMETERS:
        assert f"| `{k}` |" in readme, f"README lacks parameter {k}"
    assert "make demo" in readme and "make test" in readme


@pytest.mark.parametrize("name, args", [("kltrace", ("image", "namespace", "params_file", "device", "use_depth", "depth",
                                                    "camera_info")),
                                        ("kltrace_fleet", ("robots", "camera", "params_file", "device", "num_points"))])
def test_launch_files_compile_and_take_the_documented_arguments(name, args):
    launch = ROOT / "launch" / f"{name}.launch.py"
    py_compile.compile(str(launch), doraise=True)
    text = launch.read_text()
    for arg in args:
        assert f'DeclareLaunchArgument("{arg}"' in text
        assert f"{arg}:=" in text or arg in ("params_file", "namespace")   # shown in the usage line


def test_package_xml_is_format3_with_interface_group():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    deps = {e.text for e in root if e.tag.endswith("depend")}
    for d in ("rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "builtin_interfaces", "cv_bridge",
              "python3-numpy", "python3-opencv", "rosidl_default_generators", "rosidl_default_runtime"):
        assert d in deps, d
    assert root.find("member_of_group").text == "rosidl_interface_packages"
