"""The image converter: every encoding, cv_bridge where it is right, our code where it is wrong."""
import cv2
import numpy as np
import pytest
from cv_bridge import CvBridge
from sensor_msgs.msg import CompressedImage, Image

from kltrace_ros.io.image_msgs import ImageError, compressed_to_rgb, image_to_rgb, rgb_to_image
from rosutil import encode_image, jpeg_declaring

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
MONO16 = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1"]
BRIDGE = CvBridge()


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


def padded(msg, extra=3):
    """The same image with ``extra`` bytes of padding after every row (step > width * bytes per pixel)."""
    out = Image(height=msg.height, width=msg.width, encoding=msg.encoding, step=msg.step + extra)
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
    out.data = np.hstack([rows, np.full((msg.height, extra), 77, np.uint8)]).tobytes()
    return out


@pytest.mark.parametrize("enc", ENCODINGS)
def test_every_encoding_with_and_without_row_padding(enc):
    msg = encode_image(Image(), source(enc), enc)
    assert np.array_equal(image_to_rgb(msg), expected(enc))
    assert np.array_equal(image_to_rgb(padded(msg)), expected(enc))


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_8bit_encodings_equal_cv_bridge(enc):
    msg = encode_image(Image(), source(enc), enc)
    assert np.array_equal(image_to_rgb(msg), BRIDGE.imgmsg_to_cv2(msg, "rgb8"))


def test_mono16_equals_cv_bridge_passthrough_scaled_by_the_top_byte():
    msg = encode_image(Image(), MONO16, "mono16")
    ref = BRIDGE.imgmsg_to_cv2(msg, "passthrough")
    assert ref.dtype == np.uint16
    ref8 = ((ref.astype(np.uint32) + 128) // 257).astype(np.uint8)
    assert np.array_equal(image_to_rgb(msg), np.repeat(ref8[..., None], 3, 2))


def test_what_cv_bridge_gets_wrong_and_we_handle():
    # padded rows: cv_bridge ignores step and returns a garbled image without a word
    msg = padded(encode_image(Image(), RGB, "rgb8"))
    assert not np.array_equal(BRIDGE.imgmsg_to_cv2(msg, "rgb8"), RGB)
    assert np.array_equal(image_to_rgb(msg), RGB)
    # 16-bit to rgb8: no conversion in cv_bridge
    for enc in ("mono16", "16UC1"):
        with pytest.raises(KeyError):
            BRIDGE.imgmsg_to_cv2(encode_image(Image(), MONO16, enc), "rgb8")
    # the big-endian flag on an 8-bit image: cv_bridge calls an API numpy 2 removed
    be = encode_image(Image(), RGB, "rgb8")
    be.is_bigendian = 1
    with pytest.raises(AttributeError):
        BRIDGE.imgmsg_to_cv2(be, "rgb8")
    assert np.array_equal(image_to_rgb(be), RGB)
    # short data: a cryptic error from cv_bridge, a named one from us
    short = Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(40))
    with pytest.raises(TypeError, match="buffer is too small"):
        BRIDGE.imgmsg_to_cv2(short, "rgb8")
    with pytest.raises(ImageError, match="truncated"):
        image_to_rgb(short)
    # undecodable compressed data: cv_bridge returns None
    bad = CompressedImage(format="jpeg", data=b"not a jpeg")
    assert BRIDGE.compressed_imgmsg_to_cv2(bad) is None
    with pytest.raises(ImageError, match="cannot decode"):
        compressed_to_rgb(bad)


def test_big_endian_16bit():
    msg = encode_image(Image(), MONO16, "mono16")
    msg.data = MONO16.astype(">u2").tobytes()
    msg.is_bigendian = 1
    assert np.array_equal(image_to_rgb(msg), expected("mono16"))


def test_bad_messages_name_the_problem():
    with pytest.raises(ImageError, match="unsupported image encoding 'yuv422'"):
        image_to_rgb(Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)))
    with pytest.raises(ImageError, match="empty image"):
        image_to_rgb(Image(height=0, width=0, encoding="rgb8", step=0))
    with pytest.raises(ImageError, match="step 5 is smaller"):
        image_to_rgb(Image(height=4, width=4, encoding="rgb8", step=5, data=bytes(20)))
    with pytest.raises(ImageError, match="empty compressed image"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=b""))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_compressed_png_gray_colour_and_alpha(channels):
    img = {1: RGB[..., 0], 3: cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR),
           4: np.dstack([cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR), np.full((5, 7), 200, np.uint8)])}[channels]
    ok, png = cv2.imencode(".png", img)
    out = compressed_to_rgb(CompressedImage(format="png", data=png.tobytes()))
    assert np.array_equal(out, expected("mono8") if channels == 1 else RGB)


def test_rgb_out_through_cv_bridge():
    msg = rgb_to_image(RGB)
    assert msg.encoding == "rgb8" and msg.step == 21 and np.array_equal(image_to_rgb(msg), RGB)


def test_max_image_pixels_is_our_limit_alone():
    """Pillow refuses headers over its own 179 MP before we could read the size: a user who raised
    max_image_pixels above that was refused anyway. Our limit decides, both ways, and Pillow's is left as it was."""
    from PIL import Image as PILImage

    from kltrace_ros.io.image_msgs import compressed_size

    before = PILImage.MAX_IMAGE_PIXELS
    big = jpeg_declaring(16000, 16000)                     # 256 MP, over Pillow's limit
    compressed_size(big, 2**28)                            # allowed by the user: passes the header check
    with pytest.raises(ImageError, match=r"image 16000x16000 \(256.0 Mpx\) exceeds max_image_pixels=16777216"):
        compressed_size(big, 4096 * 4096)
    with pytest.raises(ImageError, match="exceeds max_image_pixels=268435456"):
        compressed_size(jpeg_declaring(30000, 30000), 2**28)
    assert PILImage.MAX_IMAGE_PIXELS == before
