"""The predictor protocol the tracing engine talks to.

A predictor is a next-frame model with a per-patch distribution over codes. The engine gives
it a batch of source-frame variants (clean and with tracers), the target frame(s) and one
reveal mask; it returns log-probabilities over its code vocabulary for every hidden target
patch. Windows (crops) are decided by the engine, never by the predictor. Implementations live
in ``kltrace_ros.models`` (each family's ``predictor.py``).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Predictor(Protocol):
    image_size: int       # whole-frame working resolution (square px); metrics and tracer live here
    window: int           # model input size (px); == image_size for whole-frame models
    patch: int            # px per predicted patch at window resolution
    reveal: float         # fraction of target patches revealed
    tracer_sigma: float   # tracer sigma in window px
    first_crop: int       # crop size (px at image_size) of the first scale
    shrink: float         # crop shrink factor per further scale
    masks: int            # default number of reveal masks averaged per scale
    device: torch.device
    name: str

    def log_probs(self, sources: torch.Tensor, targets: torch.Tensor, reveal: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, M, V) over codes of the M hidden patches (raster order).

        sources: (B,3,w,w) RGB in [0,1]; targets: (B,3,w,w) or (1,3,w,w) (shared);
        reveal: (w/patch, w/patch) bool, True = revealed.
        """
        ...

    def predict_rgb(self, sources: torch.Tensor, targets: torch.Tensor, reveal: torch.Tensor) -> torch.Tensor:
        """The model's RGB prediction (B,3,w,w) of the target (argmax codes, decoded)."""
        ...

    # Optional: ``scales`` (int) fixes the default number of zoom scales; ``reach`` (float, working px) bounds
    # the first scale's search around its start (TraceConfig.reach); ``methods`` (tuple) and
    # ``default_method`` say which of "kl" / "rgb" a predictor offers (diffusion models: "rgb" only).
    # Optional: ``kl_maps(sources (B,3,w,w), traced (B,3,w,w), targets (B,3,w,w), reveals (K,g,g))`` -> KL maps
    # (B, K, g*g) of every mask at once (0 at revealed patches) lets a predictor share work between points,
    # masks, the clean pass and the tracer variants (rows may be expanded views of one window); the engine uses
    # it when present (MotionPredictor, LRASPredictor).
