"""The shipped weights: a trained ``model.pt`` with the tracing settings of this code version."""
from __future__ import annotations

from pathlib import Path

from kltrace_ros.models.checkpoint import load_checkpoint, save_checkpoint
from kltrace_ros.models.motion.network import DEFAULT_CFG, TRACING_KEYS, MotionLRAS


def export_model(model_path: Path, dest: Path) -> Path:
    cfg, state = load_checkpoint(model_path)
    cfg.update({k: DEFAULT_CFG[k] for k in TRACING_KEYS})
    model = MotionLRAS(cfg)
    model.load_state_dict(state)
    save_checkpoint(dest, model.cfg, model.state_dict())
    return dest
