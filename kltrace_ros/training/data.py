"""Training data for the small model: freely licensed frames from package registries, plus synthetic motion.

Sources (documented with licences in MODEL_CARD.md):
- scikit-image's bundled sample images (in the PyPI wheel);
- Debian ``opencv-doc`` sample images and videos (vtest.avi, Megamind.avi);
- Debian ``python3-imageio``'s short video (realshort.mp4).
``tree.avi`` and ``cockatoo.mp4`` are left out on purpose: they are the demo footage.
The GT pairs in ../shared/data/flow-gt are evaluation-only and never read here.

Pairs are 2-frame windows (``window`` px square, float RGB in [0,1]):
- real consecutive video frames (gap 1-3, random scale, crop and flip);
- synthetic: a crop and a second crop under a sub-pixel similarity transform (translation up
  to ``max_motion`` px, small rotation and zoom), brightness change and noise, and with some
  probability a pasted object that moves differently (occlusion).
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from kltrace_ros.io.images import read_frames, read_rgb, skimage_photos

DEBIAN_PACKAGES = ["opencv-doc", "python3-imageio"]
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"
OPENCV_VIDEOS = ["vtest.avi", "Megamind.avi"]
IMAGEIO_VIDEOS = ["usr/lib/python3/dist-packages/imageio/resources/images/realshort.mp4"]


def fetch_debian_sources(cache: Path) -> Path:
    """Download and unpack the Debian packages (``apt-get download``, no root install)."""
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / "root"
    if (root / OPENCV_DATA / "vtest.avi").is_file():
        return root
    if shutil.which("apt-get") is None:
        raise FileNotFoundError("apt-get is not available: training data comes from Debian's opencv-doc and "
                                "python3-imageio packages; run on Debian/Ubuntu or pass --no-debian")
    for pkg in DEBIAN_PACKAGES:
        if not list(cache.glob(f"{pkg}_*.deb")):
            proc = subprocess.run(["apt-get", "download", pkg], cwd=cache, capture_output=True, text=True)
            if proc.returncode != 0:
                raise FileNotFoundError(f"`apt-get download {pkg}` failed ({proc.stderr.strip()[-300:]}); "
                                        f"run `apt-get update` first")
    for deb in cache.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def read_video(path: Path, max_side: int = 640, max_frames: int = 600) -> np.ndarray:
    """(T,H,W,3) uint8 frames of a training video (at least two)."""
    frames = list(read_frames(path, max_frames, max_side))
    if len(frames) < 2:
        raise FileNotFoundError(f"could not read frames from {path}")
    return np.stack(frames)


@dataclass
class Sources:
    images: list            # list of (H,W,3) uint8
    videos: list            # list of (T,H,W,3) uint8

    def split(self, every: int = 5) -> tuple["Sources", "Sources"]:
        """(train, held-out): every ``every``-th image and the last video are held out."""
        tr = [im for i, im in enumerate(self.images) if i % every != every - 1]
        va = [im for i, im in enumerate(self.images) if i % every == every - 1]
        if len(self.videos) > 1:
            return Sources(tr, self.videos[:-1]), Sources(va, self.videos[-1:])
        return Sources(tr, self.videos), Sources(va, [])


def load_sources(cache: Path | None = None, debian: bool = True) -> Sources:
    images = skimage_photos()
    videos = []
    if debian:
        root = fetch_debian_sources(cache or Path.home() / ".cache" / "kltrace" / "debs")
        data = root / OPENCV_DATA
        for p in sorted(data.glob("*.jpg")) + sorted(data.glob("*.png")):
            try:
                img = read_rgb(p)
            except FileNotFoundError:  # a sample file OpenCV cannot read: not a training image
                continue
            if min(img.shape[:2]) >= 96:
                images.append(img)
        for name in OPENCV_VIDEOS:
            videos.append(read_video(data / name))
        for rel in IMAGEIO_VIDEOS:
            videos.append(read_video(root / rel))
    return Sources(images, videos)


class PairSampler:
    """Random 2-frame windows with known (synthetic) or unknown (video) motion."""

    def __init__(self, sources: Sources, window: int = 64, max_motion: float = 12.0,
                 p_video: float = 0.35, p_object: float = 0.3, seed: int = 0, max_zoom: float = 1.0):
        if not sources.images:
            raise ValueError("no training images")
        if not 0.15 < max_zoom <= 8:
            raise ValueError(f"max_zoom must be in (0.15, 8], got {max_zoom}")
        self.s = sources
        self.window = window
        self.max_motion = max_motion
        self.max_zoom = max_zoom
        self.p_video = p_video if sources.videos else 0.0
        self.p_object = p_object
        self.rng = np.random.default_rng(seed)

    def _zoom(self, h: int, w: int, smallest: float) -> float:
        """Window px per image px: log-uniform from the smallest that fits (at least ``smallest``) up to
        ``max_zoom`` (above 1 the crop is enlarged, as the engine's finest scales enlarge theirs)."""
        lo = max(smallest, self.window * 1.2 / min(h, w))
        if lo >= self.max_zoom:
            return min(1.0, self.max_zoom) if min(h, w) > self.window else 1.0
        return float(np.exp(self.rng.uniform(np.log(lo), np.log(self.max_zoom))))

    def _crop_matrix(self, h: int, w: int, scale: float) -> np.ndarray:
        n = self.window
        span = n / scale
        cx = self.rng.uniform(min(span / 2, w / 2), max(w - span / 2, w / 2))
        cy = self.rng.uniform(min(span / 2, h / 2), max(h - span / 2, h / 2))
        return np.array([[1 / scale, 0, cx - n / 2 / scale], [0, 1 / scale, cy - n / 2 / scale]])

    def _warp(self, img: np.ndarray, m: np.ndarray) -> np.ndarray:
        n = self.window
        return cv2.warpAffine(img, m, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REFLECT)

    def _motion(self) -> tuple[np.ndarray, np.ndarray]:
        """A similarity motion in window px: returns (3x3 map target px -> source px, centre motion)."""
        n = self.window
        mag = self.max_motion * np.sqrt(self.rng.uniform()) if self.rng.uniform() < 0.9 else self.rng.uniform(0, 1)
        ang = self.rng.uniform(0, 2 * np.pi)
        d = np.array([mag * np.cos(ang), mag * np.sin(ang)])
        rot = self.rng.normal(0, 0.04)
        zoom = np.exp(self.rng.normal(0, 0.04))
        c, s = np.cos(rot) / zoom, np.sin(rot) / zoom
        a = np.array([[c, -s], [s, c]])
        centre = np.array([n / 2, n / 2])
        # target pixel u shows the source point a @ (u - centre - d) + centre
        t = np.eye(3)
        t[:2, :2] = a
        t[:2, 2] = centre - a @ (centre + d)
        return t, d

    def _synthetic(self):
        img = self.s.images[self.rng.integers(len(self.s.images))]
        h, w = img.shape[:2]
        if self.max_zoom > 1:
            scale = self._zoom(h, w, 0.15)
        else:   # the distribution the shipped model was trained on
            scale = self.rng.uniform(max(0.15, self.window * 1.2 / min(h, w)), 1.0) if min(h, w) > self.window else 1.0
        m1 = self._crop_matrix(h, w, min(scale, self.max_zoom))
        t, d = self._motion()
        m1h = np.vstack([m1, [0, 0, 1]])
        src = self._warp(img, m1)
        tgt = self._warp(img, (m1h @ t)[:2])
        if self.rng.uniform() < self.p_object:
            src, tgt = self._paste_object(src, tgt)
        return src, tgt, d

    def _paste_object(self, src, tgt):
        n = self.window
        other = self.s.images[self.rng.integers(len(self.s.images))]
        r = self.rng.uniform(6, 16)
        patch = cv2.resize(other, (n, n), interpolation=cv2.INTER_AREA)
        p0 = self.rng.uniform(r, n - r, 2)
        p1 = p0 + self.rng.uniform(-self.max_motion, self.max_motion, 2)
        yy, xx = np.mgrid[0:n, 0:n]
        for frame, p in ((src, p0), (tgt, p1)):
            mask = ((xx - p[0]) ** 2 + (yy - p[1]) ** 2) < r * r
            shift = np.float32([[1, 0, p[0] - p0[0]], [0, 1, p[1] - p0[1]]])
            moved = cv2.warpAffine(patch, shift, (n, n), borderMode=cv2.BORDER_REFLECT)
            frame[mask] = moved[mask]
        return src, tgt

    def _video(self):
        v = self.s.videos[self.rng.integers(len(self.s.videos))]
        gap = int(self.rng.integers(1, 4))
        t0 = int(self.rng.integers(0, len(v) - gap))
        a, b = v[t0], v[t0 + gap]
        if self.rng.uniform() < 0.5:
            a, b = b, a
        h, w = a.shape[:2]
        if self.max_zoom > 1:
            scale = self._zoom(h, w, 0.25)
        else:
            scale = self.rng.uniform(max(0.25, self.window * 1.2 / min(h, w)), 1.0)
        m = self._crop_matrix(h, w, scale)
        return self._warp(a, m), self._warp(b, m), np.array([np.nan, np.nan])

    def sample(self, batch: int):
        """(src, tgt) float tensors (B,3,W,W) in [0,1] and the centre motion (B,2) (NaN for video)."""
        srcs, tgts, ds = [], [], []
        for _ in range(batch):
            src, tgt, d = self._video() if self.rng.uniform() < self.p_video else self._synthetic()
            if self.rng.uniform() < 0.5:  # horizontal flip of both frames
                src, tgt, d = src[:, ::-1], tgt[:, ::-1], d * np.array([-1, 1])
            src = src.astype(np.float32) / 255
            tgt = tgt.astype(np.float32) / 255
            gain, bias = self.rng.uniform(0.9, 1.1), self.rng.uniform(-0.04, 0.04)
            tgt = np.clip(tgt * gain + bias + self.rng.normal(0, 0.01, tgt.shape), 0, 1)
            srcs.append(np.ascontiguousarray(src))
            tgts.append(np.ascontiguousarray(tgt))
            ds.append(d)
        to_t = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float()  # noqa: E731
        return to_t(srcs), to_t(tgts), torch.tensor(np.stack(ds), dtype=torch.float32)
