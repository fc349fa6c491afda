"""From a file to a predictor: the model families by name, the default model, the device.

A kltrace file names its family in ``cfg['model_class']``; a published LRAS predictor is
recognised by its transformer sizes (``n_layer``) and needs its LPQ quantizer beside it; ``svd:DIR`` and
``cosmos:DIR`` name a diffusers folder (``diffusion/``).
"""
from __future__ import annotations

import warnings
from importlib.resources import files

import torch

from .checkpoint import CheckpointError, load_checkpoint, load_state_strict
from .diffusion.load import is_spec, load_diffusion
from .lras.predictor import LRASPredictor
from .motion.network import MotionLRAS, check_motion_cfg
from .motion.predictor import MotionPredictor


def _motion(cfg: dict, state: dict, path, device, quantizer_path) -> MotionPredictor:
    model = MotionLRAS(check_motion_cfg(cfg, path))
    load_state_strict(model, state, path)
    return MotionPredictor(model, device)


FAMILIES = {"MotionLRAS": _motion}   # cfg['model_class'] -> builder(cfg, state, path, device, quantizer_path)


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' -> cuda when present, else cpu; 'cuda' without CUDA falls back to cpu with a warning."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn("device 'cuda' requested but CUDA is not available: running on the CPU")
        return torch.device("cpu")
    return dev


def default_model_path():
    """The embedded model shipped inside the package."""
    return files("kltrace_ros") / "models" / "default.pt"


def load_predictor(model_path=None, device="cpu", quantizer_path=None):
    """A predictor for a kltrace model file (default: the embedded model), a published LRAS pair, or a local
    diffusers folder given as ``svd:DIR`` / ``cosmos:DIR`` (RGB perturb-and-track only)."""
    if is_spec(model_path):
        return load_diffusion(model_path, device)
    path = model_path or default_model_path()
    cfg, state = load_checkpoint(path)
    family = cfg.get("model_class")
    if family in FAMILIES:
        return FAMILIES[family](cfg, state, path, device, quantizer_path)
    if "n_layer" in cfg:
        if not quantizer_path:
            raise CheckpointError(f"{path} is an LRAS predictor: it needs its LPQ quantizer too "
                                  f"(quantizer_path / --quantizer DIR/rgb_quantizer.pt)")
        return LRASPredictor.from_checkpoints(path, quantizer_path, device=device)
    raise CheckpointError(f"{path}: cfg names no known model (model_class={family!r}, "
                          f"config_class={cfg.get('config_class')!r}); known: {sorted(FAMILIES)} or a published LRAS")
