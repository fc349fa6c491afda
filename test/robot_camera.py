"""A robot's camera as its own process: publishes JPEG sensor_msgs/CompressedImage at a fixed rate, never
waiting for anyone, on /<robot>/camera/image_raw/compressed. The texture moves by ``dx, dy`` px every
``every`` frames; stamps are BASE + i * period, so a subscriber recovers the frame index from a stamp.

    python robot_camera.py ROBOT DX DY SECONDS [RATE]
"""
import sys
import time

import cv2
import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage
from skimage import data

BASE_NS = 1_700_000_000 * 10**9
EVERY = 3          # frames per step of the texture (3.3 px/s at 10 Hz: within reach between traced frames)


def shift_at(i: int) -> int:
    return i // EVERY


def frame(img: np.ndarray, i: int, dx: int, dy: int) -> np.ndarray:
    """Window of a wrapped texture whose content moved by (dx, dy) * shift_at(i) px."""
    s = shift_at(i)
    return np.ascontiguousarray(np.roll(img, (dy * s, dx * s), axis=(0, 1))[100:260, 150:350])


def main() -> None:
    robot, dx, dy, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    rate = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    rclpy.init()
    node = rclpy.create_node("camera", namespace=robot)
    pub = node.create_publisher(CompressedImage, "camera/image_raw/compressed", qos_profile_sensor_data)
    period = 1.0 / rate
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        msg = CompressedImage()
        stamp = BASE_NS + int(i * period * 1e9)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
        msg.header.frame_id = f"{robot}_camera"
        msg.format = "jpeg"
        msg.data = cv2.imencode(".jpg", frame(img, i, dx, dy), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        pub.publish(msg)
        i += 1
        time.sleep(max(0.0, start + i * period - time.monotonic()))
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
