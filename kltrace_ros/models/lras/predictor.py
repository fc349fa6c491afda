"""The published LRAS (transformer + LPQ) behind the predictor protocol, with shared-prefix caching.

Sequence (``Layout``): frame-0 patches in a seeded random ``order``, the revealed frame-1 patches, then the
pointer block of every hidden frame-1 patch; the logits at the pointers are the distribution of
each hidden patch's first code. For a group of tracer variants of one clean source, the
frame-0 patches whose codes differ from the clean source in *any* variant ("touched") are
moved to the end of frame 0 (keeping the permutation's order otherwise); the clean passes use
the same order. The untouched prefix is identical for every variant, the clean pass, every reveal mask and every
target: it is prefilled once and each row's suffix (touched patches + revealed + pointers) runs with ``extend``
in batches (``kl_maps``). Exact: the same logits as full passes in that order.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from kltrace_ros.tracing.ops import distinct_rows

from .layout import Layout, split_mask
from .network import LRAS
from .tokenizer import LPQ


class LRASPredictor:
    name = "LRAS"
    window_maps = True   # kl_maps(window=...) computes only the searched patches (the engine's zoom scales)

    def __init__(self, lras: LRAS, lpq: LPQ, device="cpu", image_size: int = 256, reveal: float = 0.1,
                 seed: int = 0, extend_batch: int | None = None, group: int = 16):
        self.lras, self.lpq = lras, lpq
        self.device = torch.device(device)
        self.image_size = self.window = image_size
        grid = image_size // 8
        self.layout = Layout(n_codes=lpq.vocab_size, grid=grid, patch=2)
        self.patch = 8
        self.reveal, self.tracer_sigma = reveal, 2.0
        self.first_crop, self.shrink, self.masks = image_size, 0.75, 2
        self.seed = seed
        self.extend_batch = extend_batch   # rows per model call; None: sized from free device memory
        self.group = group                 # variants of one source sharing a touched-last order and its prefix
        self.occlusion_threshold: dict = {}
        # transformer tokens: "run" what ran; "naive" what the paper's procedure (a full clean and a full traced
        # pass per point and mask) would have run for the same maps
        self.tokens = {"naive": 0, "run": 0}

    @classmethod
    def from_checkpoints(cls, predictor_path, quantizer_path, device="cpu", **kw) -> "LRASPredictor":
        device = torch.device(device)
        lras = LRAS.from_checkpoint(predictor_path, device=device)
        lpq = LPQ.from_checkpoint(quantizer_path, device=device, dtype=torch.float32)  # LPQ stays fp32, as upstream
        pred = cls(lras, lpq, device, **kw)
        plan = pred.memory_plan()
        if plan["free"] is not None and plan["one_row"] > plan["free"]:
            raise MemoryError(f"{predictor_path}: tracing needs {plan['one_row'] / 2**30:.1f} GiB beside the weights "
                              f"on {device} (prefix cache, fp32 head, one sequence), only "
                              f"{plan['free'] / 2**30:.1f} GiB are free: use a device with more memory")
        return pred

    # ------------------------------------------------------------ memory
    def _row_bytes(self, length: int, pointers: int) -> int:
        """Transient bytes of one sequence row in a model call: keys/values of one layer over the whole
        sequence, the layer's activations, and the fp32 logits of the pointer rows (with log-softmax and KL)."""
        cfg = self.lras.cfg
        d, vocab = int(cfg["n_embd"]), int(cfg["vocab_size"])
        item = self.lras.lm_head.weight.element_size()
        return 2 * length * d * item + length * d * (4 + 12 * item) + 3 * pointers * vocab * 4

    def _fixed_bytes(self, prefix: int) -> int:
        """Bytes held during a call whatever the batch: the prefix's keys/values and the fp32 head."""
        cfg = self.lras.cfg
        d, vocab = int(cfg["n_embd"]), int(cfg["vocab_size"])
        return 2 * int(cfg["n_layer"]) * prefix * d * self.lras.lm_head.weight.element_size() + vocab * d * 4

    def _free_bytes(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.mem_get_info(self.device)[0]
        return None

    def memory_plan(self) -> dict:
        """Bytes a whole-frame call needs beside the weights at batch 1 (``one_row``) and per further row, and the
        free device memory (None on the CPU: the batch is ``extend_batch`` or 8 there)."""
        lay = self.layout
        full = lay.tokens_per_patch * (lay.n_patches + round(self.reveal * lay.n_patches)) + lay.n_patches
        row = self._row_bytes(full, lay.n_patches)
        return {"one_row": self._fixed_bytes(lay.tokens_per_patch * lay.n_patches) + row, "per_row": row,
                "free": self._free_bytes()}

    def _batch(self, length: int, pointers: int, prefix: int) -> int:
        """Rows per model call: ``extend_batch`` when set, else as many as half the free device memory holds."""
        if self.extend_batch:
            return self.extend_batch
        free = self._free_bytes()
        if free is None:
            return 8
        room = 0.5 * free - self._fixed_bytes(prefix)
        return int(max(1, min(64, room // self._row_bytes(length, pointers))))

    # ------------------------------------------------------------ orders
    def _orders(self, reveal: torch.Tensor):
        """Frame-0 order (the same for every mask: one seed), revealed and hidden frame-1 patches of ``reveal``."""
        g = torch.Generator().manual_seed(self.seed)
        src_perm = torch.randperm(self.layout.n_patches, generator=g)
        revealed, hidden = split_mask(reveal.cpu(), g)
        return src_perm, revealed, hidden

    def _autocast(self):
        """bf16 matmuls when the weights are bf16 (as upstream runs the 7B), a no-op in fp32. The residual stream,
        the head and everything after it stay fp32 (``LRAS._embed`` / ``_head``)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.lras.lm_head.weight.dtype == torch.bfloat16)

    def _codes(self, images):
        return self.layout.patchify(self.lpq.encode(images.to(self.device)))

    def _pair(self, sources, targets):
        """Patch codes of sources and targets, one shared or one per row either way."""
        src, tgt = self._codes(sources), self._codes(targets)
        if not (src.shape[0] == tgt.shape[0] or 1 in (src.shape[0], tgt.shape[0])):
            raise ValueError(f"{src.shape[0]} sources and {tgt.shape[0]} targets: give one shared frame or one per "
                             f"row on either side")
        b = max(src.shape[0], tgt.shape[0])
        return src.expand(b, -1, -1), tgt.expand(b, -1, -1)

    def _hidden_logits(self, tokens, positions, n_hidden):
        with self._autocast():
            return self.lras(tokens, positions, logits_for=slice(tokens.shape[1] - n_hidden, None))

    @torch.no_grad()
    def log_probs(self, sources, targets, reveal):
        """Log-probs (B, M, V) of the hidden patches (raster order): one full forward pass per row (the paper's
        procedure; ``kl_maps`` is what tracing runs)."""
        src, tgt = self._pair(sources, targets)
        perm, revealed, hidden = self._orders(reveal)
        out = []
        for i in range(src.shape[0]):
            tok, pos, _ = self.layout.two_frame_sequence(src[i:i + 1], tgt[i:i + 1], perm, revealed, hidden)
            self.tokens["run"] += tok.shape[1]
            out.append(self._hidden_logits(tok, pos, len(hidden)))
        return torch.cat(out)[:, torch.argsort(hidden)].log_softmax(-1)

    # ------------------------------------------------------------ KL maps
    @torch.no_grad()
    def kl_maps(self, sources, traced, targets, reveals, cached: bool = True, window=None):
        """KL(p_clean || p_traced) (B, K, n_patches) of every hidden target patch under each of K reveal masks
        (``reveals`` (K,g,g), True = revealed; 0 at revealed patches and outside ``window``).

        ``sources``, ``targets`` (B,3,w,w): each point's clean source and target window (rows may repeat:
        expanded views or equal windows are found and run once); ``traced`` (B,3,w,w): the sources with the
        tracers. This one routine serves every route of the engine: windows shared by all points (whole frame),
        a window per point (zoom scales), a source image per query (anchored tracking) and a target per point
        (the backward check).

        ``cached`` (the default): the points of one clean source go in groups of ``group``; the frame-0 patches
        any variant of the group touches are moved to the end of frame 0 (the permutation's order otherwise), so
        that the untouched prefix is the same for the clean pass, every variant and every mask: it is prefilled
        once, and each row's suffix (touched patches, revealed frame-1 patches, pointer block) is extended in
        batches. ``cached=False``: the same sequences as full forward passes (the exact reference).

        ``window`` ((g,g) bool or None): the search window. Its hidden patches go first in the pointer block (in
        the permuted order) and, when cached, the block stops there (causal attention: the pointers computed
        never see the ones dropped).
        """
        lay = self.layout
        src_u, src_of = distinct_rows(sources)
        tgt_u, tgt_of = distinct_rows(targets)
        s_codes, t_codes, v_codes = self._codes(src_u), self._codes(tgt_u), self._codes(traced)
        orders = [self._orders(m) for m in reveals]
        if window is not None:
            inside = window.flatten().cpu()
            orders = [(o, r, torch.cat([h[inside[h]], h[~inside[h]]]), int(inside[h].sum())) for o, r, h in orders]
        else:
            orders = [(o, r, h, len(h)) for o, r, h in orders]
        out = torch.zeros(traced.shape[0], len(reveals), lay.n_patches)
        for s in range(len(src_u)):
            for chunk in torch.nonzero(src_of == s).flatten().split(self.group):
                self._group_maps(s_codes[s:s + 1], v_codes[chunk], t_codes, tgt_of[chunk], chunk, orders, cached, out)
        return out

    def _group_maps(self, clean, variants, targets, target_of, points, orders, cached: bool, out):
        """KL maps of one group of ``points`` (their ``variants`` (c, n, 4) of one ``clean`` source (1, n, 4),
        their targets ``targets[target_of]``) under every mask, written into ``out``."""
        lay = self.layout
        tpp = lay.tokens_per_patch
        touched = (variants != clean).any(-1).any(0).cpu()
        perm = orders[0][0]
        order = torch.cat([perm[~touched[perm]], perm[touched[perm]]])
        kept = int((~touched).sum())                     # frame-0 patches in the shared prefix
        cached = cached and kept > 0
        head, head_pos = lay.frame_tokens(clean, order[:kept], 0)
        cache = None
        if cached:
            cache = self._call(lambda: self._prefill(head, head_pos), rows=1)
            self.tokens["run"] += head.shape[1]
        # rows: per mask, per distinct target: its clean pass, then the variants of the points that look there
        rows = []
        for k, (_, revealed, hidden, n_out) in enumerate(orders):
            n_ptr = n_out if cached else len(hidden)
            self.tokens["naive"] += 2 * (tpp * (lay.n_patches + len(revealed)) + len(hidden)) * len(points)
            for t in target_of.unique().tolist():
                mine = torch.nonzero(target_of == t).flatten()
                srcs = torch.cat([clean, variants[mine]])
                tok, pos, _ = lay.two_frame_sequence(srcs, targets[t:t + 1], order[kept:], revealed, hidden[:n_ptr])
                rows += [_Row(tok[r], pos, k, t, None if r == 0 else int(points[mine[r - 1]]), hidden[:n_out], n_ptr)
                         for r in range(len(srcs))]
        clean_stats = {}                                   # (mask, target) -> the clean row's hidden states, lse, u
        i = 0
        while i < len(rows):
            b = self._batch(len(rows[i].tokens) + (0 if cached else head.shape[1]), rows[i].pointers,
                            head.shape[1] if cached else 0)
            batch = [rows[i]]
            while len(batch) < b and i + len(batch) < len(rows) and rows[i + len(batch)].fits(rows[i]):
                batch.append(rows[i + len(batch)])
            tok, pos = torch.stack([r.tokens for r in batch]), torch.stack([r.positions for r in batch])
            first, n_out = tok.shape[1] - batch[0].pointers, len(batch[0].hidden)
            if cached:
                run = lambda: self._extend(cache, tok, pos, slice(first, first + n_out))  # noqa: E731
            else:   # the reference: the same sequences as full passes
                tok = torch.cat([head.expand(len(batch), -1), tok], 1)
                pos = torch.cat([head_pos.expand(len(batch), -1), pos], 1)
                at = head.shape[1] + first
                run = lambda: self._forward(tok, pos, slice(at, at + n_out))  # noqa: E731
            try:
                hid = self._call(run, rows=len(batch))   # (b, n_out, d): the head's input at the pointers
            except _Retry:
                continue
            self.tokens["run"] += tok.numel()
            for r, row in enumerate(batch):
                if row.point is None:
                    clean_stats[row.key] = (hid[r], *self._softmax_stats(hid[r]))
            for key in dict.fromkeys(row.key for row in batch):   # each (mask, target)'s variants against its clean
                rs = [r for r, row in enumerate(batch) if row.key == key and row.point is not None]
                if rs:
                    kl = self._kl(*clean_stats[key], hid[rs]).cpu()
                    for j, r in enumerate(rs):
                        out[batch[r].point, key[0], batch[r].hidden.cpu()] = kl[j]
            i += len(batch)

    # ------------------------------------------------------------ the head and the KL
    def _head_weight(self) -> torch.Tensor:
        """The head's weight in fp32 (a copy kept while the weights are bf16)."""
        w = self.lras.lm_head.weight
        if w.dtype == torch.float32:
            return w
        if getattr(self, "_w32", None) is None or self._w32.device != w.device:
            self._w32 = w.float()
        return self._w32

    def _head_chunks(self, h: torch.Tensor):
        """Logits of the rows of ``h`` (R, d), a chunk of rows at a time (at most 64 MB of fp32 logits)."""
        w = self._head_weight()
        step = max(1, 2 ** 24 // w.shape[0])
        for i in range(0, h.shape[0], step):
            yield i, h[i:i + step] @ w.T

    def _log_norm(self, h: torch.Tensor) -> torch.Tensor:
        """log sum exp of each row's logits (R,): the max (exact) plus the log of a sum of terms <= 1, in float64, so
        that two of them subtract without losing the KL to rounding."""
        out = torch.empty(h.shape[0], dtype=torch.float64, device=h.device)
        for i, x in self._head_chunks(h):
            m = x.amax(-1, keepdim=True)
            out[i:i + len(x)] = m.squeeze(-1).double() + x.sub_(m).exp_().sum(-1).double().log()
        return out

    def _softmax_stats(self, h: torch.Tensor):
        """For clean rows ``h`` (M, d): log-normaliser (M,) and u = W^T softmax(W h) (M, d)."""
        w = self._head_weight()
        lse = torch.empty(h.shape[0], dtype=torch.float64, device=h.device)
        u = torch.empty_like(h)
        for i, x in self._head_chunks(h):
            m = x.amax(-1, keepdim=True)
            e = x.sub_(m).exp_()
            total = e.sum(-1)
            lse[i:i + len(x)] = m.squeeze(-1).double() + total.double().log()
            u[i:i + len(x)] = (e @ w) / total.unsqueeze(-1)
        return lse, u

    def _kl(self, h_clean, lse_clean, u, h_traced) -> torch.Tensor:
        """KL(p_clean || p_traced) (B, M) from the head's inputs: with logits c = W h_c and t = W h_t,
        KL = sum_v p_v (c_v - t_v) - lse(c) + lse(t) = u . (h_c - h_t) - lse(c) + lse(t), u = W^T p. Per traced row
        only its log-normaliser runs over the vocabulary (in chunks: no (B, M, V) tensor is ever held)."""
        b, m, d = h_traced.shape
        lse_t = self._log_norm(h_traced.reshape(-1, d)).view(b, m)
        dot = ((h_clean - h_traced) * u).sum(-1).double()
        return (dot - lse_clean + lse_t).float().clamp(min=0)

    def _prefill(self, tok, pos):
        with self._autocast():
            return self.lras.prefill(tok, pos)

    def _extend(self, cache, tok, pos, logits_for):
        with self._autocast():
            return self.lras.extend(cache, tok, pos, logits_for=logits_for, head=False)

    def _forward(self, tok, pos, logits_for):
        with self._autocast():
            return self.lras(tok, pos, logits_for=logits_for, head=False)

    def _call(self, run, rows: int):
        """``run()``; out of device memory, the rows per call are halved and the caller tries again (``_Retry``);
        at one row the error names what to change."""
        try:
            return run()
        except torch.OutOfMemoryError as err:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if rows > 1:
                self.extend_batch = rows // 2
                warnings.warn(f"LRAS: out of memory on {self.device} at {rows} sequences per model call, "
                              f"now {self.extend_batch}")
                raise _Retry() from err
            raise MemoryError(f"LRAS ran out of memory on {self.device} at one sequence per model call: free device "
                              f"memory (other processes) or use a GPU with more memory") from err

    @torch.no_grad()
    def predict_rgb(self, sources, targets, reveal):
        """Parallel decoding as upstream: four passes, each appending the argmax of every hidden patch's next code."""
        src, tgt = self._pair(sources, targets)
        perm, revealed, hidden = self._orders(reveal)
        lay = self.layout
        outs = []
        for i in range(src.shape[0]):
            tok, pos, _ = lay.two_frame_sequence(src[i:i + 1], tgt[i:i + 1], perm, revealed, hidden)
            codes = []
            for k in range(lay.tokens_per_patch - 1):
                logits = self._hidden_logits(tok, pos, len(hidden))
                nxt = logits[0, :, : lay.n_codes].argmax(-1)
                codes.append(nxt)
                tok = torch.cat([tok, nxt.view(1, -1)], 1)
                pos = torch.cat([pos, lay.position[1] + lay.tokens_per_patch * hidden.to(self.device) + k + 1])
            pred = tgt[i:i + 1].clone()
            pred[0, hidden.to(self.device)] = torch.stack(codes, -1)
            g, p = lay.grid, lay.patch
            grid_codes = pred.view(1, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(1, g * p, g * p)
            outs.append(self.lpq.decode(grid_codes))
        return torch.cat(outs)


class _Retry(Exception):
    """A model call ran out of memory and the batch was halved: run it again."""


class _Row(NamedTuple):
    """One sequence of a group: the suffix after the shared prefix, for one mask and target; ``point`` None for
    the clean pass. ``hidden``: the hidden patches whose maps it gives (the search window's); ``pointers``: the size
    of its pointer block."""
    tokens: torch.Tensor
    positions: torch.Tensor
    mask: int
    target: int
    point: int | None
    hidden: torch.Tensor
    pointers: int

    @property
    def key(self) -> tuple:
        return self.mask, self.target

    def fits(self, other: "_Row") -> bool:
        """Rows that can share a model call: suffixes of one length, pointer blocks and windows of one size."""
        return (self.tokens.shape == other.tokens.shape and self.pointers == other.pointers
                and len(self.hidden) == len(other.hidden))
