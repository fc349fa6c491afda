"""A generated RGB-D camera with exact 3D truth: a textured board moving in 3D in front of a textured wall, seen
through a lens with distortion (plumb_bob), with an aligned depth image (16UC1 millimetres, as a RealSense
publishes) that has a hole (no return) on the wall.

Every pixel is ray-cast through the lens: its undistorted ray meets the board (a rectangle at depth ``z`` facing the
camera) or the wall behind it; the colour is that surface's photo there, the depth its z. The board moves with a
constant velocity, so a point on it has a known position and velocity at every frame; the wall is still. Used by
the RGB-D tests and ``kltrace demo --rgbd``; the photos are scikit-image's (freely licensed).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kltrace_ros.tracking.depth import CameraModel

from .suite import skimage_photo

WALL_Z = 3.0                                   # m
BOARD = np.array([0.9, 0.675])                 # m, width and height of the board
HOLE = (0.70, 0.95, 0.05, 0.40)                # the wall's depth hole: x from, to, y from, to (image fractions)


@dataclass
class RGBDCamera:
    K: np.ndarray                 # 3x3
    D: np.ndarray                 # plumb_bob k1, k2, p1, p2, k3
    size: tuple[int, int]         # (W, H)
    rate: float                   # Hz
    board_start: np.ndarray       # (3,) m, the board's centre at frame 0 (camera optical frame)
    board_velocity: np.ndarray    # (3,) m/s

    def board_centre(self, i: int) -> np.ndarray:
        return self.board_start + self.board_velocity * i / self.rate

    def rays(self) -> np.ndarray:
        """(H,W,2) undistorted normalised coordinates (x/z, y/z) of every pixel."""
        w, h = self.size
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        return self.pixel_rays(np.stack([u, v], -1).reshape(-1, 2)).reshape(h, w, 2)

    def _on_board(self, i: int, rays: np.ndarray) -> np.ndarray:
        """(..., 2) board texture coordinates in [0, 1) of rays (..., 2) at frame ``i`` (outside: not on it)."""
        c = self.board_centre(i)
        return (rays * c[2] - c[:2]) / BOARD + 0.5

    def render(self, i: int, rays: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``i``: RGB (H,W,3) uint8, depth (H,W) uint16 mm (0 in the hole), and (H,W) bool: pixel on the board."""
        rays = self.rays() if rays is None else rays
        w, h = self.size
        c = self.board_centre(i)
        # the board: the plane z = c[2]; the wall: z = WALL_Z
        b = self._on_board(i, rays)
        bx, by = b[..., 0], b[..., 1]
        on_board = ((b >= 0) & (b < 1)).all(-1)
        wx = rays[..., 0] * WALL_Z / 4.0 + 0.5                      # a 4 m x 3 m wall
        wy = rays[..., 1] * WALL_Z / 3.0 + 0.5
        rgb = np.where(on_board[..., None], _sample(_photo("astronaut.png"), bx, by),
                       _sample(_photo("coffee.png"), wx, wy))
        z = np.where(on_board, c[2], WALL_Z)
        depth = np.round(z * 1000).astype(np.uint16)
        x0, x1, y0, y1 = HOLE
        depth[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)] = 0
        return rgb, depth, on_board

    def pixel_rays(self, pixels: np.ndarray) -> np.ndarray:
        """(N,2) undistorted normalised coordinates of sub-pixel positions (N,2)."""
        return CameraModel(self.K, self.D, self.size).rays(pixels)[:, :2]

    def truth(self, i: int, pixels: np.ndarray):
        """Position (N,3) m, velocity (N,3) m/s and whether it is on the board (N,) of the surface seen at
        ``pixels`` (N,2) of frame ``i``, from the exact geometry."""
        ray = self.pixel_rays(pixels)
        b = self._on_board(i, ray)
        board = ((b >= 0) & (b < 1)).all(-1)
        z = np.where(board, self.board_centre(i)[2], WALL_Z)
        pos = np.concatenate([ray, np.ones((len(ray), 1))], 1) * z[:, None]
        vel = np.where(board[:, None], self.board_velocity, 0.0)
        return pos, vel, board


_PHOTOS: dict = {}


def _photo(name: str) -> np.ndarray:
    if name not in _PHOTOS:
        _PHOTOS[name] = skimage_photo(name)
    return _PHOTOS[name]


def _sample(img: np.ndarray, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """``img`` read bilinearly at fractions (fx, fy) of its size (clamped at the border)."""
    h, w = img.shape[:2]
    return cv2.remap(img, (fx * w - 0.5).astype(np.float32), (fy * h - 0.5).astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def rgbd_camera(size=(320, 240), rate: float = 10.0) -> RGBDCamera:
    """The default generated RGB-D camera: f = 0.8 x width, distortion like a wide webcam lens, a board 1.2 m away
    that moves right and towards the camera (0.25, 0.05, -0.2 m/s)."""
    w, h = size
    f = 0.8 * w
    K = np.array([[f, 0, w / 2 - 0.5 + 1.5], [0, f * 1.01, h / 2 - 0.5 - 1.0], [0, 0, 1]])
    return RGBDCamera(K, np.array([-0.12, 0.03, 0.001, -0.0015, 0.0]), (w, h), rate,
                      np.array([-0.15, 0.0, 1.2]), np.array([0.25, 0.05, -0.2]))
