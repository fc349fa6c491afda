"""Start the KL-tracing node.

    ros2 launch kltrace_ros kltrace.launch.py image:=/camera/color/image_raw device:=cuda
    ros2 launch kltrace_ros kltrace.launch.py image:=/camera/color/image_raw use_depth:=true \
        depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info

Arguments: image (input topic), namespace, params_file, device (auto|cpu|cuda); RGB-D: use_depth (true|false),
depth (aligned depth topic), camera_info (the colour camera's).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("kltrace_ros"), "config", "kltrace.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="image", description="input sensor_msgs/Image topic"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameter file"),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda"),
        DeclareLaunchArgument("use_depth", default_value="false", description="RGB-D: tracks in 3D (true | false)"),
        DeclareLaunchArgument("depth", default_value="depth", description="depth topic aligned to the colour image"),
        DeclareLaunchArgument("camera_info", default_value="camera_info",
                              description="the colour camera's sensor_msgs/CameraInfo topic"),
        Node(
            package="kltrace_ros",
            executable="kltrace_node",
            name="kltrace",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), {
                "device": LaunchConfiguration("device"),
                "use_depth": ParameterValue(LaunchConfiguration("use_depth"), value_type=bool)}],
            remappings=[("image", LaunchConfiguration("image")),
                        ("image/compressed", [LaunchConfiguration("image"), "/compressed"]),
                        ("depth", LaunchConfiguration("depth")),
                        ("camera_info", LaunchConfiguration("camera_info"))],
            output="screen",
        ),
    ])
