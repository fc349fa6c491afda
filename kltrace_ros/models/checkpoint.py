"""One checkpoint loader for the published LRAS/LPQ files and for ours.

Layout (both): a ``torch.save`` dict with ``cfg`` (a plain dict of sizes, with
``config_class``/``model_class`` naming the model) and the state dict under ``model`` or
``weights``. Published files may prefix keys with ``_orig_mod.`` (torch.compile) and may
carry a pickled ``args`` object. We always load with ``weights_only=True``: the
``args`` object is stubbed by a safe allow-list entry, never unpickled as code.
"""
from __future__ import annotations

import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Limit:
    """The sane range of one cfg value (inclusive)."""
    lo: float
    hi: float
    integer: bool = True


def check_cfg(cfg: dict, limits: dict, what: str, path=None) -> None:
    """Every value of ``cfg`` named in ``limits`` is a finite number in its range, before anything is built.

    A file's cfg is data, not trusted code: a 1 KB file must not make us allocate gigabytes."""
    where = f"{path}: " if path else ""
    for key, lim in limits.items():
        if key not in cfg:
            continue
        v = cfg[key]
        kind = "an integer" if lim.integer else "a number"
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (not lim.integer or float(v).is_integer()) and lim.lo <= v <= lim.hi
        if not ok:
            raise CheckpointError(f"{where}cfg['{key}'] = {v!r} must be {kind} in [{lim.lo:g}, {lim.hi:g}]: "
                                  f"not a usable {what} (a damaged or foreign file?)")


def check_budget(nbytes: float, budget: float, what: str, path=None) -> None:
    """Refuse a cfg whose sizes imply more memory than ``budget`` bytes."""
    if nbytes > budget:
        where = f"{path}: " if path else ""
        raise CheckpointError(f"{where}the cfg implies {nbytes / 2**30:.1f} GiB for the {what}, more than its "
                              f"{budget / 2**30:.1f} GiB budget: a damaged or foreign file?")


class _ArgsPlaceholder:
    """Stands in for the training ``args`` namespace some published files carry.

    torch's weights-only unpickler accepts classes on its allow-list only; we register this
    placeholder under the names the file references so loading never executes file code.
    """

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.__dict__["state"] = state


_ALLOWED_GLOBALS = {
    "argparse.Namespace",
    "__main__.Args",
    "__main__.TrainingArgs",
}


def _safe_globals_for(path: Path) -> list:
    """Placeholders for the non-tensor globals a checkpoint references (only the allow-listed ones)."""
    placeholders = []
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint; torch.load reports it below
        return placeholders
    for name in unsafe:
        if name in _ALLOWED_GLOBALS:
            placeholders.append((_ArgsPlaceholder, name))
    return placeholders


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[dict, dict]:
    """Read ``(cfg, state_dict)`` from a checkpoint file, weights-only.

    The state dict has the ``_orig_mod.`` prefix removed. Tensors are memory-mapped
    (``mmap=True``) so that a large file is not read into memory twice.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path "
                              f"(run `kltrace fetch-lras --dest DIR` for the published files)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the download or copy failed; fetch it again")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":   # not torch.save's (zip) format: nothing is unpickled
        kind = ("a legacy torch.save (_use_new_zipfile_serialization=False) or plain pickle file" if head[:1] == b"\x80"
                else "not a torch checkpoint at all")
        raise CheckpointError(f"checkpoint {path} is {kind}: not a weights-only checkpoint, refused (nothing in it was "
                              f"executed). Re-save it with torch.save (the default zip format) as "
                              f"{{'cfg': dict, 'model': state_dict}}")
    try:
        with torch.serialization.safe_globals(_safe_globals_for(path)):
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} holds objects that are not allowed in a weights-only load ({err}). "
            f"kltrace never executes code from a checkpoint: re-save it as a plain dict "
            f"{{'cfg': dict, 'model': state_dict}} with torch.save") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({err}); fetch or copy it again") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict with "
                              f"'cfg' and 'model' (or 'weights')")
    cfg = obj.get("cfg")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"checkpoint {path} has no 'cfg' dict (keys: {sorted(obj)}); "
                              f"it is not an LRAS/LPQ/kltrace checkpoint")
    state = obj.get("model", obj.get("weights"))
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} has no state dict under 'model' or 'weights' (keys: {sorted(obj)})")
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    return dict(cfg), state


def save_checkpoint(path: str | os.PathLike, cfg: dict, state_dict: dict, **extra) -> None:
    """Write ``{'cfg': cfg, 'model': state_dict, **extra}`` atomically (write then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"cfg": dict(cfg), "model": state_dict, **extra}, tmp)
    os.replace(tmp, path)


def load_state_strict(module: torch.nn.Module, state: dict, path: str | os.PathLike,
                      dtype: torch.dtype | None = None) -> None:
    """Copy ``state`` into ``module`` (possibly built on the meta device), checking every key and shape.

    Missing, unexpected or mis-shaped keys and non-finite weights raise a CheckpointError that names the
    file and the key.
    Floating tensors are cast to ``dtype`` on the way in, so only one copy exists at a time.
    """
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model its cfg describes: "
                              f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for k, ref in expected.items():
        if tuple(state[k].shape) != tuple(ref.shape):
            raise CheckpointError(f"checkpoint {path}: key {k} has shape {tuple(state[k].shape)}, "
                                  f"the cfg implies {tuple(ref.shape)}; the file and its cfg disagree")
    fixed = {}
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"checkpoint {path}: key {k} holds non-finite values (NaN or inf): the weights "
                                  f"are damaged (a diverged training run?); use an earlier checkpoint or retrain")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        fixed[k] = v
    module.load_state_dict(fixed, strict=True, assign=True)
