"""`kltrace make-suite`: a large-motion evaluation suite built here from freely licensed photos.

Each pair is a photo from scikit-image's data folder (BSD/CC0/public domain) seen by two virtual cameras:
frame 1 and frame 2 are the photo under two smooth transforms (a translation, a similarity, an affine map or
a homography) whose motion reaches up to a quarter of the frame width at 256 (64 px), at several
resolutions and aspect ratios, plus an independently moving occluder (a disc cut from another photo). The
ground truth is exact: the flow of every frame-1 pixel (the background's transform, or the disc's own
translation where the disc is), and ``occ.png`` marks background points the disc covers in frame 2. The
layout is the flow-gt one ``kltrace eval`` reads; the same seed gives byte-identical files.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kltrace_ros.io.images import SKIMAGE_IMAGES, skimage_photo

from .datasets import write_flo

SIZES = ((320, 240), (256, 256), (384, 216), (240, 320), (512, 384))     # (w, h): 4:3, 1:1, 16:9, portrait
KINDS = ("translation", "similarity", "affine", "homography")
MAX_MOTION_256 = 64.0                                                  # a quarter of the width at 256


def photo_rgb(name: str) -> np.ndarray:
    img = skimage_photo(name)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 or img.shape[2] == 1 else img[..., :3]


def _transform(kind: str, rng: np.random.Generator, size: tuple[int, int], motion: float) -> np.ndarray:
    """3x3 map frame-1 pixels -> frame-2 pixels whose displacement at the centre is about ``motion`` px,
    with the rotation, scale, shear or perspective of ``kind`` on top."""
    w, h = size
    c = np.array([w / 2, h / 2])
    angle = rng.uniform(0, 2 * np.pi)
    t = motion * np.array([np.cos(angle), np.sin(angle)])
    a = np.eye(2)
    if kind in ("similarity", "affine", "homography"):
        rot, scale = np.deg2rad(rng.uniform(-8, 8)), rng.uniform(0.9, 1.12)
        a = scale * np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    if kind in ("affine", "homography"):
        a = a @ np.array([[1, rng.uniform(-0.08, 0.08)], [rng.uniform(-0.08, 0.08), 1]])
    m = np.eye(3)
    m[:2, :2], m[:2, 2] = a, c + t - a @ c
    if kind == "homography":
        m[2, :2] = rng.uniform(-3e-4, 3e-4, 2) * 256 / max(w, h)
        m[2, 2] = 1 - m[2, :2] @ c            # the centre still moves by t
    return m


def apply_homography(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ m.T
    return p[:, :2] / p[:, 2:3]


def _pair(rng: np.random.Generator, index: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    size = SIZES[index % len(SIZES)]
    kind = KINDS[(index // len(SIZES)) % len(KINDS)]
    w, h = size
    photos = [n for n in SKIMAGE_IMAGES if n not in ("page.png", "text.png", "cell.png", "horse.png")]
    bg, fg = rng.choice(len(photos), 2, replace=False)
    motion = rng.uniform(2.0, MAX_MOTION_256) * w / 256            # px of this frame (width-normalised to 256)
    m2 = _transform(kind, rng, size, motion)                       # frame 1 -> frame 2
    # frame 1: the photo fitted to cover the frame with a margin; frame 2: the same through m2
    photo = photo_rgb(photos[bg])
    s = 1.4 * max(w / photo.shape[1], h / photo.shape[0])
    base = np.array([[s, 0, (w - s * photo.shape[1]) / 2], [0, s, (h - s * photo.shape[0]) / 2], [0, 0, 1]])
    f1 = cv2.warpPerspective(photo, base, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    f2 = cv2.warpPerspective(photo, m2 @ base, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    ys, xs = np.mgrid[0:h, 0:w]
    grid = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
    flow = (apply_homography(m2, grid) - grid).reshape(h, w, 2)
    # the occluder: a textured disc moving on its own, drawn over both frames
    r = rng.uniform(0.12, 0.2) * min(w, h)
    c1 = rng.uniform([r, r], [w - r, h - r])
    c2 = c1 + rng.uniform(-1, 1, 2) * motion
    tex = cv2.resize(photo_rgb(photos[fg]), (int(2 * r) + 2, int(2 * r) + 2), interpolation=cv2.INTER_AREA)
    for frame, c in ((f1, c1), (f2, c2)):
        shift = np.float64([[1, 0, c[0] - r], [0, 1, c[1] - r]])
        layer = cv2.warpAffine(tex, shift, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        disc = (xs - c[0]) ** 2 + (ys - c[1]) ** 2 <= r * r
        frame[disc] = layer[disc]
    on_disc = ((xs - c1[0]) ** 2 + (ys - c1[1]) ** 2 <= r * r)
    flow[on_disc] = c2 - c1
    end = grid.reshape(h, w, 2) + flow
    covered = ((end[..., 0] - c2[0]) ** 2 + (end[..., 1] - c2[1]) ** 2 <= r * r) & ~on_disc
    info = {"kind": "synthetic-large", "transform": kind, "size": [w, h], "photo": photos[bg],
            "occluder_photo": photos[fg], "motion_256": round(float(motion * 256 / w), 2),
            "occluded_fraction": round(float(covered.mean()), 4)}
    return info, f1, f2, flow.astype(np.float32), covered


def make_suite(out: Path, pairs: int = 40, seed: int = 0) -> Path:
    """Write ``pairs`` pairs into ``out`` (flow-gt layout); returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    index = []
    for k in tqdm(range(pairs), desc="suite", unit="pair"):
        info, f1, f2, flow, covered = _pair(rng, k)
        pid = f"large_{k:03d}_{info['transform']}_{info['size'][0]}x{info['size'][1]}"
        d = out / pid
        d.mkdir(exist_ok=True)
        cv2.imwrite(str(d / "frame1.png"), cv2.cvtColor(f1, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(d / "frame2.png"), cv2.cvtColor(f2, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(d / "occ.png"), covered.astype(np.uint8) * 255)
        write_flo(d / "flow.flo", flow)
        index.append({"id": pid, **info})
    (out / "pairs.json").write_text(json.dumps(index, indent=1))
    return out
