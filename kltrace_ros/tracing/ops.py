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


def kl_map(logp_clean: torch.Tensor, logp_traced: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || p_traced) per patch: (B,M,V) log-probs -> (B,M), accumulated in fp32 over the vocabulary."""
    lc = logp_clean.float().log_softmax(-1)
    lt = logp_traced.float().log_softmax(-1)
    return (lc.exp() * (lc - lt)).sum(-1).clamp(min=0)


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
