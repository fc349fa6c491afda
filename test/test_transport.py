"""Full-resolution camera frames between two processes: the shipped Fast DDS profile carries them."""
import subprocess
import sys

import pytest

pytest.importorskip("rclpy")
from kltrace_ros.ros.transport import ENV, large_image_profile, with_large_images  # noqa: E402

SUBSCRIBER = r"""
import sys, time, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("frames_in")
got = []
node.create_subscription(Image, "/big_frames", lambda m: got.append(len(m.data)), qos_profile_sensor_data)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.05)
print(len(got), set(got))
"""
PUBLISHER = r"""
import sys, time, numpy as np, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("frames_out")
pub = node.create_publisher(Image, "/big_frames", qos_profile_sensor_data)
end = time.monotonic() + 20
while pub.get_subscription_count() == 0 and time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.1)
time.sleep(1.0)
w, h, n = 640, 480, int(sys.argv[1])
img = Image(height=h, width=w, encoding="rgb8", step=w * 3, data=bytes(np.arange(w * h * 3, dtype=np.uint8)))
t0 = time.monotonic()
for i in range(n):          # a 30 Hz camera, best effort (sensor-data QoS)
    pub.publish(img)
    time.sleep(max(0.0, t0 + (i + 1) / 30 - time.monotonic()))
time.sleep(0.5)
"""


def frames_received(env, n=45):
    sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, "7"], env=env, stdout=subprocess.PIPE, text=True)
    pub = subprocess.run([sys.executable, "-c", PUBLISHER, str(n)], env=env, timeout=60, capture_output=True, text=True)
    out, _ = sub.communicate(timeout=60)
    assert pub.returncode == 0, pub.stderr[-2000:]
    count, sizes = out.split(" ", 1)
    assert int(count) == 0 or sizes.strip() == "{921600}"
    return int(count)


def test_large_frames_arrive_with_the_profile(ros_env):
    assert large_image_profile() is not None and large_image_profile().name == "fastdds_large_images.xml"
    env = dict(ros_env)
    env.pop(ENV, None)
    assert frames_received(with_large_images(env)) >= 43          # 45 published; all but a start-up frame or two
    assert with_large_images({ENV: "/my/own.xml"})[ENV] == "/my/own.xml"   # a user's own profile is kept
