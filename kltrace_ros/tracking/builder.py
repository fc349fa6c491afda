"""One way from user options (CLI flags, node parameters) to an engine and a tracking pipeline."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from kltrace_ros.models.registry import load_predictor, resolve_device
from kltrace_ros.tracing.engine import Engine, TraceConfig

from .pipeline import Reset, TrackingPipeline
from .tracker import TrackerConfig


# traced pairs an occluded track is kept by default: chained tracing searches for it from a guess of where it is (a
# long wait mostly keeps wrong tracks), anchored tracing from its anchor, which finds it when the occluder has gone
# (eval-long: covered tracks back on their point; 40 against 12 pairs: OA 80.7 -> 83.4, original ids alive 83% -> 99%)
OCCLUDED_FRAMES = {"chained": 12, "anchored": 40}


@dataclass(frozen=True)
class Options:
    model: str | Path | None = None          # model file; None = the embedded default model
    quantizer: str | Path | None = None      # LPQ file, with a published LRAS model
    device: str = "cpu"                      # cpu | cuda | auto
    method: str | None = None                # kl | rgb; None: the model's (kl for LRAS, rgb for diffusion models)
    masks: int | None = None                 # reveal masks per scale (None: the model's default)
    scales: int | None = None                # zoom scales (None: the model's default)
    occlusion_threshold: float | None = None  # None or negative: the model's calibration
    fb_threshold: float = 12.0               # forward-backward visibility check (working px; 0: off)
    min_appearance: float = 0.7              # the found point must still look like the query (NCC; 0: off)
    refine: str = "lk"                       # lk: sub-pixel polish of each answer (tracing.polish) | none
    keep_maps: bool = False                  # keep KL maps (heatmaps)
    num_points: int = 64
    keypoints: str = "grid"                  # grid | features | topic
    max_occluded_frames: int | None = None   # None or negative: the mode's default (OCCLUDED_FRAMES)
    max_out_of_view_frames: int = 40         # anchored tracking: pairs a track that left the view is kept (chained: 0)
    frame_gap: int = 1
    motion_prior: bool = False               # start each search at position + velocity x frames (see pipeline)
    tracking: str = "anchored"               # anchored | chained (see tracking.pipeline and README, Long tracks)

    def with_(self, **changes) -> "Options":
        return replace(self, **changes)


def method_for(opts: Options, predictor) -> str:
    """The tracing method: the one asked for, or the model's own; an error names what the model offers."""
    offered = getattr(predictor, "methods", ("kl", "rgb"))
    method = opts.method or getattr(predictor, "default_method", "kl")
    if method not in offered:
        raise ValueError(f"{predictor.name} offers method {' or '.join(offered)}, not {method!r}: "
                         f"use --method {offered[0]} (or leave the method unset)")
    return method


def trace_config(opts: Options, predictor) -> TraceConfig:
    """Tracing settings; the occlusion threshold defaults to the model file's calibration for the method."""
    method = method_for(opts, predictor)
    thr = opts.occlusion_threshold
    if thr is None or thr < 0:
        thr = getattr(predictor, "occlusion_threshold", {}).get(method, 0.0)
    return TraceConfig(method=method, masks=opts.masks, scales=opts.scales, occlusion_threshold=thr,
                       fb_threshold=opts.fb_threshold, min_appearance=opts.min_appearance, keep_maps=opts.keep_maps,
                       refine=opts.refine)


def tracker_config(opts: Options) -> TrackerConfig:
    # only anchored tracing can find a track that left the view again (from its anchor): chained drops it at once
    occluded = opts.max_occluded_frames
    if occluded is None or occluded < 0:
        occluded = OCCLUDED_FRAMES[opts.tracking]
    cfg = TrackerConfig(num_points=opts.num_points, source=opts.keypoints, max_occluded_frames=occluded,
                        max_out_of_view_frames=opts.max_out_of_view_frames if opts.tracking == "anchored" else 0)
    cfg.validate()
    return cfg


def load_engine(opts: Options) -> Engine:
    """Load the model on the chosen device and set up the engine with ``opts``' tracing settings."""
    pred = load_predictor(opts.model, resolve_device(opts.device), opts.quantizer)
    return Engine(pred, trace_config(opts, pred))


def build_pipeline(opts: Options, engine: Engine | None = None, on_reset: Callable[[Reset], None] | None = None,
                   cancel=None) -> TrackingPipeline:
    """A pipeline for one camera; ``engine`` (shared by several cameras) is loaded when not given."""
    engine = engine or load_engine(opts)
    return TrackingPipeline(engine, tracker_config(opts), trace_config(opts, engine.p), opts.frame_gap, on_reset,
                            cancel, opts.motion_prior, opts.tracking)
