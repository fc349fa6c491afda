"""Pictures people look at: track overlays and KL heatmaps (RGB uint8 images, ROS-free)."""
from __future__ import annotations

import cv2
import numpy as np


def _colour(track_id: int) -> tuple:
    hue = (track_id * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2RGB)[0, 0]
    return tuple(int(c) for c in bgr)


class Trails:
    """The last ``length`` positions of each live track, for drawing; ids that are gone are dropped."""

    def __init__(self, length: int = 12):
        self.length = length
        self.points: dict = {}

    def update(self, tracks) -> None:
        live = {t.id for t in tracks}
        for dead in set(self.points) - live:
            del self.points[dead]
        for t in tracks:
            trail = self.points.setdefault(t.id, [])
            trail.append((int(round(t.x)), int(round(t.y))))
            del trail[:-self.length]


def draw_tracks(image: np.ndarray, tracks, trails: Trails | None = None, scale_vectors: float = 3.0) -> np.ndarray:
    """The image with each track's position, motion vector (x ``scale_vectors``) and recent trail
    (``trails`` is updated with ``tracks`` first)."""
    out = np.ascontiguousarray(image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB))
    if trails is not None:
        trails.update(tracks)
    for t in tracks:
        c = _colour(t.id)
        p = (int(round(t.x)), int(round(t.y)))
        if trails is not None:
            trail = trails.points[t.id]
            for a, b in zip(trail[:-1], trail[1:]):
                cv2.line(out, a, b, c, 1, cv2.LINE_AA)
        if t.visible:
            tip = (int(round(t.x + scale_vectors * t.vx)), int(round(t.y + scale_vectors * t.vy)))
            cv2.arrowedLine(out, p, tip, c, 1, cv2.LINE_AA, tipLength=0.3)
            cv2.circle(out, p, 3, c, -1, cv2.LINE_AA)
        else:
            cv2.circle(out, p, 3, c, 1, cv2.LINE_AA)
    return out


def heatmap_image(image: np.ndarray, maps, alpha: float = 0.55) -> np.ndarray:
    """The image with KL maps ((map (g,g), box [x0,y0,x1,y1] in image px) pairs) colour-mapped on top."""
    h, w = image.shape[:2]
    acc = np.zeros((h, w), np.float32)
    for mp, box in maps:
        if mp is None:
            continue
        m = mp / (mp.max() + 1e-9)
        x0, y0, x1, y1 = box
        # map the g x g patch grid onto its window in image pixels
        src = np.float32([[0, 0], [m.shape[1], 0], [0, m.shape[0]]])
        dst = np.float32([[x0, y0], [x1, y0], [x0, y1]])
        warped = cv2.warpAffine(m.astype(np.float32), cv2.getAffineTransform(src, dst), (w, h),
                                flags=cv2.INTER_LINEAR, borderValue=0)
        acc = np.maximum(acc, warped)
    colour = cv2.cvtColor(cv2.applyColorMap((acc * 255).astype(np.uint8), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    base = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    weight = (alpha * acc)[..., None]
    return (base * (1 - weight) + colour * weight).astype(np.uint8)
