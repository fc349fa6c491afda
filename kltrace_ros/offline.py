"""Offline twins of the node: a video file in, an overlay video and a tracks file out."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kltrace_ros.tracking.pipeline import TrackingPipeline
from kltrace_ros.viz import draw_tracks, heatmap_image


def read_frames(path: Path, max_frames: int | None = None, max_side: int | None = None):
    """RGB frames of a video file, or of a folder of images (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        frames = (cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in files)
    else:
        if not path.is_file():
            raise FileNotFoundError(f"video {path} does not exist")
        cap = cv2.VideoCapture(str(path))

        def gen():
            while True:
                ok, f = cap.read()
                if not ok:
                    break
                yield cv2.cvtColor(f, cv2.COLOR_BGR2RGB)
            cap.release()
        frames = gen()
    for i, f in enumerate(frames):
        if max_frames is not None and i >= max_frames:
            break
        if max_side and max(f.shape[:2]) > max_side:
            s = max_side / max(f.shape[:2])
            f = cv2.resize(f, (round(f.shape[1] * s), round(f.shape[0] * s)), interpolation=cv2.INTER_AREA)
        yield f


def track_video(pipeline: TrackingPipeline, frames, out_video: Path | None, out_tracks: Path | None,
                fps: float = 10.0, total: int | None = None, view=None) -> dict:
    """Track through ``frames``; write an overlay video (mp4) and a JSON list of per-frame tracks.

    ``view``: an optional FoxgloveView that shows the overlay and KL heatmaps live."""
    writer = None
    history: dict = {}
    records, seconds, prev = [], [], None
    for i, frame in enumerate(tqdm(frames, total=total, desc="track", unit="frame")):
        if prev is not None:
            res = pipeline.step(prev, frame)
            seconds.append(res.seconds)
            records.append({"frame": i, "tracks": [
                {"id": t.id, "x": t.x, "y": t.y, "vx": t.vx, "vy": t.vy, "visible": t.visible,
                 "confidence": t.confidence, "age": t.age} for t in res.tracks]})
            overlay = draw_tracks(frame, res.tracks, history)
            if view is not None:
                view.show("overlay", overlay)
                if res.maps:
                    view.show("heatmap", heatmap_image(frame, res.maps[:4]))
        else:
            overlay = frame
        if out_video is not None:
            if writer is None:
                Path(out_video).parent.mkdir(parents=True, exist_ok=True)
                writer = cv2.VideoWriter(str(out_video), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (frame.shape[1], frame.shape[0]))
            writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        prev = frame
    if writer is not None:
        writer.release()
    if out_tracks is not None:
        Path(out_tracks).parent.mkdir(parents=True, exist_ok=True)
        Path(out_tracks).write_text(json.dumps(records))
    n_pts = sum(len(r["tracks"]) for r in records)
    total_s = float(np.sum(seconds)) if seconds else 0.0
    return {"pairs": len(records), "tracks": n_pts, "seconds": total_s,
            "tracks_per_s": n_pts / total_s if total_s else 0.0,
            "latency_ms": 1000 * float(np.mean(seconds)) if seconds else 0.0}
