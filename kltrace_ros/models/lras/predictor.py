"""The published LRAS (transformer + LPQ) behind the predictor protocol, with shared-prefix caching.

Sequence (``Layout``): frame-0 patches in a seeded random ``order``, the revealed frame-1 patches, then the
pointer block of every hidden frame-1 patch; the logits at the pointers are the distribution of
each hidden patch's first code. For a batch of tracer variants of one clean source, the
frame-0 patches whose codes differ from the clean source in *any* variant ("touched") are
moved to the end of frame 0 (keeping the permutation's order otherwise); the clean pass uses
the same order (``traced_log_probs``). The untouched prefix is identical for every variant and for the clean pass:
it is prefilled once and each variant's suffix (touched patches + revealed + pointers) runs
with ``extend`` in one batch. Exact: the same logits as full passes in that order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kltrace_ros.tracing.ops import kl_map

from .layout import Layout, split_mask
from .network import LRAS
from .tokenizer import LPQ


@dataclass
class TokenCount:
    """Transformer tokens processed for one (pair, mask, scale) and ``points`` traced points."""
    naive: int       # per point: a full clean pass and a full traced pass
    cached: int      # shared prefix once + suffixes of the clean pass and every variant

    def per_point(self, points: int) -> tuple[float, float]:
        return self.naive / points, self.cached / points


class LRASPredictor:
    name = "LRAS"

    def __init__(self, lras: LRAS, lpq: LPQ, device="cpu", image_size: int = 256, reveal: float = 0.1,
                 seed: int = 0, extend_batch: int = 8, group: int = 16):
        self.lras, self.lpq = lras, lpq
        self.device = torch.device(device)
        self.image_size = self.window = image_size
        grid = image_size // 8
        self.layout = Layout(n_codes=lpq.vocab_size, grid=grid, patch=2)
        self.patch = 8
        self.reveal, self.tracer_sigma = reveal, 2.0
        self.first_crop, self.shrink, self.masks = image_size, 0.75, 2
        self.seed = seed
        self.extend_batch = extend_batch
        self.group = group
        self.occlusion_threshold: dict = {}
        self.tokens = {"naive": 0, "cached": 0}

    @classmethod
    def from_checkpoints(cls, predictor_path, quantizer_path, device="cpu", **kw) -> "LRASPredictor":
        device = torch.device(device)
        lras = LRAS.from_checkpoint(predictor_path, device=device)
        lpq = LPQ.from_checkpoint(quantizer_path, device=device, dtype=torch.float32)  # LPQ stays fp32, as upstream
        return cls(lras, lpq, device, **kw)

    # ------------------------------------------------------------ orders
    def _orders(self, reveal: torch.Tensor):
        g = torch.Generator().manual_seed(self.seed)
        src_perm = torch.randperm(self.layout.n_patches, generator=g)
        revealed, hidden = split_mask(reveal.cpu(), g)
        return src_perm, revealed, hidden

    def _autocast(self):
        """bf16 matmuls when the weights are bf16 (as upstream runs the 7B), a no-op in fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.lras.lm_head.weight.dtype == torch.bfloat16)

    def _hidden_logits(self, tokens, positions, n_hidden):
        with self._autocast():
            return self.lras(tokens, positions, logits_for=slice(tokens.shape[1] - n_hidden, None)).float()

    def _sequence(self, src, tgt, order, revealed, hidden):
        d = self.device
        return self.layout.two_frame_sequence(src, tgt, order.to(d), revealed.to(d), hidden.to(d))

    def _full_passes(self, src, tgt, order, revealed, hidden):
        """One full forward pass per source (the paper's procedure); logits (B, M, V) in pointer order."""
        out = []
        for i in range(src.shape[0]):
            tok, pos, _ = self._sequence(src[i:i + 1], tgt[i:i + 1] if tgt.shape[0] > 1 else tgt, order, revealed,
                                         hidden)
            self.tokens["naive"] += tok.shape[1]
            out.append(self._hidden_logits(tok, pos, len(hidden)))
        return torch.cat(out)

    @torch.no_grad()
    def log_probs(self, sources, targets, reveal):
        src = self.lpq.encode(sources.to(self.device))
        tgt = self.lpq.encode(targets.to(self.device))
        if tgt.shape[0] != 1 and tgt.shape[0] != src.shape[0]:
            raise ValueError("targets must be one shared frame or one per source")
        perm, revealed, hidden = self._orders(reveal)
        return self._full_passes(src, tgt, perm, revealed, hidden)[:, torch.argsort(hidden)].log_softmax(-1)

    @torch.no_grad()
    def traced_log_probs(self, clean, traced, targets, reveal, cached: bool = True, window=None):
        """(clean (1,M,V), traced (B,M,V)) log-probs, both in the touched-last order of this batch.

        ``cached``: prefill the untouched prefix once and ``extend`` the clean suffix and every
        variant's suffix in batches; otherwise one full pass per source in the same order (the
        naive reference, for tests).

        ``window`` ((g, g) bool over patches, or None): the search window. The pointer block then starts
        with the hidden patches inside it (in the permuted order) and, when cached, stops there: the
        pointers outside are never computed (causal attention: the ones computed do not depend on them).
        M is then the number of hidden patches in the window (raster order among them).
        """
        ref = self.lpq.encode(clean.to(self.device))
        var = self.lpq.encode(traced.to(self.device))
        tgt = self.lpq.encode(targets.to(self.device))
        if tgt.shape[0] != 1:
            raise ValueError("traced_log_probs needs one shared target frame")
        perm, revealed, hidden = self._orders(reveal)
        lay = self.layout
        n_out = len(hidden)
        if window is not None:
            inside = window.flatten().cpu()[hidden]
            hidden = torch.cat([hidden[inside], hidden[~inside]])
            n_out = int(inside.sum())
        touched = (lay.patchify(var) != lay.patchify(ref)).any(-1).any(0).cpu()
        order = torch.cat([perm[~touched[perm]], perm[touched[perm]]])
        allsrc = torch.cat([ref, var])
        raster = torch.argsort(hidden[:n_out])
        if not cached:
            lp = self._full_passes(allsrc, tgt, order, revealed, hidden)[:, :n_out][:, raster].log_softmax(-1)
            return lp[:1], lp[1:]
        hidden = hidden[:n_out]
        split = lay.tokens_per_patch * int((~touched).sum())
        tok, pos, _ = self._sequence(ref, tgt, order, revealed, hidden)
        cache = self.lras.prefill(tok[:, :split], pos[:split])
        self.tokens["cached"] += split
        out = []
        for i in range(0, allsrc.shape[0], self.extend_batch):
            t, _, _ = self._sequence(allsrc[i:i + self.extend_batch], tgt, order, revealed, hidden)
            self.tokens["cached"] += t[:, split:].numel()
            with self._autocast():
                logits = self.lras.extend(cache, t[:, split:], pos[split:],
                                          logits_for=slice(t.shape[1] - split - len(hidden), None)).float()
            out.append(logits[:, raster])
        lp = torch.cat(out).log_softmax(-1)
        return lp[:1], lp[1:]

    @torch.no_grad()
    def traced_kl(self, clean, traced, targets, reveal, cached: bool = True, window=None):
        """KL maps (B, M) for tracer variants, in groups of ``group`` points (each group its own
        touched-last order and prefix), so memory stays bounded for a 67k-code vocabulary; ``window``: only
        the hidden patches inside it (see ``traced_log_probs``)."""
        maps = []
        for i in range(0, traced.shape[0], self.group):
            c, t = self.traced_log_probs(clean, traced[i:i + self.group], targets, reveal, cached, window)
            maps.append(kl_map(c, t))
        return torch.cat(maps)

    @torch.no_grad()
    def predict_rgb(self, sources, targets, reveal):
        """Parallel decoding as upstream: four passes, each appending the argmax of every hidden patch's next code."""
        src = self.lpq.encode(sources.to(self.device))
        tgt = self.lpq.encode(targets.to(self.device)).expand(src.shape[0], -1, -1)
        perm, revealed, hidden = self._orders(reveal)
        lay = self.layout
        outs = []
        for i in range(src.shape[0]):
            tok, pos, _ = lay.two_frame_sequence(src[i:i + 1], tgt[i:i + 1], perm, revealed.to(self.device),
                                                 hidden.to(self.device))
            codes = []
            for k in range(lay.tokens_per_patch - 1):
                logits = self._hidden_logits(tok, pos, len(hidden))
                nxt = logits[0, :, : lay.n_codes].argmax(-1)
                codes.append(nxt)
                tok = torch.cat([tok, nxt.view(1, -1)], 1)
                pos = torch.cat([pos, lay.position[1] + lay.tokens_per_patch * hidden.to(self.device) + k + 1])
            pred = lay.patchify(tgt[i:i + 1]).clone()
            pred[0, hidden.to(self.device)] = torch.stack(codes, -1)
            g, p = lay.grid, lay.patch
            grid_codes = pred.view(1, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(1, g * p, g * p)
            outs.append(self.lpq.decode(grid_codes))
        return torch.cat(outs)


def count_tokens(layout: Layout, reveal: float, points: int, touched_per_point: int = 4,
                 group: int = 8, window: int | None = None, revealed_first: bool = False) -> TokenCount:
    """Transformer tokens for ``points`` points on one (pair, mask, scale), naive vs shared-prefix.

    Naive (the paper's procedure): per point a full clean and a full traced pass. Ours: points in
    groups of ``group``; per group the untouched prefix once, then the suffix (touched patches of
    the group + revealed + pointer block) for the clean pass and each point's variant. ``window``: patches
    in the search window (the pointer block stops after their hidden ones; default all). ``revealed_first``:
    the count if the revealed frame-1 patches went into the shared prefix, before the touched frame-0
    patches (not the published order, so not what the predictor runs; for the arithmetic only).
    """
    n = layout.n_patches
    tpp = layout.tokens_per_patch
    n_rev = int(round(reveal * n))
    n_hid = n - n_rev
    pointers = n_hid if window is None else int(round(window * n_hid / n))
    full = tpp * n + tpp * n_rev + n_hid
    naive = 2 * full * points
    cached = tpp * n_rev if revealed_first else 0
    for start in range(0, points, group):
        k = min(group, points - start)
        touched = min(n, k * touched_per_point)
        suffix = tpp * touched + (0 if revealed_first else tpp * n_rev) + pointers
        cached += tpp * (n - touched) + suffix * (k + 1)
    return TokenCount(naive, cached)
