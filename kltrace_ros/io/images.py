"""Images and frames from files: one reader for stills, videos and image folders, and the freely
licensed photos that ship inside scikit-image's wheel (training, calibration, demos, tests)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SKIMAGE_IMAGES = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg",
                  "brick.png", "grass.png", "gravel.png", "color.png", "retina.jpg", "camera.png",
                  "coins.png", "moon.png", "page.png", "text.png", "cell.png", "horse.png"]
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_rgb(path: str | Path) -> np.ndarray:
    """(H,W,3) uint8 RGB of an image file; FileNotFoundError names the file and what is wrong with it. The bytes are
    read here and decoded from memory, so OpenCV prints nothing of its own before our error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cannot read image {path}: no such file")
    if path.is_dir():
        raise FileNotFoundError(f"cannot read image {path}: it is a directory")
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as err:
        raise FileNotFoundError(f"cannot read image {path}: {err.strerror or err}") from err
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        what = "empty file" if not data.size else "not an image OpenCV can decode (png, jpeg, bmp, tiff, ...)"
        raise FileNotFoundError(f"cannot read image {path}: {what}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def skimage_photo(name: str) -> np.ndarray:
    """One photo of scikit-image's data folder (BSD/CC0/public domain, see MODEL_CARD.md) as RGB."""
    import skimage  # optional heavy dependency: only these photos need it

    return read_rgb(Path(skimage.__file__).parent / "data" / name)


def skimage_photos() -> list[np.ndarray]:
    """Every photo of :data:`SKIMAGE_IMAGES`."""
    return [skimage_photo(name) for name in SKIMAGE_IMAGES]


def camera_view(canvas: np.ndarray, size: tuple[int, int], offset) -> np.ndarray:
    """The (w, h) view of a camera whose top-left corner is at ``offset`` (x, y; sub-pixel) of ``canvas``
    (bilinear, mirrored borders): simulated camera motion for demos, soaks and benchmarks."""
    m = np.float32([[1, 0, -offset[0]], [0, 1, -offset[1]]])
    return cv2.warpAffine(canvas, m, tuple(size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _fit(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    if max_side and max(frame.shape[:2]) > max_side:
        s = max_side / max(frame.shape[:2])
        frame = cv2.resize(frame, (round(frame.shape[1] * s), round(frame.shape[0] * s)),
                           interpolation=cv2.INTER_AREA)
    return frame


def _video_frames(path: Path):
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path} is not a video OpenCV can read (give a video file or a folder of images)")
    try:
        while True:
            ok, f = cap.read()
            if not ok:
                break
            yield cv2.cvtColor(f, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def video_info(path: str | Path) -> tuple[float, int | None]:
    """(frames per second, number of frames) of a video file as its container states them; (10.0, None)
    when it does not say (image folders, some streams)."""
    cap = cv2.VideoCapture(str(path))
    try:
        fps, n = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    return (fps if 0 < fps < 1000 else 10.0), (n if n > 0 else None)


def read_frames(path: str | Path, max_frames: int | None = None, max_side: int | None = None):
    """RGB frames (H,W,3) uint8 of a video file, or of a folder of images sorted by name, downscaled
    so that the longest side is at most ``max_side``."""
    path = Path(path)
    if path.is_dir():
        frames = (read_rgb(p) for p in sorted(path.iterdir()) if p.suffix.lower() in FRAME_SUFFIXES)
    elif path.is_file():
        frames = _video_frames(path)
    else:
        raise FileNotFoundError(f"video {path} does not exist")
    for i, f in enumerate(frames):
        if max_frames is not None and i >= max_frames:
            break
        yield _fit(f, max_side)
