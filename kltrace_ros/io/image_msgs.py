"""sensor_msgs/Image and CompressedImage <-> numpy RGB, through cv_bridge.

cv_bridge does the conversions it gets right (8-bit colour and mono to rgb8, decoding compressed
images, rgb8 images out). Our own code is only what the PyPI cv_bridge gets wrong, each case shown
by ``test/test_image_msgs.py``: it ignores ``step`` (padded rows come out garbled, silently), has
no 16-bit to 8-bit conversion (KeyError; and maps 16UC1 to an 8-bit type), fails on the
``is_bigendian`` flag of 8-bit images under numpy 2 (AttributeError), reports short data as
"buffer is too small" and returns None for undecodable compressed data. Raw 16-bit images are
scaled to 8 bit by the top byte (value / 257, rounded), the same for every frame so that
brightness stays consistent; compressed 16-bit images come out of cv_bridge's decoder already in
8 bit (OpenCV keeps the top byte: at most one level from the raw path) and without alpha.

Supported encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16, 16UC1 (depth: 16UC1 in millimetres, 32FC1 in metres,
``depth_to_metres``); everything else raises
``ImageError`` with a message that names the problem and the fix. Works on any object with the
Image fields (rclpy or rosbags messages); no rclpy import.

Size limit: an image with more than ``max_pixels`` pixels is refused before any conversion; for a
compressed image the size is read from its header (Pillow opens lazily), so a few hundred bytes
that declare 30000x30000 cost nothing (decompression bombs).
"""
from __future__ import annotations

import io
import warnings
from types import SimpleNamespace

import cv2
import numpy as np
from cv_bridge import CvBridge
from PIL import Image as PILImage

ENCODINGS = {  # encoding -> (channels, bytes per channel)
    "rgb8": (3, 1), "bgr8": (3, 1), "rgba8": (4, 1), "bgra8": (4, 1),
    "mono8": (1, 1), "mono16": (1, 2), "16uc1": (1, 2),
}
DEPTH_ENCODINGS = {"16uc1": (1, 2), "32fc1": (1, 4)}   # REP-118: millimetres (uint16), metres (float32)
BRIDGE = CvBridge()
MAX_IMAGE_PIXELS = 4096 * 4096     # default limit: generous for real cameras


class ImageError(ValueError):
    """An image message that cannot be converted; the message says why and what to do."""


def _rows(msg, enc: str) -> np.ndarray:
    """(H, W*bytes per pixel) uint8 pixel rows without the row padding, after checking the fields."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError(f"empty image ({w}x{h}): check the camera driver")
    ch, bpc = {**ENCODINGS, **DEPTH_ENCODINGS}[enc]
    if step < w * ch * bpc:
        raise ImageError(f"image step {step} is smaller than width*bytes per pixel ({w * ch * bpc}) "
                         f"for {msg.encoding}: the message is malformed")
    data = msg.data if isinstance(msg.data, (bytes, bytearray, memoryview, np.ndarray)) else bytes(msg.data)
    buf = np.frombuffer(data, np.uint8)
    if buf.size < h * step:
        raise ImageError(f"image data has {buf.size} bytes, height*step needs {h * step}: "
                         f"the message is truncated")
    return buf[: h * step].reshape(h, step)[:, : w * ch * bpc]


def check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(f"image {width}x{height} ({width * height / 1e6:.1f} Mpx) exceeds max_image_pixels="
                         f"{max_pixels} ({max_pixels / 1e6:.1f} Mpx): refused before decoding; publish a smaller "
                         f"image (image_proc/resize) or raise max_image_pixels")


def _checked_rows(msg, encodings: dict, max_pixels: int, unsupported: str) -> tuple[str, np.ndarray]:
    """The lower-case encoding and the pixel rows of ``msg``, after checking the encoding (one of ``encodings``;
    else ``unsupported`` is the error), the size limit and the fields."""
    enc = msg.encoding.lower()
    if enc not in encodings:
        raise ImageError(unsupported)
    check_size(int(msg.width), int(msg.height), max_pixels)
    return enc, _rows(msg, enc)


def _one_channel(msg, rows: np.ndarray, dtype: str) -> np.ndarray:
    """(H,W) pixels of a one-channel image's rows as ``dtype`` ("u2", "f4") in the message's byte order."""
    return rows.copy().view((">" if msg.is_bigendian else "<") + dtype).reshape(rows.shape[0], int(msg.width))


def image_to_rgb(msg, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """(H,W,3) uint8 RGB from a sensor_msgs/Image."""
    enc, rows = _checked_rows(msg, ENCODINGS, max_pixels, f"unsupported image encoding '{msg.encoding}': publish one "
                              f"of {', '.join(sorted(ENCODINGS))} (e.g. through image_proc/debayer)")
    if ENCODINGS[enc][1] == 2:
        gray = ((_one_channel(msg, rows, "u2").astype(np.uint32) + 128) // 257).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    packed = SimpleNamespace(height=rows.shape[0], width=int(msg.width), encoding=enc, is_bigendian=0,
                             data=np.ascontiguousarray(rows))
    return np.ascontiguousarray(BRIDGE.imgmsg_to_cv2(packed, "rgb8"))


def depth_to_metres(msg, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """(H,W) float32 depth in metres from a depth sensor_msgs/Image (REP-118: 16UC1 in millimetres, 32FC1 in
    metres); unknown depth (0, NaN, inf) comes out as NaN."""
    enc, rows = _checked_rows(msg, DEPTH_ENCODINGS, max_pixels, f"unsupported depth encoding '{msg.encoding}': "
                              f"publish 16UC1 (millimetres) or 32FC1 (metres), aligned to the colour image (REP-118; "
                              f"e.g. depth_image_proc/convert_metric)")
    if enc == "16uc1":
        out = _one_channel(msg, rows, "u2").astype(np.float32) / 1000.0
    else:
        out = _one_channel(msg, rows, "f4").astype(np.float32)
    out[~(np.isfinite(out) & (out > 0))] = np.nan
    return out


def compressed_size(data: bytes, max_pixels: int) -> None:
    """Check the size a compressed image declares in its header, without decoding it."""
    pillow_limit = PILImage.MAX_IMAGE_PIXELS
    try:
        # the limit is ours alone (``max_pixels``, checked below): Pillow's own (179 MP) would refuse what the user
        # allowed, so it is off while we read the header (only the worker thread reads headers)
        PILImage.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as img:   # reads the header only
                width, height = img.size
    except Exception:  # noqa: BLE001 - not a format Pillow knows: the decoder below says what is wrong
        return
    finally:
        PILImage.MAX_IMAGE_PIXELS = pillow_limit
    check_size(width, height, max_pixels)


def compressed_to_rgb(msg, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """(H,W,3) uint8 RGB from a sensor_msgs/CompressedImage (jpeg/png)."""
    data = bytes(msg.data)
    if not data:
        raise ImageError("empty compressed image: check the image_transport publisher")
    compressed_size(data, max_pixels)
    img = BRIDGE.compressed_imgmsg_to_cv2(SimpleNamespace(data=data), "passthrough")   # 8-bit gray or BGR
    if img is None:
        raise ImageError(f"cannot decode compressed image (format '{msg.format}'): publish jpeg or png")
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB if img.ndim == 2 else cv2.COLOR_BGR2RGB)


def rgb_to_image(rgb: np.ndarray, header=None):
    """A sensor_msgs/Image (rgb8) of ``rgb`` (H,W,3) uint8, with ``header`` when given."""
    msg = BRIDGE.cv2_to_imgmsg(np.ascontiguousarray(rgb, dtype=np.uint8), "rgb8")
    if header is not None:
        msg.header = header
    return msg
