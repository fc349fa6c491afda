"""Perturb-and-track on a diffusion video model: the predictor protocol over a two-run difference recipe.

A diffusion model has no per-patch distribution, so only the RGB variant applies (``methods = ("rgb",)``):
:meth:`DiffusionPredictor.predict_rgb` returns the model's prediction of frame 2 given frame 1 (clean or
traced), made from the real frame-2 latents noised to ``noise_level`` and denoised with noise drawn from a
generator seeded the same way on every call. Two calls that differ only in the tracer therefore see the
same noise, and their RGB difference is the tracer's effect alone (exactly zero without a tracer). Each
family (``svd.py``, ``cosmos.py``) supplies ``_prepare(cond, target)``, ``_denoise(prepared, noise)`` and
``noise_shape(batch)``; the real frame 2 is encoded and the prediction decoded without frame 1 in view, so
that the tracer reaches the prediction only through the model, never through the VAE.
"""
from __future__ import annotations

import os

import torch

from .spec import DiffusionSettings

CPU_LIMIT_BYTES = 1 << 30     # weights above this are refused on the CPU unless allow_cpu


def weights_dtype(device) -> torch.dtype:
    """bf16 on CUDA, fp32 on the CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def component(kind, folder, sub: str, device=None):
    """``kind.from_pretrained`` on the local ``folder/sub``, never downloading (local files only, the Hub
    offline); with a ``device``: model weights, from safetensors only (no pickle), in :func:`weights_dtype`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kw = {"subfolder": sub, "local_files_only": True}
    if device is not None:
        kw.update(torch_dtype=weights_dtype(device), use_safetensors=True)
    return kind.from_pretrained(folder, **kw)


class DiffusionPredictor:
    methods = ("rgb",)
    default_method = "rgb"
    reveal = 0.0              # every target patch is predicted (the mask has no meaning here)
    masks = 1
    scales = 1                # one whole-frame pass: each call is a full denoising run
    shrink = 0.5
    min_sharpness = 0.0
    occlusion_threshold: dict = {}

    def __init__(self, name: str, settings: DiffusionSettings, device: torch.device, patch: int):
        self.name, self.settings, self.device = name, settings, torch.device(device)
        self.dtype = weights_dtype(self.device)
        self.image_size = self.window = self.first_crop = settings.size
        self.patch = patch                        # VAE downsampling: one latent cell
        self.tracer_sigma = float(patch)          # a tracer the size of a latent cell

    @staticmethod
    def check_device(name: str, device: torch.device, weight_bytes: int, settings: DiffusionSettings) -> None:
        if torch.device(device).type == "cpu" and weight_bytes > CPU_LIMIT_BYTES and not settings.allow_cpu:
            raise ValueError(f"{name}: {weight_bytes / 2**30:.1f} GB of weights on the CPU would take hours per "
                             f"frame pair: run on a GPU (device cuda, loaded in bf16), or add ?allow_cpu=1 to the "
                             f"model spec to force it")

    def log_probs(self, sources, targets, reveal):
        raise ValueError(f"{self.name} is a diffusion model: it predicts RGB, not a distribution per patch; "
                         f"KL-tracing needs LRAS: use --method rgb")

    def noise_shape(self, batch: int) -> tuple:
        raise NotImplementedError

    def _prepare(self, cond: torch.Tensor, target: torch.Tensor):
        """What every noise draw of a chunk shares (embeddings, clean latents); frames in [-1,1]."""
        raise NotImplementedError

    def _denoise(self, prepared, noise: torch.Tensor) -> torch.Tensor:
        """(B,3,w,w) prediction of frame 2 in [-1,1] for one noise draw."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_rgb(self, sources: torch.Tensor, targets: torch.Tensor, reveal: torch.Tensor) -> torch.Tensor:
        """(B,3,w,w) prediction of the target in [0,1], averaged over ``samples`` draws; sources (B,3,w,w) and
        targets (B or 1,3,w,w) in [0,1]. The same draws on every call (seeded generator, one draw shared by
        the whole batch). Variants go through the model in chunks of exactly ``batch`` (the last one padded),
        so that a clean call and a traced call run the same kernels and differ only by the tracer."""
        s = self.settings
        gen = torch.Generator("cpu").manual_seed(s.seed)
        noises = [torch.randn(self.noise_shape(1), generator=gen).to(self.device) for _ in range(s.samples)]
        n = len(sources)
        targets = targets.expand(n, -1, -1, -1)
        out = []
        for i in range(0, n, s.batch):
            idx = torch.arange(i, i + s.batch).clamp(max=n - 1)           # pad with the last variant
            cond = sources[idx].to(self.device, self.dtype) * 2 - 1
            target = targets[idx].to(self.device, self.dtype) * 2 - 1
            prepared = self._prepare(cond, target)
            acc = sum(self._denoise(prepared, z.expand(s.batch, *z.shape[1:])).float() for z in noises)
            out.append(((acc / s.samples + 1) / 2).clamp(0, 1)[: min(s.batch, n - i)].cpu())
        return torch.cat(out)
