"""The predictor protocol the tracing engine talks to, and its two model-backed implementations.

A predictor is a next-frame model with a per-patch distribution over codes. The engine gives
it a batch of source-frame variants (clean and with tracers), the target frame(s) and one
reveal mask; it returns log-probabilities over its code vocabulary for every hidden target
patch. Windows (crops) are decided by the engine, never by the predictor.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from kltrace_ros.lras.checkpoint import CheckpointError, load_checkpoint


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

    # Optional: ``traced_kl(clean (1,3,w,w), traced (B,3,w,w), target (1,3,w,w), reveal)`` -> KL maps
    # (B, M) lets a predictor share work between the clean pass and the tracer variants
    # (LRASPredictor prefills their common prefix once); the engine uses it when present.


class MotionPredictor:
    """The embedded small model (CellCode + MotionLRAS) behind the predictor protocol."""

    def __init__(self, model, device="cpu"):
        self.model = model.to(device).eval()
        c = model.cfg
        self.image_size, self.window, self.patch = c["image_size"], c["window"], c["cell"]
        self.reveal, self.tracer_sigma = c["reveal"], c["tracer_sigma"]
        self.first_crop, self.shrink, self.masks = c["first_crop"], c["shrink"], c.get("masks", 4)
        self.occlusion_threshold = dict(c.get("occlusion_threshold", {}))
        self.device = torch.device(device)
        self.name = c.get("name", "MotionLRAS")
        self._cache: list = []

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Codes of ``images``, memoised for the last few tensors (the engine passes the same
        windows once per reveal mask; ``_version`` changes if a tensor is modified in place)."""
        key = (images.data_ptr(), tuple(images.shape), images.stride(), images._version)
        for k, tensor, codes in self._cache:
            if k == key and tensor is images:
                return codes
        codes = self.model.tokenizer.encode(images.to(self.device))
        self._cache = [(key, images, codes)] + self._cache[:3]
        return codes

    @torch.no_grad()
    def log_probs(self, sources, targets, reveal):
        src = self._encode(sources)
        tgt = self._encode(targets)
        reveal = reveal.to(self.device)
        return self.model(src, tgt, reveal, hidden_only=True)

    @torch.no_grad()
    def predict_rgb(self, sources, targets, reveal):
        src = self._encode(sources)
        tgt = self._encode(targets).expand(src.shape[0], -1, -1)
        reveal = reveal.to(self.device)
        pred = self.model(src, tgt, reveal).argmax(-1).view_as(src)
        return self.model.tokenizer.decode(torch.where(reveal, tgt, pred))


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when present, else cpu; 'cuda' without CUDA falls back to cpu with a warning."""
    import warnings

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn("device 'cuda' requested but CUDA is not available: running on the CPU")
        return torch.device("cpu")
    return dev


def default_model_path():
    from importlib.resources import files

    return files("kltrace_ros") / "models" / "default.pt"


def load_predictor(model_path=None, device="cpu", quantizer_path=None) -> Predictor:
    """A predictor for a kltrace model file (default: the embedded model) or a published LRAS pair."""
    from kltrace_ros.lras.motion import MotionLRAS

    path = default_model_path() if not model_path else model_path
    cfg, state = load_checkpoint(path)
    if cfg.get("model_class") == "MotionLRAS":
        model = MotionLRAS(cfg)
        from kltrace_ros.lras.checkpoint import load_state_strict

        load_state_strict(model, state, path)
        return MotionPredictor(model, device)
    if "n_layer" in cfg:
        from .lras_predictor import LRASPredictor

        if not quantizer_path:
            raise CheckpointError(f"{path} is an LRAS predictor: it needs its LPQ quantizer too "
                                  f"(quantizer_path / --quantizer DIR/rgb_quantizer.pt)")
        return LRASPredictor.from_checkpoints(path, quantizer_path, device=device)
    raise CheckpointError(f"{path}: cfg names no known model (model_class={cfg.get('model_class')!r}, "
                          f"config_class={cfg.get('config_class')!r})")
