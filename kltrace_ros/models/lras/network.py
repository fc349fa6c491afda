"""LRAS transformer (the published predictor's architecture), with cached inference for tracing.

Pre-LN GPT: h = tok_emb[tokens] + pos_emb[positions] (explicit position ids); each block does
x += attn(LN1(x)); x += MLP(LN2(x)); LayerNorm has weight only (eps 1e-5); no biases; exact
GELU; causal attention with ``scaled_dot_product_attention``; untied ``lm_head``.

Sizes come from the checkpoint's ``cfg`` (``n_layer``, ``n_head``, ``n_embd``,
``vocab_size``, ``block_size``); ``n_head`` cannot be inferred from the weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError, Limit, check_cfg, load_checkpoint, load_state_strict, save_checkpoint

REQUIRED_CFG = ("n_layer", "n_head", "n_embd", "vocab_size", "block_size")
CFG_LIMITS = {"n_layer": Limit(1, 256), "n_head": Limit(1, 1024), "n_embd": Limit(1, 65536),
              "vocab_size": Limit(1, 2**22), "block_size": Limit(1, 2**20)}


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias (eps 1e-5)."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):   # in the input's dtype: the fp32 residual stream of a bf16 model stays fp32
        return F.layer_norm(x, self.weight.shape, self.weight.to(x.dtype), None, 1e-5)


class Attention(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        if d % n_head:
            raise ValueError(f"n_embd {d} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)

    def qkv(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        split = lambda z: z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)  # noqa: E731
        return split(q), split(k), split(v)

    def merge(self, y):
        b, h, t, hd = y.shape
        return self.c_proj(y.transpose(1, 2).reshape(b, t, h * hd))

    def forward(self, x):
        q, k, v = self.qkv(x)
        return self.merge(F.scaled_dot_product_attention(q, k, v, is_causal=True)), (k, v)

    def forward_on_prefix(self, x, prefix_kv):
        """Causal attention of new tokens over a shared prefix (batch 1) and themselves.

        One ``scaled_dot_product_attention`` over the prefix's and the new tokens' keys with a boolean mask (all of
        the prefix, causal among the new tokens), so PyTorch picks a memory-efficient kernel and never keeps a
        B x H x Te x Tp score tensor (at the 7B layout that was tens of GB at an extend batch of 8).
        """
        q, k, v = self.qkv(x)
        pk, pv = prefix_kv
        b, tp, te = q.shape[0], pk.shape[2], q.shape[2]
        k = torch.cat([pk.expand(b, -1, -1, -1).to(k.dtype), k], 2)
        v = torch.cat([pv.expand(b, -1, -1, -1).to(v.dtype), v], 2)
        mask = torch.ones(te, tp + te, dtype=torch.bool, device=x.device).tril(tp)
        return self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d, bias=False)
        self.c_proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.ln_1 = LayerNorm(d)
        self.attn = Attention(d, n_head)
        self.ln_2 = LayerNorm(d)
        self.mlp = MLP(d)

    def forward(self, x):
        a, kv = self.attn(self.ln_1(x))
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv

    def forward_on_prefix(self, x, prefix_kv):
        x = x + self.attn.forward_on_prefix(self.ln_1(x), prefix_kv)
        return x + self.mlp(self.ln_2(x))


@dataclass
class KVCache:
    """Keys/values of a shared prefix: one (k, v) per layer, each (1, n_head, T, head_dim)."""
    layers: list
    length: int


class LRAS(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        missing = [k for k in REQUIRED_CFG if k not in cfg]
        if missing:
            raise CheckpointError(f"LRAS cfg lacks {missing}")
        check_cfg(cfg, CFG_LIMITS, "LRAS transformer")
        self.cfg = dict(cfg)
        d, v = int(cfg["n_embd"]), int(cfg["vocab_size"])
        self.transformer = nn.ModuleDict(dict(
            token_embedding=nn.Embedding(v, d),
            positional_embedding=nn.Embedding(int(cfg["block_size"]), d),
            h=nn.ModuleList(Block(d, int(cfg["n_head"])) for _ in range(int(cfg["n_layer"]))),
            ln_f=LayerNorm(d),
        ))
        self.lm_head = nn.Linear(d, v, bias=False)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_checkpoint(cls, path, device="cpu", dtype: torch.dtype | None = None) -> "LRAS":
        """Load a published or kltrace LRAS checkpoint (weights-only; one copy of the weights in memory).

        The model is built on the meta device and the checkpoint's (memory-mapped) tensors are
        assigned into it, cast to ``dtype`` (default: fp32 on CPU, bf16 on CUDA).
        """
        device = torch.device(device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        cfg, state = load_checkpoint(path)
        with torch.device("meta"):
            model = cls(cfg)
        need = sum(v.numel() for v in state.values()) * torch.finfo(dtype).bits // 8
        check_memory(need, device, path)
        load_state_strict(model, state, path, dtype=dtype)
        return model.to(device).eval()

    def save_checkpoint(self, path) -> None:
        save_checkpoint(path, self.cfg, self.state_dict())

    # -------------------------------------------------------------- forward
    def _embed(self, tokens, positions):
        """Token + position embeddings, in float32: the residual stream stays fp32 under bf16 autocast (only the
        matmuls run in bf16), so a tracer's small change of it is not rounded away."""
        vocab, block = self.cfg["vocab_size"], self.cfg["block_size"]
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
            raise ValueError(f"token id out of range [0, {vocab})")
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= block):
            raise ValueError(f"position id out of range [0, {block})")
        te = self.transformer
        return te.token_embedding(tokens).float() + te.positional_embedding(positions).float()

    def _head(self, x, logits_for, head: bool = True):
        """Logits (or, with ``head=False``, the final normalised hidden states) at ``logits_for``, in float32
        whatever the weights' dtype: with bf16 logits the KL between a clean and a traced distribution drowns in
        rounding (52% of the map's maximum on a tiny model). Only the pointer rows reach the head."""
        if logits_for is not None:
            x = x[:, logits_for]
        with torch.autocast(x.device.type, enabled=False):
            x = F.layer_norm(x.float(), x.shape[-1:], self.transformer.ln_f.weight.float(), None, 1e-5)
            return F.linear(x, self.lm_head.weight.float()) if head else x

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, logits_for=None, head: bool = True
                ) -> torch.Tensor:
        """Logits (B, T, V) for every position, or only at ``logits_for`` (index tensor or slice); ``head=False``:
        the hidden states (B, T, d) the head would take (see ``_head``). ``positions``: (T,) or (B, T)."""
        x = self._embed(tokens, positions.expand_as(tokens))
        for block in self.transformer.h:
            x, _ = block(x)
        return self._head(x, logits_for, head)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, positions: torch.Tensor) -> KVCache:
        """Run a (1, T) prefix once and keep its keys/values."""
        if tokens.shape[0] != 1:
            raise ValueError("prefill takes one prefix (batch 1); continuations are batched in extend")
        x = self._embed(tokens, positions.expand_as(tokens))
        layers = []
        for block in self.transformer.h:
            x, kv = block(x)
            layers.append(kv)
        return KVCache(layers, tokens.shape[1])

    @torch.no_grad()
    def extend(self, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor, logits_for=None,
               head: bool = True) -> torch.Tensor:
        """Logits for a batch (B, Te) of continuations of the cached prefix (the cache is shared); ``positions``
        (Te,) or (B, Te); ``head`` as in ``forward``."""
        x = self._embed(tokens, positions.expand_as(tokens))
        for block, kv in zip(self.transformer.h, cache.layers):
            x = block.forward_on_prefix(x, kv)
        return self._head(x, logits_for, head)


def check_memory(need_bytes: int, device: torch.device, path) -> None:
    """Fail before loading when the device cannot hold the weights (report the need)."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        if need_bytes > free:
            raise MemoryError(f"{path}: the weights need {need_bytes / 2**30:.1f} GiB on {device}, "
                              f"only {free / 2**30:.1f} GiB are free")
    elif device.type == "cpu":
        try:
            avail = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemAvailable"))) * 1024
        except (OSError, StopIteration):
            return
        if need_bytes > avail:
            raise MemoryError(f"{path}: the weights need {need_bytes / 2**30:.1f} GiB of memory, "
                              f"only {avail / 2**30:.1f} GiB are available")
