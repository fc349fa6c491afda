"""The image converter on every encoding (and against cv_bridge where it is installed)."""
import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from kltrace_ros.ros.convert import ImageError, compressed_to_rgb, encode_image, fill_image, image_to_rgb

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
MONO16 = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)


def expected(enc):
    if enc in ("mono16", "16UC1"):
        g = ((MONO16.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return np.repeat(g[..., None], 3, 2)
    if enc == "mono8":
        return np.repeat(RGB[..., :1], 3, 2)
    return RGB


def source(enc):
    return {"rgb8": RGB, "bgr8": RGB[..., ::-1], "rgba8": np.dstack([RGB, np.full((5, 7), 9, np.uint8)]),
            "bgra8": np.dstack([RGB[..., ::-1], np.full((5, 7), 9, np.uint8)]), "mono8": RGB[..., 0],
            "mono16": MONO16, "16UC1": MONO16}[enc]


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1"])
def test_every_encoding(enc):
    msg = encode_image(Image(), source(enc), enc)
    assert np.array_equal(image_to_rgb(msg), expected(enc))
    # padded rows (step larger than the pixels) are handled
    padded = Image(height=msg.height, width=msg.width, encoding=enc, step=msg.step + 3)
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
    padded.data = np.hstack([rows, np.zeros((msg.height, 3), np.uint8)]).tobytes()
    assert np.array_equal(image_to_rgb(padded), expected(enc))


def test_big_endian_16bit():
    msg = encode_image(Image(), MONO16, "mono16")
    msg.data = MONO16.astype(">u2").tobytes()
    msg.is_bigendian = 1
    assert np.array_equal(image_to_rgb(msg), expected("mono16"))


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1"])
def test_against_cv_bridge(enc):
    cv_bridge = pytest.importorskip("cv_bridge", reason="cv_bridge is not installed (needs numpy<2.3)")
    msg = encode_image(Image(), source(enc), enc)
    ref = cv_bridge.CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8" if "16" not in enc else "passthrough")
    if "16" in enc:
        ref = np.repeat(((ref.astype(np.uint32) + 128) // 257).astype(np.uint8)[..., None], 3, 2)
    assert np.array_equal(image_to_rgb(msg), ref)


def test_bad_messages_name_the_problem():
    with pytest.raises(ImageError, match="unsupported image encoding 'yuv422'"):
        image_to_rgb(Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)))
    with pytest.raises(ImageError, match="empty image"):
        image_to_rgb(Image(height=0, width=0, encoding="rgb8", step=0))
    with pytest.raises(ImageError, match="truncated"):
        image_to_rgb(Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(40)))
    with pytest.raises(ImageError, match="step 5 is smaller"):
        image_to_rgb(Image(height=4, width=4, encoding="rgb8", step=5, data=bytes(20)))
    with pytest.raises(ImageError, match="cannot decode"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=b"not a jpeg"))


def test_compressed_and_fill():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert np.array_equal(compressed_to_rgb(CompressedImage(format="png", data=png.tobytes())), RGB)
    msg = fill_image(Image(), RGB)
    assert msg.encoding == "rgb8" and msg.step == 21 and np.array_equal(image_to_rgb(msg), RGB)
