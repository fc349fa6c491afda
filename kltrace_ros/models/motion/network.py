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
    "first_crop": 192,     # first-scale crop (px at image_size), shrunk per scale: 192, 77, 31 px (chosen on the
    "shrink": 0.4,         # dev set and the large-motion suite together, see MODEL_CARD): the first scale's cells
    "scales": 3,           # are 12 px, so its +-4-cell match reaches 48 px and its window 96 px
    "masks": 3,            # reveal masks averaged per scale when tracing (3 x 3 scales: the work of 4 x 2)
    "reach": 64.0,         # the first scale searches no farther than this (px at image_size) from its start
}
TRACING_KEYS = ("image_size", "tracer_sigma", "first_crop", "shrink", "scales", "masks", "reach")
CFG_LIMITS = {
    "window": Limit(8, 256), "cell": Limit(1, 16), "n_codes": Limit(2, 65536), "n_embd": Limit(1, 1024),
    "radius": Limit(1, 32), "head_hidden": Limit(1, 4096), "reveal": Limit(0.01, 0.99, False),
    "image_size": Limit(32, 2048), "tracer_sigma": Limit(0.1, 64, False), "first_crop": Limit(4, 8192),
    "shrink": Limit(0.05, 1.0, False), "masks": Limit(1, 64), "scales": Limit(1, 8),
    "reach": Limit(0, 8192, False), "min_sharpness": Limit(0, 1e6, False),
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
              + 9 * d * d + grid ** 4 + 2 * grid ** 2 + (2 * c["radius"] + 1) ** 2 * (2 + 3 * grid ** 2))
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
        # source cell of every (target cell, offset) pair, and whether it lies inside the window
        src_xy = self.cell_xy.view(-1, 1, 2) + self.offsets.view(1, -1, 2)                    # N,P,2
        inside = ((src_xy >= 0) & (src_xy < self.grid)).all(-1)
        src_xy = src_xy.clamp(0, self.grid - 1).long()
        self.register_buffer("neighbours", (src_xy[..., 1] * self.grid + src_xy[..., 0]).unsqueeze(0),
                             persistent=False)                                                 # 1,N,P
        self.register_buffer("neighbour_ok", inside, persistent=False)                         # N,P
        self.register_buffer("cell_d2", torch.cdist(self.cell_xy, self.cell_xy).pow(2), persistent=False)
        py, px = torch.meshgrid(torch.arange(c["cell"] + 0.0), torch.arange(c["cell"] + 0.0), indexing="ij")
        self.register_buffer("cell_pixels", torch.stack([px.flatten(), py.flatten()], -1), persistent=False)
        dy, dx = torch.meshgrid(torch.arange(-1, 2), torch.arange(-1, 2), indexing="ij")
        self.register_buffer("near3", torch.stack([dx.flatten(), dy.flatten()], -1), persistent=False)  # 9,2

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

    def attention(self, src: torch.Tensor, tgt: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B,N,P): for every target cell, the softmax over the P = (2r+1)^2 offsets (order as ``offsets``) of
        the negative mean squared distance between its feature and the source feature there, times the learned
        temperature ("where did I come from"). A cell's row depends only on its own target code and the source,
        so the rows of revealed cells do not depend on which other cells are revealed. ``tgt`` may be one
        batch shared by several source batches (B = a multiple of its batch). ``rows`` (R,): compute only
        these target cells' rows (the others are 0)."""
        b = src.shape[0]
        f_s = self.features(src, context=True).flatten(2)                      # B,D,N
        f_t = self.features(tgt, context=False).flatten(2)                     # b,D,N
        nbr, ok = self.neighbours[0], self.neighbour_ok                        # N,P
        if rows is not None:
            f_t, nbr, ok = f_t[:, :, rows], nbr[rows], ok[rows]
        f_t = f_t.repeat(b // f_t.shape[0], 1, 1)
        # all pairs in one product (as RAFT's correlation volume), then each cell's (2r+1)^2 neighbours
        near = torch.bmm(f_t.transpose(1, 2), f_s).gather(2, nbr.expand(b, -1, -1))       # B,R,P
        dist = f_t.pow(2).sum(1).unsqueeze(2) + f_s.pow(2).sum(1)[:, nbr] - 2 * near
        attn = (dist * (-self.log_temp.exp() / f_s.shape[1])).masked_fill(~ok, float("-inf")).softmax(-1)
        if rows is None:
            return attn
        out = attn.new_zeros(b, self.grid ** 2, attn.shape[2])
        out[:, rows] = attn
        return out

    def vote_offsets(self, attn: torch.Tensor, rev: torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
        """Offsets (B,K,M,2) in cells (x,y), target cell -> its source location, for K reveal masks ``rev``
        (B|1,K,N) bool at once, of the cells ``cells`` (K,M) (indices per mask; default: all, M = N; only with
        masks shared by the batch).

        Every cell collects the offset distributions of the revealed cells around it, weighted by a Gaussian
        of the cell distance (a vote: robust where single-cell matches are ambiguous), and takes the sharpened
        centroid of the 3x3 offsets around the strongest vote. (The vote is normalised by the total weight
        of the revealed cells around it; a positive factor per cell changes neither the strongest vote nor
        the softmax over its neighbours, so it enters only beside the 1e-8 floor.)"""
        k = 2 * self.cfg["radius"] + 1
        kern = torch.exp(-self.cell_d2 / (2 * self.log_sigma.exp() ** 2))     # N(to),N(from)
        norm = kern @ rev.unsqueeze(-1).to(attn.dtype) + 1e-6                  # B|1,K,N,1
        if rev.shape[0] == 1:   # masks shared by the batch: one product per mask over its revealed rows only
            b, n, p = attn.shape
            counts = rev[0].sum(1)
            rows = torch.zeros(len(counts), int(counts.max()), dtype=torch.long, device=attn.device)
            used = torch.arange(rows.shape[1], device=attn.device) < counts.unsqueeze(1)      # K,R
            rows[used] = rev[0].nonzero()[:, 1]
            if cells is None:
                cells = torch.arange(n, device=attn.device).expand(len(counts), -1)
            norm = norm.gather(2, cells.unsqueeze(0).unsqueeze(-1))                       # 1,K,M,1
            weights = kern[cells.unsqueeze(-1), rows.unsqueeze(1)] * used.unsqueeze(1)   # K,M,R
            votes = torch.bmm(weights, attn.transpose(0, 1)[rows].flatten(2))  # K,M,B*P
            votes = votes.view(len(counts), -1, b, p).permute(2, 0, 1, 3)     # B,K,M,P (a view)
        else:
            votes = kern @ (attn.unsqueeze(1) * rev.unsqueeze(-1))            # B,K,N,P
        peak = votes.max(-1).indices                                           # B,K,N
        r = self.cfg["radius"]
        ny = ((peak // k).unsqueeze(-1) + self.near3[:, 1]).clamp(0, k - 1)    # B,K,N,9: the 3x3 around the peak
        nx = ((peak % k).unsqueeze(-1) + self.near3[:, 0]).clamp(0, k - 1)
        # softmax(beta * log v) over the 3x3, written as v^beta / sum v^beta
        w = (votes.gather(-1, ny * k + nx) + 1e-8 * norm).pow(self.log_beta.exp())
        w = w / w.sum(-1, keepdim=True)
        return torch.stack([(w * (nx - r)).sum(-1), (w * (ny - r)).sum(-1)], -1)   # B,K,M,2

    def warp_source(self, src_img: torch.Tensor, src_feat: torch.Tensor, offsets: torch.Tensor,
                    cells: torch.Tensor | None = None):
        """Sample the decoded source (B,3,W,W) and the source embeddings (B,D,G,G) at the displaced cells of
        ``offsets`` (B,K,M,2) (cells ``cells`` (K,M) per mask, default all): content (B,K,M,3*cell^2)
        (channel-major, as ``to_cells``) and features (B,K,M,D).

        A cell's content is its cell x cell pixels moved by its offset, read bilinearly (so sub-cell offsets
        matter); its feature is read at its moved centre."""
        b, masks, n, _ = offsets.shape
        g, cell = self.grid, self.cfg["cell"]
        w = g * cell
        moved = (self.cell_xy if cells is None else self.cell_xy[cells]) + offsets   # B,K,M,2 cells (x, y)
        # one row of cell^2 sample points per (mask, cell): grid_sample's output is then already in cell order
        pix = (moved.unsqueeze(3) * cell + self.cell_pixels + 0.5) / w * 2 - 1   # B,K,N,cell^2,2
        warped = F.grid_sample(src_img, pix.view(b, masks * n, cell * cell, 2), mode="bilinear",
                               padding_mode="border", align_corners=False)    # B,3,K*N,cell^2
        content = warped.permute(0, 2, 1, 3).reshape(b, masks, n, -1)
        feat = F.grid_sample(src_feat, (moved + 0.5) / g * 2 - 1, mode="bilinear", padding_mode="border",
                             align_corners=False)                             # B,D,K,N
        return content, feat.permute(0, 2, 3, 1)

    def warped_inputs(self, src: torch.Tensor, tgt: torch.Tensor, rev: torch.Tensor,
                      cells: torch.Tensor | None = None):
        """What the code head reads for the target cells ``cells`` (K,M) (default: all) under each of K reveal
        masks ``rev`` (B|1,K,N) bool: content (B,K,M,3*cell^2), features (B,K,M,D) and offsets (B,K,M,2).
        Only the target codes of revealed cells are read (and only their match is computed); ``tgt`` may be
        shared by several source batches (see ``attention``)."""
        rows = rev.any(1).any(0).nonzero()[:, 0] if rev.shape[0] == 1 else None
        offsets = self.vote_offsets(self.attention(src, tgt, rows), rev, cells)
        content, feat = self.warp_source(self.tokenizer.decode_normalised(src), self.emb(src).permute(0, 3, 1, 2),
                                         offsets, cells)
        return content, feat, offsets

    def code_logits(self, content: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """Logits (..., n_codes): the codebook's nearest-code posterior of the sampled content plus the
        learned correction from content and features."""
        cb = self.tokenizer.codebook
        scale = 1.0 / (self.log_tau.exp() ** 2 * cb.shape[1])
        prior = (content @ cb.T - 0.5 * (cb * cb).sum(-1)) * scale
        return prior + self.head(torch.cat([content, feat], -1))

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
        rev = reveal.reshape(-1, 1, self.grid ** 2)                       # B|1,1,N
        content, feat, offsets = (t[:, 0] for t in self.warped_inputs(src, revealed_tgt, rev))
        if hidden_only:
            keep = ~reveal.flatten()
            content, feat = content[:, keep], feat[:, keep]
        logp = self.code_logits(content, feat).float().log_softmax(-1)
        return (logp, offsets) if return_offsets else logp
