"""LPQ: the published local patch quantizer (image <-> 16-bit codes on a 4x-downsampled grid).

Encoder: Conv(3->C, k4, s4) -> SiLU -> residual block (1x1 convs). Each code sees only its own
4x4 pixel cell. LFQ: ``project_in`` (C->bits), sign bits with dimension 0 as the most
significant bit; decoding maps bits to +-1/sqrt(bits) (+-0.25 for 16 bits) and ``project_out``.
Decoder: residual blocks (3x3) and nearest x2 upsampling stages down to 3 channels.

The layer widths and block counts are read from the state dict (the checkpoint's ``cfg``
stores them in a format we do not need to parse); ImageNet normalisation is done inside.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError, load_checkpoint, load_state_strict, save_checkpoint
from ..imagenet import denormalise, normalise


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every pixel (affine, eps 1e-5)."""

    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, 1e-5).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    def __init__(self, c: int, hidden: int, kernel: int):
        super().__init__()
        self.ln1 = ChannelLayerNorm(c)
        self.conv1 = nn.Conv2d(c, hidden, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(hidden, c, kernel, padding=kernel // 2)

    def forward(self, x):
        return x + F.silu(self.conv2(F.silu(self.conv1(self.ln1(x)))))


class Upsample(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class LFQ(nn.Module):
    def __init__(self, dim: int, bits: int):
        super().__init__()
        self.bits = bits
        self.project_in = nn.Linear(dim, bits)
        self.project_out = nn.Linear(bits, dim)
        self.register_buffer("mask", 2 ** torch.arange(bits - 1, -1, -1, dtype=torch.int64))

    def encode(self, feats):  # (B,C,h,w) -> (B,h,w) int64
        z = self.project_in(feats.permute(0, 2, 3, 1).float())
        return ((z > 0).long() * self.mask).sum(-1)

    def decode(self, codes):  # (B,h,w) -> (B,C,h,w)
        bits = (codes.unsqueeze(-1) & self.mask) != 0
        z = torch.where(bits, 1.0, -1.0) / self.bits ** 0.5
        return self.project_out(z.to(self.project_out.weight.dtype)).permute(0, 3, 1, 2)


def arch_from_state(state: dict) -> dict:
    """Channel widths, block kinds and code bits from the state-dict shapes."""
    try:
        stem = state["encoder.0.weight"]
        enc_hidden = state["encoder.2.conv1.weight"].shape[0]
        bits = state["quantizer.project_in.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"not an LPQ state dict: missing {err}") from err
    dec = {}
    for key in state:
        m = re.fullmatch(r"decoder\.(\d+)\.(conv1\.weight|conv\.weight|weight)", key)
        if m:
            i = int(m.group(1))
            if m.group(2) == "conv1.weight":  # residual block
                w = state[key]
                dec[i] = ("res", w.shape[1], w.shape[0], w.shape[-1])
            elif m.group(2) == "conv.weight":
                w = state[key]
                dec[i] = ("up", w.shape[1], w.shape[0])
            else:
                w = state[key]
                dec[i] = ("out", w.shape[1], w.shape[0], w.shape[-1])
    return {"in_channels": stem.shape[1], "channels": stem.shape[0], "patch": stem.shape[-1],
            "enc_hidden": enc_hidden, "bits": bits, "decoder": [dec[i] for i in sorted(dec)]}


class LPQ(nn.Module):
    def __init__(self, arch: dict, cfg: dict | None = None):
        super().__init__()
        self.arch = arch
        self.cfg = dict(cfg or {})
        c = arch["channels"]
        self.encoder = nn.Sequential(nn.Conv2d(arch["in_channels"], c, arch["patch"], stride=arch["patch"]),
                                     nn.SiLU(), ResBlock(c, arch["enc_hidden"], 1))
        self.quantizer = LFQ(c, arch["bits"])
        layers = []
        for spec in arch["decoder"]:
            if spec[0] == "res":
                layers.append(ResBlock(spec[1], spec[2], spec[3]))
            elif spec[0] == "up":
                layers.append(Upsample(spec[1], spec[2]))
            else:
                layers.append(nn.Conv2d(spec[1], spec[2], spec[3], padding=spec[3] // 2))
        self.decoder = nn.Sequential(*layers)

    @classmethod
    def default_arch(cls, channels=512, bits=16, widths=(512, 256, 128), blocks=3, in_channels=3) -> dict:
        dec = []
        for i, w in enumerate(widths):
            dec += [("res", w, 2 * w, 3)] * blocks
            if i + 1 < len(widths):
                dec.append(("up", w, widths[i + 1]))
        dec.append(("out", widths[-1], in_channels, 3))
        return {"in_channels": in_channels, "channels": channels, "patch": 4, "enc_hidden": 2 * channels,
                "bits": bits, "decoder": dec}

    @classmethod
    def from_checkpoint(cls, path, device="cpu", dtype: torch.dtype = torch.float32) -> "LPQ":
        """Load the published quantizer (or ours); it runs in fp32 by default, also on CUDA."""
        cfg, state = load_checkpoint(path)
        try:
            arch = arch_from_state(state)
        except CheckpointError as err:
            raise CheckpointError(f"checkpoint {path}: {err}") from err
        with torch.device("meta"):
            model = cls(arch, cfg)
        load_state_strict(model, state, path, dtype=dtype)
        return model.to(device).eval()

    def save_checkpoint(self, path) -> None:
        save_checkpoint(path, {"config_class": "LPQConfig", **self.cfg}, self.state_dict())

    @property
    def vocab_size(self) -> int:
        return 2 ** self.arch["bits"]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) RGB in [0,1] -> (B,H/4,W/4) int64 codes."""
        w = self.encoder[0].weight
        return self.quantizer.encode(self.encoder(normalise(images.float()).to(w.dtype)))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B,h,w) codes -> (B,3,4h,4w) RGB in [0,1]."""
        return denormalise(self.decoder(self.quantizer.decode(codes)).float()).clamp(0, 1)
