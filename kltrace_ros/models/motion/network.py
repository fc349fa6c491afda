"""MotionLRAS: the small, CPU-trainable next-frame predictor that ships with the package.

An LRAS-family model: it reads the frame-0 tokens (all cells of the source window), the
revealed frame-1 tokens, and gives a distribution over codes for every hidden frame-1 cell.
What lets a small model follow motion instead of copying the same cell (see
``../shared/reference/small-model-experiments.md``) is an explicit motion structure:

1. every revealed target cell compares its feature with the source cells within ``radius``
   cells (negative mean squared feature distance times a learned temperature) and turns the
   costs into a softmax over the (2r+1)^2 offsets ("where did I come from");
2. every cell sums the offset distributions of the revealed cells around it, weighted by a
   Gaussian of the cell distance (learned width), and takes the sharpened centroid of the 3x3
   offsets around the strongest vote, so hidden cells get an offset too;
3. the prediction of a cell samples the decoded source window at the displaced location
   (bilinear, pixel level, so sub-cell offsets matter) and starts from the codebook's
   nearest-code posterior of that sampled content; a small MLP on the sampled content and
   sampled source embedding adds a learned correction (zero at initialisation).

Trained only on the code cross-entropy of hidden cells of video frame pairs: no flow labels.
A tracer added to the source changes the sampled content only where the source content
went, which is what KL-tracing reads.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError, Limit, check_budget, check_cfg
from .tokenizer import CellCode, to_cells

DEFAULT_CFG = {
    "model_class": "MotionLRAS",
    "window": 64,          # model input window (px); the tracing engine crops and resizes to it
    "cell": 4,             # px per code
    "n_codes": 512,        # CellCode vocabulary
    "n_embd": 32,          # code embedding / matching feature width
    "radius": 4,           # correlation search radius (cells)
    "head_hidden": 128,    # correction MLP width
    "reveal": 0.25,        # fraction of target cells revealed (training and tracing)
    "image_size": 256,     # working resolution of the whole frame (as the published model)
    "tracer_sigma": 2.0,   # tracer sigma in window px
    "first_crop": 64,      # first-scale crop (px at image_size), shrunk per scale (dev-set choice, see MODEL_CARD)
    "shrink": 0.5,         # crop shrink factor per scale
    "masks": 4,            # reveal masks averaged per scale when tracing
}
TRACING_KEYS = ("image_size", "tracer_sigma", "first_crop", "shrink", "masks")
CFG_LIMITS = {
    "window": Limit(8, 256), "cell": Limit(1, 16), "n_codes": Limit(2, 65536), "n_embd": Limit(1, 1024),
    "radius": Limit(1, 32), "head_hidden": Limit(1, 4096), "reveal": Limit(0.01, 0.99, False),
    "image_size": Limit(32, 2048), "tracer_sigma": Limit(0.1, 64, False), "first_crop": Limit(4, 8192),
    "shrink": Limit(0.05, 1.0, False), "masks": Limit(1, 64), "min_sharpness": Limit(0, 1e6, False),
}
MEMORY_BUDGET = 2 * 2**30   # bytes of weights and buffers a small model may need


def check_motion_cfg(cfg: dict, path=None) -> dict:
    """The full cfg (defaults filled in) after checking every value and the memory it implies."""
    c = {**DEFAULT_CFG, **cfg}
    check_cfg(c, CFG_LIMITS, "MotionLRAS model", path)
    if c["window"] % c["cell"]:
        raise CheckpointError(f"{path or 'cfg'}: window {c['window']} is not a multiple of cell {c['cell']}")
    thresholds = c.get("occlusion_threshold", {})
    if not isinstance(thresholds, dict) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in thresholds.values()):
        raise CheckpointError(f"{path or 'cfg'}: occlusion_threshold must map methods to finite numbers, got "
                              f"{thresholds!r}; recalibrate with `kltrace calibrate`")
    grid, d, cd = c["window"] // c["cell"], c["n_embd"], 3 * c["cell"] ** 2
    floats = (c["n_codes"] * (cd + d + c["head_hidden"]) + (cd + d) * c["head_hidden"] + 3 * d * d
              + 9 * d * d + grid ** 4 + 2 * grid ** 2 + (2 * c["radius"] + 1) ** 2 * 2)
    check_budget(4 * floats, MEMORY_BUDGET, "MotionLRAS weights and buffers", path)
    return c


class MotionLRAS(nn.Module):
    def __init__(self, cfg: dict | None = None):
        super().__init__()
        self.cfg = check_motion_cfg(cfg or {})   # nothing is allocated before the sizes are checked
        c = self.cfg
        self.grid = c["window"] // c["cell"]
        d = c["n_embd"]
        self.tokenizer = CellCode(c["n_codes"], c["cell"])
        self.emb = nn.Embedding(c["n_codes"], d)
        self.phi = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.ctx = nn.Conv2d(d, d, 3, padding=1)
        nn.init.zeros_(self.phi[-1].weight)
        nn.init.zeros_(self.phi[-1].bias)
        nn.init.zeros_(self.ctx.weight)
        nn.init.zeros_(self.ctx.bias)
        self.log_temp = nn.Parameter(torch.tensor(math.log(16.0)))    # matching sharpness
        self.log_sigma = nn.Parameter(torch.tensor(math.log(2.0)))   # vote width, cells
        self.log_beta = nn.Parameter(torch.tensor(0.0))              # vote sharpening
        self.log_tau = nn.Parameter(torch.tensor(math.log(0.3)))     # code posterior temperature (per dim)
        cd = self.tokenizer.dim
        self.head = nn.Sequential(nn.Linear(cd + d, c["head_hidden"]), nn.GELU(),
                                  nn.Linear(c["head_hidden"], c["n_codes"]))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        r = c["radius"]
        dy, dx = torch.meshgrid(torch.arange(-r, r + 1.0), torch.arange(-r, r + 1.0), indexing="ij")
        self.register_buffer("offsets", torch.stack([dx.flatten(), dy.flatten()], -1), persistent=False)
        gy, gx = torch.meshgrid(torch.arange(self.grid + 0.0), torch.arange(self.grid + 0.0), indexing="ij")
        self.register_buffer("cell_xy", torch.stack([gx.flatten(), gy.flatten()], -1), persistent=False)
        self.register_buffer("cell_d2", torch.cdist(self.cell_xy, self.cell_xy).pow(2), persistent=False)

    @torch.no_grad()
    def init_embedding_from_codebook(self, seed: int = 0) -> None:
        """Start code embeddings as a fixed random projection of the code colours (whitened),
        so that matching compares appearance from the first step."""
        g = torch.Generator().manual_seed(seed)
        cb = self.tokenizer.codebook
        proj = torch.randn(cb.shape[1], self.emb.weight.shape[1], generator=g) / math.sqrt(cb.shape[1])
        e = cb @ proj
        self.emb.weight.copy_((e - e.mean(0)) / (e.std(0) + 1e-6))

    # ----------------------------------------------------------------- helpers
    def features(self, codes: torch.Tensor, context: bool) -> torch.Tensor:
        """(B,G,G) codes -> (B,D,G,G) matching features."""
        e = self.emb(codes)
        f = (e + self.phi(e)).permute(0, 3, 1, 2).contiguous()
        return f + self.ctx(f) if context else f

    def cell_offsets(self, src: torch.Tensor, tgt: torch.Tensor, reveal: torch.Tensor):
        """Offsets (B,N,2) in cells (x,y), target cell -> its source location, for all cells."""
        b, g = src.shape[0], self.grid
        r = self.cfg["radius"]
        k = 2 * r + 1
        f_s = self.features(src, context=True)
        f_t = self.features(tgt, context=False)                                 # B,D,G,G
        # matching cost of every cell against the source cells within the radius, one offset at a time
        # (order: offset index = (dy + r) * k + (dx + r), as ``self.offsets``)
        f_pad = F.pad(f_s, (r, r, r, r))
        v_pad = F.pad(f_s.new_ones(1, g, g), (r, r, r, r))
        corr = torch.stack([-(f_t - f_pad[:, :, ky:ky + g, kx:kx + g]).pow(2).mean(1)
                            for ky in range(k) for kx in range(k)], 1).flatten(2)
        valid = torch.stack([v_pad[:, ky:ky + g, kx:kx + g] for ky in range(k) for kx in range(k)], 1).flatten(2) > 0
        corr = corr * self.log_temp.exp()                                       # B,P,N
        attn = corr.masked_fill(~valid, float("-inf")).softmax(1)                # B,P,N
        # every cell collects the offset distributions of the revealed cells around it
        # (a vote: robust where single-cell matches are ambiguous) ...
        kern = torch.exp(-self.cell_d2 / (2 * self.log_sigma.exp() ** 2))                 # N(to),N(from)
        rev = reveal.reshape(-1, 1, g * g).to(attn.dtype)                        # 1|B,1,N
        votes = torch.einsum("bpn,mn->bpm", attn * rev, kern)
        votes = votes / (torch.einsum("bpn,mn->bpm", rev, kern) + 1e-6)           # B,P,M
        # ... and takes the sharpened centroid of the 3x3 offsets around the strongest vote.
        peak = votes.argmax(1)                                                  # B,M
        py, px = peak // k, peak % k
        dy, dx = torch.meshgrid(torch.arange(-1, 2), torch.arange(-1, 2), indexing="ij")
        ny = (py.unsqueeze(1) + dy.flatten().view(1, 9, 1).to(py)).clamp(0, k - 1)
        nx = (px.unsqueeze(1) + dx.flatten().view(1, 9, 1).to(px)).clamp(0, k - 1)
        idx = ny * k + nx                                                       # B,9,M
        w = (votes.gather(1, idx) + 1e-8).log().mul(self.log_beta.exp()).softmax(1)
        return (w.unsqueeze(-1) * self.offsets[idx]).sum(1)                     # B,M,2

    def warp_source(self, src_img: torch.Tensor, src_feat: torch.Tensor, offsets: torch.Tensor):
        """Sample the decoded source (B,3,W,W) and source features (B,D,G,G) at the displaced cells."""
        b, g, cell = src_img.shape[0], self.grid, self.cfg["cell"]
        w = g * cell
        px = torch.arange(w, device=src_img.device, dtype=src_img.dtype) + 0.5
        py, pxx = torch.meshgrid(px, px, indexing="ij")
        off_px = offsets.view(b, g, g, 2).repeat_interleave(cell, 1).repeat_interleave(cell, 2) * cell
        sx = pxx.unsqueeze(0) + off_px[..., 0]
        sy = py.unsqueeze(0) + off_px[..., 1]
        grid = torch.stack([sx / w * 2 - 1, sy / w * 2 - 1], -1)
        warped = F.grid_sample(src_img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        centres = (self.cell_xy.unsqueeze(0) + 0.5 + offsets) / g * 2 - 1              # B,N,2
        feat = F.grid_sample(src_feat, centres.unsqueeze(1), mode="bilinear", padding_mode="border",
                             align_corners=False)[:, :, 0].transpose(1, 2)           # B,N,D
        return to_cells(warped, cell), feat

    # ----------------------------------------------------------------- forward
    def forward(self, src: torch.Tensor, tgt: torch.Tensor, reveal: torch.Tensor, return_offsets: bool = False,
                hidden_only: bool = False):
        """Log-probabilities (B, N, n_codes) over codes for every target cell (raster order).

        src: (B,G,G) source codes; tgt: (B,G,G) or (G,G) target codes (only revealed ones are
        read); reveal: (G,G) or (B,G,G) bool. Hidden cells' rows are the prediction; revealed
        rows too (the model's own reconstruction). ``hidden_only`` (shared (G,G) mask) returns
        only the hidden rows (B, M, n_codes) and skips the revealed cells' head.
        """
        b = src.shape[0]
        if tgt.dim() == 2:
            tgt = tgt.unsqueeze(0)
        tgt = tgt.expand(b, -1, -1)
        revealed_tgt = torch.where(reveal, tgt, torch.zeros_like(tgt))  # hidden target codes are never read
        offsets = self.cell_offsets(src, revealed_tgt, reveal)
        src_img = self.tokenizer.decode_normalised(src)
        src_emb = self.emb(src).permute(0, 3, 1, 2)
        content, feat = self.warp_source(src_img, src_emb, offsets)
        if hidden_only:
            keep = ~reveal.flatten()
            content, feat = content[:, keep], feat[:, keep]
        cb = self.tokenizer.codebook
        scale = 1.0 / (self.log_tau.exp() ** 2 * cb.shape[1])
        prior = (content @ cb.T - 0.5 * (cb * cb).sum(-1)) * scale              # nearest-code posterior
        logits = prior + self.head(torch.cat([content, feat], -1))
        logp = logits.float().log_softmax(-1)
        return (logp, offsets) if return_offsets else logp
