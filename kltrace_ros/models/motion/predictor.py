"""The embedded small model (CellCode + MotionLRAS) behind the tracing predictor protocol."""
from __future__ import annotations

import torch

from kltrace_ros.tracing.ops import distinct_rows, kl_map

from .network import MotionLRAS

MIN_SHARPNESS = 15.0   # default for files that carry no calibration of their own
UNCHANGED = 0.1        # head-input changes below this count as unchanged (see kl_maps)
ROWS = 256             # the code head runs on a multiple of this many cells


class MotionPredictor:
    """Log-probabilities over CellCode codes for hidden target cells of a ``window`` px window."""

    def __init__(self, model: MotionLRAS, device="cpu"):
        self.model = model.to(device).eval()
        c = model.cfg
        self.image_size, self.window, self.patch = c["image_size"], c["window"], c["cell"]
        self.reveal, self.tracer_sigma = c["reveal"], c["tracer_sigma"]
        self.first_crop, self.shrink, self.masks = c["first_crop"], c["shrink"], c.get("masks", 4)
        self.scales, self.reach = c.get("scales"), float(c.get("reach", 0.0))
        self.occlusion_threshold = dict(c.get("occlusion_threshold", {}))
        # visibility: the last map's peak must stand this far above its mean (with the forward-backward check:
        # 98% of synthetic points within 4 px pass, 14% of those more than 16 px off; see MODEL_CARD)
        self.min_sharpness = float(c.get("min_sharpness", MIN_SHARPNESS))
        self.device = torch.device(device)
        self.name = c.get("name", "MotionLRAS")
        self._cache: list = []
        self.unchanged = UNCHANGED
        self.chunk = 32 if self.device.type == "cpu" else 256   # points per kl_maps step (see kl_maps)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Codes (B,G,G) of ``images`` (B,3,w,w), memoised for the last eight window stacks: the same tensor (the
        engine's generic path passes it once per reveal mask; ``_version`` changes if it is modified in place)
        or equal windows (the backward check's windows around the queries are the first scale's)."""
        key = (images.data_ptr(), tuple(images.shape), images.stride(), images._version)
        for k, tensor, codes in self._cache:
            unchanged = tensor._version == k[3]
            if unchanged and (tensor is images and k == key or tensor.shape == images.shape
                              and torch.equal(tensor, images)):
                return codes
        codes = self.model.tokenizer.encode(images.to(self.device))
        self._cache = [(key, images, codes)] + self._cache[:7]
        return codes

    def _encode_changed(self, images: torch.Tensor, base: torch.Tensor, base_codes: torch.Tensor) -> torch.Tensor:
        """Codes of ``images`` (B,3,w,w) that differ from ``base`` (B,3,w,w), whose codes are ``base_codes``, only
        in places (a tracer): ``base_codes`` with only the cells whose pixels differ encoded again (exact)."""
        tok, cell = self.model.tokenizer, self.patch
        codes = base_codes.clone()
        b, _, h, w = images.shape
        differs = (images.to(self.device) != base.to(self.device)).any(1)
        differs = differs.view(b, h // cell, cell, w // cell, cell).any(4).any(2)    # B,gh,gw
        if differs.any():
            codes[differs] = tok.assign(tok.cells_of(images.to(self.device))[differs.flatten(1)])
        return codes

    @torch.no_grad()
    def log_probs(self, sources, targets, reveal):
        src = self._encode(sources)
        tgt = self._encode(targets)
        reveal = reveal.to(self.device)
        return self.model(src, tgt, reveal, hidden_only=True)

    window_maps = True   # kl_maps(window=...) computes only the searched cells (the engine's zoom scales)

    @torch.no_grad()
    def kl_maps(self, sources, traced, targets, reveals, unchanged: float | None = None, window=None):
        """KL(p_clean || p_traced) (B, K, N) of every target cell under each of K reveal masks at once
        (``reveals`` (K,g,g) bool shared by the batch; 0 at revealed cells).

        sources, traced, targets: (B,3,w,w) (clean and traced source windows, their target windows). Only what
        the tracer can change is computed twice: the traced source is re-encoded only where its pixels
        differ, and the match of every cell is computed once for all masks. The code head (most of the work)
        runs only on hidden cells whose inputs (sampled content and features) the tracer changed by more than
        ``unchanged`` (default ``self.unchanged``; normalised RGB and feature units): elsewhere the clean and
        traced distributions are equal up to that, their KL is second order in it, and the map is 0.
        ``unchanged=0``: exact. (Dev set: 0.1 leaves every peak and the table unchanged; see MODEL_CARD.)
        ``window`` (g,g) bool: only these cells are searched; the others are left 0 (exact inside: every revealed
        cell still votes).
        Points go through in chunks of ``self.chunk``, whose intermediates stay in the CPU cache."""
        eps = self.unchanged if unchanged is None else unchanged
        c, n = self.chunk, len(traced)
        # the clean pass of a window pair is computed once for every point that shares it (one whole-frame pair
        # for all points, one per anchor image in anchored mode)
        src_u, src_of = distinct_rows(sources)
        tgt_u, tgt_of = distinct_rows(targets)
        s_codes, t_codes = self._encode(src_u), self._encode(tgt_u)
        src_of, tgt_of = src_of.to(self.device), tgt_of.to(self.device)
        # a partial chunk is padded to a multiple of 8 points (repeats of the last), so that a node whose
        # number of tracks changes from pair to pair runs few distinct tensor shapes (each new shape leaves
        # allocator memory behind)
        pad = torch.cat([torch.arange(n), torch.full(((-n) % min(8, c),), n - 1)]) if n % c else None
        if pad is not None:
            traced, src_of, tgt_of = traced[pad], src_of[pad.to(self.device)], tgt_of[pad.to(self.device)]
        maps = torch.cat([self._kl_maps(src_u, s_codes, t_codes, src_of[i:i + c], tgt_of[i:i + c],
                                        traced[i:i + c], reveals, eps, window) for i in range(0, len(traced), c)])
        return maps[:n]

    def _kl_maps(self, sources, s_codes, t_codes, src_of, tgt_of, traced, reveals, eps: float, window=None):
        """The maps of one chunk: ``traced`` (B,3,w,w) of the source windows ``sources[src_of]`` (codes
        ``s_codes``) into the target windows of codes ``t_codes[tgt_of]``."""
        b, k = len(traced), len(reveals)
        m = self.model
        pairs, pair_of = torch.unique(torch.stack([src_of, tgt_of], 1), dim=0, return_inverse=True)
        variants = self._encode_changed(traced, sources[src_of.to(sources.device)], s_codes[src_of])
        rev = reveals.to(self.device).flatten(1)                               # K,N
        # the searched hidden cells of every mask (padded with repeats where masks hide different numbers)
        wanted = ~rev if window is None else ~rev & window.to(self.device).flatten()
        counts = wanted.sum(1)
        maps = torch.zeros(b, k, rev.shape[1], device=self.device)
        if counts.max() == 0:
            return maps
        order = torch.sort(wanted.to(torch.uint8), dim=1, descending=True, stable=True).indices   # wanted first
        # padded to a multiple of 16 cells: the searched hidden cells vary in number from mask to mask, and every
        # new tensor shape leaves allocator memory behind in a long-running node (see ROWS)
        pos = torch.arange(min(-(-int(counts.max()) // 16) * 16, rev.shape[1]), device=self.device)
        cells = order.gather(1, torch.minimum(pos, counts.unsqueeze(1) - 1).clamp(min=0))   # K,M
        content_c, feat_c, _ = m.warped_inputs(s_codes[pairs[:, 0]], t_codes[pairs[:, 1]], rev.unsqueeze(0), cells)
        if len(pairs) < b or not torch.equal(pair_of, torch.arange(b, device=pair_of.device)):   # shared ones
            content_c, feat_c = content_c[pair_of], feat_c[pair_of]
        content, feat, _ = m.warped_inputs(variants, t_codes if len(t_codes) == 1 else t_codes[tgt_of],
                                           rev.unsqueeze(0), cells)
        differ = torch.maximum((content - content_c).abs().amax(-1), (feat - feat_c).abs().amax(-1))
        which = (differ > eps) & (pos < counts.unsqueeze(1))                    # B,K,M
        bi, ki, mi = which.nonzero(as_tuple=True)
        if len(bi):
            # rows padded to a multiple of ROWS (repeating the last one), so that the head sees few distinct
            # shapes: every new shape costs allocator and oneDNN cache memory that a long-running node keeps
            pad = torch.cat([torch.arange(len(bi), device=self.device),
                             torch.full(((-len(bi)) % ROWS,), len(bi) - 1, device=self.device)])
            bi, ki, mi = bi[pad], ki[pad], mi[pad]
            logits = m.code_logits(torch.cat([content_c[bi, ki, mi], content[bi, ki, mi]]),
                                   torch.cat([feat_c[bi, ki, mi], feat[bi, ki, mi]]))
            p_clean, p_traced = logits.view(2, 1, -1, logits.shape[-1]).unbind(0)
            maps[bi, ki, cells[ki, mi]] = kl_map(p_clean, p_traced)[0]
        return maps

    @torch.no_grad()
    def predict_rgb(self, sources, targets, reveal):
        src = self._encode(sources)
        tgt = self._encode(targets).expand(src.shape[0], -1, -1)
        reveal = reveal.to(self.device)
        pred = self.model(src, tgt, reveal).argmax(-1).view_as(src)
        return self.model.tokenizer.decode(torch.where(reveal, tgt, pred))
