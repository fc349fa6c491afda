"""Everything that crosses the boundary of the core: image files and videos, sensor_msgs images
(through cv_bridge), our messages for rclpy and rosbags, bags, Foxglove, and drawing."""
