"""The published LRAS checkpoints: where a user downloads them (we never do), and a check of placed files."""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from .network import LRAS
from .tokenizer import LPQ, arch_from_state

BASE_URL = "https://storage.googleapis.com/lras_3d/lras_3d/models/checkpoints"
PUBLISHED = {
    "rgb_predictor.pt": ("rgb_predictor/rgb_predictor.pt", "LRAS 7B RGB predictor (about 14 GB in bf16)"),
    "rgb_quantizer.pt": ("rgb_quantizer/rgb_quantizer.pt", "LPQ RGB quantizer"),
}


def fetch_lras(dest: Path) -> int:
    """Print what to download and where from; verify files already placed in ``dest``."""
    dest = Path(dest)
    print("kltrace never downloads at run time. Download these files yourself (research use; the")
    print("checkpoints carry no stated licence) and place them in", dest)
    for name, (rel, what) in PUBLISHED.items():
        print(f"  {what}:\n    {BASE_URL}/{rel}\n    -> {dest / name}")
    status = 0
    for name in PUBLISHED:
        path = dest / name
        if not path.exists():
            print(f"[missing] {path}")
            status = 1
            continue
        try:
            cfg, state = load_checkpoint(path)
            gb = path.stat().st_size / 2**30
            if "quantizer" in name:
                arch = arch_from_state(state)
                with torch.device("meta"):
                    LPQ(arch, cfg)
                print(f"[ok] {path}: {gb:.2f} GB, LPQ with {arch['bits']}-bit codes, {len(state)} tensors")
            else:
                with torch.device("meta"):
                    model = LRAS(cfg)
                expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
                bad = [k for k in expected if k not in state or tuple(state[k].shape) != expected[k]]
                if bad or len(state) != len(expected):
                    raise CheckpointError(f"{path}: {len(bad)} keys missing or mis-shaped (first: {bad[:3]})")
                print(f"[ok] {path}: {gb:.2f} GB, {cfg['n_layer']} layers x {cfg['n_embd']}, {cfg['n_head']} heads, "
                      f"vocab {cfg['vocab_size']}, block {cfg['block_size']}")
        except (CheckpointError, ValueError) as err:
            print(f"[bad] {err}")
            status = 1
    if status == 0:
        print(f"use: kltrace track-pair A.png B.png q.json out.json --model {dest / 'rgb_predictor.pt'} "
              f"--quantizer {dest / 'rgb_quantizer.pt'} --device cuda")
    return status
