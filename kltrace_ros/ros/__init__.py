"""The thin ROS 2 layer: ``node`` (kltrace_node) and ``demo`` (the node fed over DDS)."""
