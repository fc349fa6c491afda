"""Start the KL-tracing node.

    ros2 launch kltrace_ros kltrace.launch.py image:=/camera/color/image_raw device:=cuda

Arguments: image (input topic), namespace, params_file, device (auto|cpu|cuda).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("kltrace_ros"), "config", "kltrace.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="image", description="input sensor_msgs/Image topic"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameter file"),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda"),
        Node(
            package="kltrace_ros",
            executable="kltrace_node",
            name="kltrace",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), {"device": LaunchConfiguration("device")}],
            remappings=[("image", LaunchConfiguration("image")),
                        ("image/compressed", [LaunchConfiguration("image"), "/compressed"])],
            output="screen",
        ),
    ])
