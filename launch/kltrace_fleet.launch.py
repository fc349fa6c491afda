"""One kltrace node on a GPU server for several robots' compressed cameras.

    ros2 launch kltrace_ros kltrace_fleet.launch.py robots:=robot1,robot2 camera:=camera/image_raw device:=cuda num_points:=64

Subscribes to /<robot>/<camera>/compressed for every robot (sensor_msgs/CompressedImage: a 320x240 JPEG is
35x smaller than raw rgb8) with best-effort, depth-1 QoS per robot, and publishes
/kltrace/<robot>_<camera with / as _>/tracks, flow, ... per robot; all robots share one model on the GPU.
Set ROS_DOMAIN_ID and discovery (ROS_STATIC_PEERS or ROS_DISCOVERY_SERVER) on every machine: README,
"Many robots, one GPU server". Arguments: robots, camera, params_file, device, num_points.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def node(context):
    robots = [r.strip("/ ") for r in LaunchConfiguration("robots").perform(context).split(",") if r.strip("/ ")]
    camera = LaunchConfiguration("camera").perform(context).strip("/")
    inputs = [f"{r}/{camera}" for r in robots]
    # a lossy link: best effort, and only the newest frame waits (one override per robot's topic)
    qos = {}
    for name in inputs:
        qos[f"qos_overrides./{name}/compressed.subscription.reliability"] = "best_effort"
        qos[f"qos_overrides./{name}/compressed.subscription.depth"] = 1
    return [Node(
        package="kltrace_ros",
        executable="kltrace_node",
        name="kltrace",
        parameters=[LaunchConfiguration("params_file"),
                    {"inputs": inputs, "compressed": True, "device": LaunchConfiguration("device"),
                     "num_points": int(LaunchConfiguration("num_points").perform(context)), **qos}],
        output="screen",
    )]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("kltrace_ros"), "config", "kltrace_fleet.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("robots", default_value="robot1,robot2", description="robot namespaces, comma-separated"),
        DeclareLaunchArgument("camera", default_value="camera/image_raw", description="image topic under each robot"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameter file"),
        DeclareLaunchArgument("device", default_value="cuda", description="auto | cpu | cuda"),
        DeclareLaunchArgument("num_points", default_value="64", description="tracks per robot"),
        OpaqueFunction(function=node),
    ])
