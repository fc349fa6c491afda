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


DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | None = "auto", explain=None) -> torch.device:
    """The torch device for a user's ``device`` setting: ``auto`` (cuda when present, else cpu), ``cpu``, ``cuda``,
    ``cuda:N``. Anything else is refused with the choices (``gpu`` used to crash inside torch at start-up). CUDA
    asked for but absent falls back to the CPU. ``explain(message, fallback)`` is told what was chosen and why
    (without it a fallback is a Python warning)."""
    name = "auto" if name in (None, "") else str(name).strip().lower()
    head, _, index = name.partition(":")
    if head not in ("auto", "cpu", "cuda") or (index and (head != "cuda" or not index.isdigit())):
        raise ValueError(f"device {name!r} is not one of {DEVICES} (e.g. device:=cuda or --device cuda:0)")
    have = torch.cuda.is_available()
    count = torch.cuda.device_count() if have else 0
    if head == "auto":
        dev = torch.device("cuda" if have else "cpu")
        why = (f"device auto: {torch.cuda.get_device_name(0)} found, running on cuda (bf16)" if have else
               "device auto: no CUDA device visible to torch (CPU build or no driver), running on the CPU")
    elif head == "cuda" and not have:
        dev, why = torch.device("cpu"), f"device {name!r} requested but CUDA is not available: running on the CPU"
        if explain is None:
            warnings.warn(why)
    elif head == "cuda" and index and int(index) >= count:
        raise ValueError(f"device {name!r}: only {count} CUDA device(s) are visible (cuda:0 .. cuda:{count - 1})")
    else:
        dev, why = torch.device(name), f"device {name}"
    if explain:
        explain(why, head == "cuda" and not have)
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
