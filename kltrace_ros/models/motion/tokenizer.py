"""CellCode: the small model's local patch tokenizer.

Each ``cell x cell`` RGB cell (4x4 by default, as the LPQ's receptive field) becomes one of
``n_codes`` codes: the nearest k-means centroid in ImageNet-normalised RGB. It has the LPQ's
API (``encode`` (B,3,H,W) in [0,1] -> (B,H/c,W/c) int64, ``decode`` codes -> RGB in [0,1]).
A code carries the cell's actual colours, so the predictor can start from the codebook's
nearest-code posterior of a source cell (see ``network.py``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..imagenet import denormalise, normalise


def to_cells(x: torch.Tensor, cell: int) -> torch.Tensor:
    """(B,C,H,W) -> (B, H/cell * W/cell, C*cell*cell), cells in raster order."""
    b, c, h, w = x.shape
    if h % cell or w % cell:
        raise ValueError(f"image size {h}x{w} is not a multiple of the cell size {cell}")
    gh, gw = h // cell, w // cell
    return x.reshape(b, c, gh, cell, gw, cell).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * cell * cell)


def from_cells(cells: torch.Tensor, grid: tuple[int, int], cell: int) -> torch.Tensor:
    """Inverse of :func:`to_cells` for a (gh, gw) grid of cells."""
    gh, gw = grid
    b = cells.shape[0]
    c = cells.shape[-1] // (cell * cell)
    return cells.reshape(b, gh, gw, c, cell, cell).permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * cell, gw * cell)


class CellCode(nn.Module):
    def __init__(self, n_codes: int = 512, cell: int = 4):
        super().__init__()
        self.cell = cell
        self.n_codes = n_codes
        self.register_buffer("codebook", torch.zeros(n_codes, 3 * cell * cell))

    @property
    def dim(self) -> int:
        return 3 * self.cell * self.cell

    def cells_of(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised cell vectors (B, N, 3*cell*cell) of images in [0,1]."""
        return to_cells(normalise(images.float()), self.cell)

    def assign(self, cells: torch.Tensor) -> torch.Tensor:
        """The nearest code of every cell vector (|x|^2 is the same for every code, so it is left out), in chunks
        of rows whose distance table stays in the CPU cache (3x faster than one table)."""
        cb = self.codebook
        norms, x = (cb * cb).sum(-1), cells.reshape(-1, cb.shape[1])
        out = torch.empty(len(x), dtype=torch.long, device=x.device)
        for i in range(0, len(x), 1024):
            out[i:i + 1024] = torch.addmm(norms, x[i:i + 1024], cb.T, alpha=-2).min(-1).indices
        return out.view(cells.shape[:-1])

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return self.assign(self.cells_of(images)).view(b, h // self.cell, w // self.cell)

    def decode_normalised(self, codes: torch.Tensor) -> torch.Tensor:
        b, gh, gw = codes.shape
        return from_cells(self.codebook[codes.reshape(b, -1)], (gh, gw), self.cell)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return denormalise(self.decode_normalised(codes)).clamp(0, 1)

    @torch.no_grad()
    def fit(self, cells: torch.Tensor, iters: int = 25, seed: int = 0) -> float:
        """k-means (k-means++ seeding) on normalised cell vectors; returns the mean squared error."""
        g = torch.Generator().manual_seed(seed)
        x = cells.float()
        first = torch.randint(len(x), (1,), generator=g)
        centres = [x[first]]
        d2 = ((x - centres[0]) ** 2).sum(-1)
        for _ in range(1, self.n_codes):
            idx = torch.multinomial(d2 / d2.sum(), 1, generator=g)
            centres.append(x[idx])
            d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(-1))
        cb = torch.cat(centres)
        for _ in range(iters):
            self.codebook.copy_(cb)
            a = self.assign(x)
            sums = torch.zeros_like(cb).index_add_(0, a, x)
            counts = torch.bincount(a, minlength=self.n_codes).float()
            empty = counts == 0
            cb = torch.where(empty[:, None], x[torch.randint(len(x), (self.n_codes,), generator=g)],
                             sums / counts.clamp(min=1)[:, None])
        self.codebook.copy_(cb)
        return float(((x - cb[self.assign(x)]) ** 2).sum(-1).mean())
