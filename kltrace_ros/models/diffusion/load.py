"""From ``svd:DIR`` / ``cosmos:DIR`` to a predictor: the folder is checked first (named errors), then the
family's module (diffusers, transformers) is imported and the components are loaded from safetensors."""
from __future__ import annotations

from kltrace_ros.models.checkpoint import CheckpointError

from .spec import check_folder, is_spec, parse_spec

__all__ = ["is_spec", "load_diffusion"]


def load_diffusion(spec, device):
    family, folder, settings = parse_spec(str(spec))
    weight_bytes = check_folder(family, folder)
    if family.name == "svd":
        from .svd import SVDPredictor as cls  # diffusers: only when an SVD model is asked for
    else:
        from .cosmos import CosmosPredictor as cls  # diffusers: only when a Cosmos model is asked for
    try:
        return cls(folder, settings, device, weight_bytes)
    except (OSError, KeyError, TypeError, RuntimeError) as err:   # a config or weights that do not fit the class
        raise CheckpointError(f"{folder} does not load as {family.pipeline} components "
                              f"({', '.join(family.subfolders)}): {type(err).__name__}: {str(err)[:300]}") from err
