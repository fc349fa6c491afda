"""sensor_msgs/Image and CompressedImage <-> numpy RGB, the project's one converter.

Supported encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16, 16UC1. 16-bit images are scaled
to 8 bit by the top byte (value / 257, rounded), the same for every frame so that brightness
stays consistent across a stream. Everything else raises ``ImageError`` with a message that
names the problem and the fix. Works on any object with the Image fields (no rclpy import).
"""
from __future__ import annotations

import cv2
import numpy as np

ENCODINGS = {  # encoding -> (channels, bytes per channel)
    "rgb8": (3, 1), "bgr8": (3, 1), "rgba8": (4, 1), "bgra8": (4, 1),
    "mono8": (1, 1), "mono16": (1, 2), "16uc1": (1, 2),
}


class ImageError(ValueError):
    """An image message that cannot be converted; the message says why and what to do."""


def image_to_rgb(msg) -> np.ndarray:
    """(H,W,3) uint8 RGB from a sensor_msgs/Image."""
    enc = msg.encoding.lower()
    if enc not in ENCODINGS:
        raise ImageError(f"unsupported image encoding '{msg.encoding}': publish one of "
                         f"{', '.join(sorted(ENCODINGS))} (e.g. through image_proc/debayer)")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError(f"empty image ({w}x{h}): check the camera driver")
    ch, bpc = ENCODINGS[enc]
    if step < w * ch * bpc:
        raise ImageError(f"image step {step} is smaller than width*bytes per pixel ({w * ch * bpc}) "
                         f"for {msg.encoding}: the message is malformed")
    data = msg.data if isinstance(msg.data, (bytes, bytearray, memoryview)) else bytes(msg.data)
    buf = np.frombuffer(data, np.uint8)
    if buf.size < h * step:
        raise ImageError(f"image data has {buf.size} bytes, height*step needs {h * step}: "
                         f"the message is truncated")
    rows = buf[: h * step].reshape(h, step)[:, : w * ch * bpc]
    if bpc == 2:
        dt = np.dtype(">u2") if msg.is_bigendian else np.dtype("<u2")
        px = rows.copy().view(dt).reshape(h, w).astype(np.uint32)
        gray = ((px + 128) // 257).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    px = rows.reshape(h, w, ch)
    if enc == "rgb8":
        return np.ascontiguousarray(px)
    if enc == "bgr8":
        return np.ascontiguousarray(px[..., ::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(px[..., :3])
    if enc == "bgra8":
        return np.ascontiguousarray(px[..., 2::-1])
    return np.repeat(px, 3, axis=2)  # mono8


def compressed_to_rgb(msg) -> np.ndarray:
    """(H,W,3) uint8 RGB from a sensor_msgs/CompressedImage (jpeg/png)."""
    buf = np.frombuffer(bytes(msg.data), np.uint8)
    if buf.size == 0:
        raise ImageError("empty compressed image: check the image_transport publisher")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"cannot decode compressed image (format '{msg.format}'): publish jpeg or png")
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def fill_image(msg, rgb: np.ndarray):
    """Fill a sensor_msgs/Image (rgb8) with ``rgb`` (H,W,3) uint8; returns the message."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = rgb.shape[1] * 3
    msg.data = rgb.tobytes()
    return msg


def encode_image(msg, array: np.ndarray, encoding: str):
    """Fill ``msg`` with ``array`` in ``encoding`` (for tests and players; inverse of image_to_rgb)."""
    enc = encoding.lower()
    ch, bpc = ENCODINGS[enc]
    a = np.ascontiguousarray(array)
    msg.height, msg.width = a.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = a.shape[1] * ch * bpc
    msg.data = a.astype("<u2" if bpc == 2 else np.uint8).tobytes()
    return msg
