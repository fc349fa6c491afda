"""A model file is data: its cfg is checked before anything is built, its weights must be finite."""
import json
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch

from kltrace_ros.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from kltrace_ros.models.registry import default_model_path, load_predictor

cv2 = pytest.importorskip("cv2")

BAD_CFG = [({"window": 1024}, "cfg['window'] = 1024 must be an integer in [8, 256]"),
           ({"n_codes": 20_000_000}, "cfg['n_codes'] = 20000000 must be an integer in [2, 65536]"),
           ({"image_size": 20000}, "cfg['image_size'] = 20000 must be an integer in [32, 2048]"),
           ({"cell": 0}, "cfg['cell'] = 0 must be an integer in [1, 16]"),
           ({"tracer_sigma": float("nan")}, "cfg['tracer_sigma'] = nan"),
           ({"window": 256, "cell": 1}, None),                      # each in range, together 17 GiB of buffers
           ({"occlusion_threshold": {"kl": float("inf")}}, "occlusion_threshold")]


def tiny_file(path, cfg_changes=None, state_change=None):
    """A 1-2 KB file that passes the weights-only load: the shipped cfg with changes, and no weights."""
    cfg, state = load_checkpoint(default_model_path())
    cfg.update(cfg_changes or {})
    save_checkpoint(path, cfg, state if state_change else {"x": torch.zeros(1)})
    if state_change:
        cfg2, st = load_checkpoint(path)
        state_change(st)
        save_checkpoint(path, cfg2, st)
    return path


@pytest.mark.parametrize("changes,message", BAD_CFG)
def test_bad_cfg_is_refused_by_name_before_any_allocation(tmp_path, changes, message):
    path = tiny_file(tmp_path / "bad.pt", changes)
    assert path.stat().st_size < 4096
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError) as err:
        load_predictor(path)
    assert str(path) in str(err.value)
    assert (message or "GiB budget") in str(err.value), str(err.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200_000   # KB: nothing big was built


def test_non_finite_weights_are_refused(tmp_path):
    def poison(state):
        state["head.0.weight"][0, 0] = float("nan")

    path = tiny_file(tmp_path / "nan.pt", state_change=poison)
    with pytest.raises(CheckpointError, match="head.0.weight holds non-finite values"):
        load_predictor(path)


def test_cli_names_the_bad_key_in_one_line(tmp_path):
    path = tiny_file(tmp_path / "bad.pt", {"cell": 0})
    img = np.zeros((32, 32, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    (tmp_path / "q.json").write_text(json.dumps([[5, 5]]))
    proc = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "track-pair", str(tmp_path / "a.png"),
                           str(tmp_path / "a.png"), str(tmp_path / "q.json"), str(tmp_path / "o.json"), "--model",
                           str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cfg['cell'] = 0 must be an integer in [1, 16]" in proc.stderr
