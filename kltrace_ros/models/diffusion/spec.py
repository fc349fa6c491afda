"""`svd:DIR` / `cosmos:DIR`: which diffusion model, from which local diffusers folder, with which settings.

A model spec is ``FAMILY:DIR`` with optional settings after ``?``, e.g.
``svd:/models/svd-xt?noise_level=0.6&steps=20&samples=2``. Nothing is ever downloaded: the folder is what
a user fetched on a machine with internet (``FAMILIES[f].public`` names the public repositories) and
copied here. :func:`check_folder` names what is missing and where it goes before any weight is read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class DiffusionSettings:
    """The two-run difference recipe (documented in the README):

    the real frame-2 latents are noised to the sigma of the step ``noise_level`` of the way into the sampler's
    schedule (the fraction of its steps that are run; 1 is pure noise), then denoised twice with the same noise and seed, once conditioned on the clean frame 1
    and once on the traced one; the RGB difference of the two predictions, averaged over ``samples`` noise
    draws, is the map. ``steps``: the sampler's steps for the whole schedule (about ``steps * noise_level``
    are run). ``size``: the square working resolution (px; a multiple of 16). ``batch``: traced variants per
    model call (memory). ``allow_cpu``: run weights over
    1 GB on the CPU anyway (hours per pair)."""
    noise_level: float = 0.5
    steps: int = 20
    samples: int = 2
    seed: int = 0
    size: int = 512
    batch: int = 8
    allow_cpu: bool = False

    def validate(self) -> "DiffusionSettings":
        if not 0.0 < self.noise_level <= 1.0:
            raise ValueError(f"noise_level={self.noise_level}: give a fraction of the schedule in (0, 1]")
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps={self.steps}: give 1-1000 sampler steps")
        if not 1 <= self.samples <= 64:
            raise ValueError(f"samples={self.samples}: give 1-64 noise samples")
        if not 1 <= self.batch <= 1024:
            raise ValueError(f"batch={self.batch}: give 1-1024 variants per model call")
        if self.size < 16 or self.size % 16:
            raise ValueError(f"size={self.size}: give a multiple of 16 px (e.g. 256, 512)")
        return self


@dataclass(frozen=True)
class Family:
    name: str                     # svd | cosmos
    pipeline: str                 # the diffusers pipeline whose components the folder holds
    subfolders: dict              # subfolder -> class it holds
    public: tuple                 # public repositories a user fetches themselves


FAMILIES = {
    "svd": Family("svd", "StableVideoDiffusionPipeline",
                  {"unet": "UNetSpatioTemporalConditionModel", "vae": "AutoencoderKLTemporalDecoder",
                   "image_encoder": "CLIPVisionModelWithProjection", "feature_extractor": "CLIPImageProcessor",
                   "scheduler": "EulerDiscreteScheduler"},
                  ("stabilityai/stable-video-diffusion-img2vid-xt", "stabilityai/stable-video-diffusion-img2vid")),
    "cosmos": Family("cosmos", "Cosmos2VideoToWorldPipeline",
                     {"transformer": "CosmosTransformer3DModel", "vae": "AutoencoderKLWan",
                      "scheduler": "FlowMatchEulerDiscreteScheduler", "text_encoder": "T5EncoderModel",
                      "tokenizer": "T5TokenizerFast"},
                     ("nvidia/Cosmos-Predict2-2B-Video2World", "nvidia/Cosmos-Predict2-14B-Video2World")),
}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")   # single or sharded (.index.json)


def is_spec(model) -> bool:
    return isinstance(model, (str, Path)) and str(model).split(":", 1)[0] in FAMILIES and ":" in str(model)


def parse_spec(spec: str) -> tuple[Family, Path, DiffusionSettings]:
    """``FAMILY:DIR[?key=value&...]`` -> (family, folder, settings)."""
    family, rest = str(spec).split(":", 1)
    path, _, query = rest.partition("?")
    settings = DiffusionSettings()
    known = {f.name: f.type for f in fields(DiffusionSettings)}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key not in known:
            raise ValueError(f"{spec}: unknown setting {key!r}; known: {', '.join(known)}")
        try:
            cast = {"float": float, "int": int, "bool": lambda v: v.lower() in ("1", "true", "yes")}[known[key]]
            settings = replace(settings, **{key: cast(value)})
        except ValueError:
            raise ValueError(f"{spec}: {key}={value!r} is not a {known[key]}") from None
    if not path:
        raise ValueError(f"{spec}: give the folder, e.g. {family}:/models/{family}")
    return FAMILIES[family], Path(path).expanduser(), settings.validate()


def _fetch_hint(family: Family, folder: Path) -> str:
    return (f"on a machine with internet, download one of {', '.join(family.public)} in diffusers format "
            f"(e.g. `huggingface-cli download {family.public[0]} --local-dir {folder}`) and copy the folder here")


def check_folder(family: Family, folder: Path) -> int:
    """Every component the family needs is in ``folder`` (config and safetensors weights); the total weight
    size in bytes. Raises FileNotFoundError naming what to place where."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{family.name} model folder {folder} does not exist: {_fetch_hint(family, folder)}")
    total = 0
    for sub, cls in family.subfolders.items():
        d = folder / sub
        configs = ("scheduler_config.json",) if sub == "scheduler" else \
            ("preprocessor_config.json",) if sub == "feature_extractor" else \
            ("tokenizer_config.json",) if sub == "tokenizer" else ("config.json",)
        if not d.is_dir() or not any((d / c).is_file() for c in configs):
            raise FileNotFoundError(f"{folder} lacks {sub}/ ({cls}, with {configs[0]}): the folder is incomplete; "
                                    f"{_fetch_hint(family, folder)}")
        if sub in ("scheduler", "feature_extractor", "tokenizer"):
            continue
        weights = [p for p in d.iterdir() if p.name.endswith(".safetensors")]
        if not weights:
            pickled = [p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".ckpt")]
            why = (f"holds only {', '.join(pickled)} (pickle files, refused: weights load only from safetensors)"
                   if pickled else "has no .safetensors weights")
            raise FileNotFoundError(f"{d} ({cls}) {why}; {_fetch_hint(family, folder)}")
        index = [p for p in d.iterdir() if p.name.endswith(".safetensors.index.json")]
        for idx in index:
            missing = sorted({f for f in json.loads(idx.read_text()).get("weight_map", {}).values()
                              if not (d / f).is_file()})
            if missing:
                raise FileNotFoundError(f"{d} lacks shards {', '.join(missing[:3])} listed in {idx.name}: "
                                        f"the download is incomplete; {_fetch_hint(family, folder)}")
        total += sum(p.stat().st_size for p in weights)
    return total
