"""``kltrace video``: a video file (or image folder) in, an overlay video and a tracks file out."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kltrace_ros.tracking.tracker import track_record

from .drawing import Trails, draw_tracks, heatmap_image


class VideoWriter:
    """mp4 writer that opens on the first frame (its size) and creates the folder."""

    def __init__(self, path: Path | None, fps: float):
        self.path, self.fps, self.writer = path, fps, None

    def write(self, rgb: np.ndarray) -> None:
        if self.path is None:
            return
        if self.writer is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          (rgb.shape[1], rgb.shape[0]))
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def track_video(pipeline, frames, out_video: Path | None, out_tracks: Path | None, fps: float = 10.0,
                total: int | None = None, view=None) -> dict:
    """Track through ``frames`` with a ``tracking.pipeline.TrackingPipeline``; write an overlay video
    (mp4) and a JSON list of per-frame tracks. ``view``: an optional FoxgloveView (overlay, heatmaps)."""
    writer, trails = VideoWriter(out_video, fps), Trails()
    records, seconds = [], []
    period_ns = int(1e9 / fps)
    for i, frame in enumerate(tqdm(frames, total=total, desc="track", unit="frame")):
        res = pipeline.push(frame, i * period_ns, i)
        overlay = frame
        if res is not None:
            seconds.append(res.seconds)
            records.append({"frame": i, "tracks": [track_record(t) for t in res.tracks]})
            overlay = draw_tracks(frame, res.tracks, trails)
            if view is not None:
                view.show("overlay", overlay)
                if res.maps:
                    view.show("heatmap", heatmap_image(frame, res.maps[:4]))
        writer.write(overlay)
    writer.close()
    if out_tracks is not None:
        Path(out_tracks).parent.mkdir(parents=True, exist_ok=True)
        Path(out_tracks).write_text(json.dumps(records))
    n_pts = sum(len(r["tracks"]) for r in records)
    total_s = float(np.sum(seconds)) if seconds else 0.0
    return {"pairs": len(records), "tracks": n_pts, "seconds": total_s,
            "tracks_per_s": n_pts / total_s if total_s else 0.0,
            "latency_ms": 1000 * float(np.mean(seconds)) if seconds else 0.0}
