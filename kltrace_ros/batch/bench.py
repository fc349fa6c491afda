"""`kltrace bench bags`: the same folder of recordings through `kltrace bags`, one by one and on a local Ray
instance; frames/s of each, Ray's start-up, and what N workers would do by the numbers."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from kltrace_ros.io.bag import write_image_bag
from kltrace_ros.io.files import write_json
from kltrace_ros.io.images import SKIMAGE_IMAGES, camera_view, skimage_photo
from kltrace_ros.tracking.builder import Options

from .jobs import Settings, discover, run_serial

TOPIC = "/camera/image_raw"


def panning_camera(photo: np.ndarray, frames: int, size: tuple[int, int], speed=(1.5, 0.5)):
    """A camera that pans over ``photo`` at ``speed`` px per frame, frames of ``size`` (w, h)."""
    w, h = size
    scale = max(w / photo.shape[1], h / photo.shape[0]) * 1.3
    big = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    for i in range(frames):
        yield camera_view(big, size, (speed[0] * i, speed[1] * i))


def make_recordings(folder: Path, recordings: int, frames: int, size: tuple[int, int]) -> None:
    """``recordings`` camera bags of real photos (scikit-image's, freely licensed), ``frames`` each."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    photos = [n for n in SKIMAGE_IMAGES if n.endswith(".png")]
    for k in range(recordings):
        photo = skimage_photo(photos[k % len(photos)])
        if photo.ndim == 2 or photo.shape[2] == 1:
            photo = cv2.cvtColor(photo, cv2.COLOR_GRAY2RGB)
        write_image_bag(folder / f"robot{k}", panning_camera(photo, frames, size), TOPIC)


def bench_bags(recordings: int = 4, frames: int = 10, size=(320, 240), points: int = 64, workers: int | None = None,
               out: Path = Path("out/bench_bags")) -> dict:
    """Both modes on the same generated folder (outputs are discarded between them)."""
    import ray  # noqa: PLC0415 - Ray only for this benchmark and --ray

    from .ray_pool import run_ray  # noqa: PLC0415

    src = out / "recordings"
    make_recordings(src, recordings, frames, size)
    jobs = discover(src)
    settings = Settings(TOPIC, Options(num_points=points))
    res = {"recordings": recordings, "frames_per_recording": frames, "size": list(size), "points": points,
           "cpus": torch.get_num_threads()}
    for mode in ("serial", "ray"):
        dst = out / f"out_{mode}"
        shutil.rmtree(dst, ignore_errors=True)
        t0 = time.perf_counter()
        if mode == "serial":
            results, startup = run_serial(jobs, dst, settings)
            n = 1
        else:
            try:
                results, startup, n = run_ray(jobs, dst, settings, "auto", workers)
            finally:
                ray.shutdown()
        wall = time.perf_counter() - t0
        done = [r for r in results if r["status"] == "done"]
        if len(done) != len(jobs):
            raise RuntimeError(f"{mode}: {[r['error'] for r in results if r['status'] != 'done']}")
        n_frames = sum(r["frames"] for r in done)
        res[mode] = {"workers": n, "wall_s": round(wall, 2), "startup_s": round(startup, 2),
                     "frames_per_s": round(n_frames / wall, 3),
                     "frames_per_s_after_startup": round(n_frames / (wall - startup), 3)}
    per_worker = res["ray"]["frames_per_s_after_startup"] / res["ray"]["workers"]
    res["ray_vs_serial"] = round(res["ray"]["frames_per_s"] / res["serial"]["frames_per_s"], 3)
    res["cluster_arithmetic"] = (f"N workers of this kind: about N x {per_worker:.2f} frames/s after a "
                                 f"{res['ray']['startup_s']:.0f} s start-up, while recordings >= N and each worker "
                                 f"has its own cores (GPU workers: measure one, multiply)")
    write_json(out / "bench_bags.json", res)
    return res
