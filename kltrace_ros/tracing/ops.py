"""The leaf of KL-tracing: tracer, KL map, peak and reveal masks (torch only, no model, no engine).

Everything here works on plain tensors so that the engine, the predictors and training share one
definition of each step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def add_tracer(windows: torch.Tensor, centres: torch.Tensor, sigma: float, amplitude: float = 1.0) -> torch.Tensor:
    """Add a white Gaussian (``amplitude`` 1.0 = 255 of 0..255 on each channel) at sub-pixel
    ``centres`` (B,2) (x, y in continuous px: pixel i spans [i, i+1)), clipped to [0, 1].

    windows: (B,3,h,w) in [0,1] -> (B,3,h,w)."""
    b, _, h, w = windows.shape
    ys = torch.arange(h, dtype=windows.dtype, device=windows.device) + 0.5
    xs = torch.arange(w, dtype=windows.dtype, device=windows.device) + 0.5
    c = centres.to(windows)
    g = torch.exp(-((xs.view(1, 1, w) - c[:, 0].view(b, 1, 1)) ** 2 + (ys.view(1, h, 1) - c[:, 1].view(b, 1, 1)) ** 2)
                  / (2 * sigma ** 2))
    return (windows + amplitude * g.unsqueeze(1)).clamp(0, 1)


def kl_map(clean: torch.Tensor, traced: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || p_traced) per patch, in fp32: (1 or B, M, V) and (B, M, V) logits or log-probs -> (B, M).

    Computed as sum p_c (c - t) + log sum exp(log p_c - (c - t)) (an offset per row cancels, so logits need no
    normalising): one softmax of the clean rows, shared by every traced row, and a few passes per traced row."""
    c = clean.float()
    lpc = c.log_softmax(-1)
    d = c - traced.float()
    return (torch.linalg.vecdot(lpc.exp(), d) + torch.logsumexp(lpc - d, -1)).clamp(min=0)


def refine_peak(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Peak of maps d (B,g,g): (x, y) (B,2) in patch units (continuous, patch centre = i + 0.5) and peak value (B,).

    Argmax, then the centroid of the 3x3 neighbourhood weighted by D minus its minimum.
    """
    b, g, _ = d.shape
    flat = d.flatten(1)
    val, idx = flat.max(1)
    iy, ix = idx // g, idx % g
    pad = F.pad(d.unsqueeze(1), (1, 1, 1, 1), value=float("nan"))[:, 0]
    ar = torch.arange(b, device=d.device)
    nb = torch.stack([pad[ar, iy + 1 + dy, ix + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 1)
    valid = ~torch.isnan(nb)
    lo = torch.where(valid, nb, torch.full_like(nb, float("inf"))).amin(1, keepdim=True)
    wts = torch.where(valid, nb - lo, torch.zeros_like(nb))
    off = torch.tensor([[dx, dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dtype=d.dtype, device=d.device)
    norm = wts.sum(1, keepdim=True)
    delta = torch.where(norm > 0, (wts.unsqueeze(-1) * off).sum(1) / norm.clamp(min=1e-12), torch.zeros(b, 2).to(d))
    pos = torch.stack([ix, iy], -1).to(d) + 0.5 + delta
    return pos, val


def distinct_rows(x: torch.Tensor):
    """Distinct rows of (B, ...) and each row's index among them: an expanded view is one row; equal windows
    (the same anchor image at a whole-frame scale) are found by content. Rows all distinct (the usual case of
    windows cut around different points) come back as they are, in their order."""
    n = x.shape[0]
    if n == 1 or x.stride(0) == 0:
        return x[:1], torch.zeros(n, dtype=torch.long)
    flat = x.flatten(1)
    weights = torch.linspace(1, 2, flat.shape[1], dtype=torch.float64, device=flat.device)
    if len(torch.unique(flat.to(torch.float64) @ weights)) == n:   # rows with different sums differ (exact)
        return x, torch.arange(n)
    u, inverse = torch.unique(flat, dim=0, return_inverse=True)
    return u.view(-1, *x.shape[1:]), inverse.cpu()


def reveal_mask(gh: int, gw: int, ratio: float, generator: torch.Generator | None = None,
                keep_hidden: torch.Tensor | None = None) -> torch.Tensor:
    """A (gh, gw) bool mask with ``round(ratio * gh * gw)`` revealed patches (True) chosen at random.

    ``keep_hidden`` (gh, gw) bool marks patches that must stay hidden (for example the
    neighbourhood of the current estimate, where the tracer has to be able to show up).
    """
    n = gh * gw
    allowed = torch.ones(n, dtype=torch.bool) if keep_hidden is None else ~keep_hidden.flatten().cpu()
    k = min(int(round(ratio * n)), int(allowed.sum()))
    scores = torch.rand(n, generator=generator)
    scores[~allowed] = -1.0
    mask = torch.zeros(n, dtype=torch.bool)
    mask[scores.topk(k).indices] = True
    return mask.view(gh, gw)


def centre_block(g: int, radius: int) -> torch.Tensor:
    """(g, g) bool: the ``2 * radius + 2`` square block of patches around the window centre.

    The centre of an even grid is a patch corner, so radius 1 is the 4x4 block whose middle 2x2
    patches touch the centre (one patch of margin on every side of them)."""
    block = torch.zeros(g, g, dtype=torch.bool)
    c0 = g // 2
    block[c0 - radius - 1:c0 + radius + 1, c0 - radius - 1:c0 + radius + 1] = True
    return block


def central_region(g: int, fraction: float) -> torch.Tensor:
    """(g, g) bool: the central ``fraction`` of the grid (the refinement search region)."""
    lo = int(round(g * (1 - fraction) / 2))
    inside = torch.zeros(g, g, dtype=torch.bool)
    inside[lo:g - lo, lo:g - lo] = True
    return inside


def _gray_patches(img: torch.Tensor, centres: torch.Tensor, size: int, index: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Grey patches of ``size`` x ``size`` px, bilinear: (N,size*size) for ``centres`` (N,2), (N,M,size*size) for
    (N,M,2) (continuous px). ``img`` (F,3,S,S): the patches of point i are cut from image ``index[i]`` (None: one
    image for all)."""
    s = img.shape[-1]
    n = len(centres)
    c = centres.reshape(n, -1, 2)                                                   # N,M,2
    m = c.shape[1]
    u = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    gx = (c[..., 0].view(n, m, 1, 1) + u.view(1, 1, 1, size)) / s * 2 - 1
    gy = (c[..., 1].view(n, m, 1, 1) + u.view(1, 1, size, 1)) / s * 2 - 1
    grid = torch.stack([gx.expand(-1, -1, size, size), gy.expand(-1, -1, size, size)], -1)   # N,M,size,size,2
    grey = img.float().mean(1, keepdim=True)
    if index is None:          # one image: every patch a band of rows of one grid
        out = F.grid_sample(grey[:1], grid.reshape(1, -1, size, 2), mode="bilinear", padding_mode="border",
                            align_corners=False)
    else:                      # each point's patches a band of rows of its own image
        out = F.grid_sample(grey[index], grid.reshape(n, -1, size, 2), mode="bilinear", padding_mode="border",
                            align_corners=False)
    return out.reshape(n, m, size * size) if centres.dim() == 3 else out.reshape(n, size * size)


def appearance_match(img_a: torch.Tensor, img_b: torch.Tensor, pa: torch.Tensor, pb: torch.Tensor,
                     radius: int = 4, search: float = 2.0, step: float = 0.5, flat: float = 0.01,
                     index_a: torch.Tensor | None = None, index_b: torch.Tensor | None = None) -> torch.Tensor:
    """How much the neighbourhood of ``pb`` in ``img_b`` still looks like that of ``pa`` in ``img_a``: the best
    normalised cross-correlation (N,) of the (2r+1)^2 grey patch at ``pa`` with patches centred within
    +-``search`` px of ``pb`` in ``step`` px steps (images (F,3,S,S) in [0,1], points (N,2) continuous px; with
    several images, ``index_a``/``index_b`` (N,) name each point's). A patch whose grey levels vary by less than
    ``flat`` (standard deviation) cannot tell: 1."""
    k = 2 * radius + 1
    tpl = _gray_patches(img_a, pa, k, index_a)                                      # N,k*k
    d = torch.arange(-search, search + step / 2, step)
    shifts = torch.stack(torch.meshgrid(d, d, indexing="xy"), -1).view(-1, 2)     # M,2
    n, m = len(pb), len(shifts)
    cand = _gray_patches(img_b, pb.view(n, 1, 2) + shifts.view(1, m, 2), k, index_b)   # N,M,k*k
    t = tpl - tpl.mean(1, keepdim=True)
    c = cand - cand.mean(2, keepdim=True)
    score = (c @ t.unsqueeze(-1)).squeeze(-1) / (t.norm(dim=1, keepdim=True) * c.norm(dim=2) + 1e-9)
    best = score.amax(1)
    return torch.where(tpl.std(1) < flat, torch.ones_like(best), best)
