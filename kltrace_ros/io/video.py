"""``kltrace video``: a video file (or image folder) in, an overlay video and a tracks file out."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kltrace_ros.tracking.tracker import track_record

from .drawing import Trails, draw_tracks, heatmap_image
from .files import discard, partial_path, write_json
from .images import read_frames, video_info


class VideoWriter:
    """mp4 writer that opens on the first frame (its size). The file is complete or absent: written as
    ``name.partial.mp4``, renamed by :meth:`close`, deleted by :meth:`abort`."""

    def __init__(self, path: Path | None, fps: float):
        self.path, self.fps, self.writer = path, fps, None
        self.tmp = partial_path(path) if path is not None else None
        if self.tmp is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            discard(self.tmp)

    def write(self, rgb: np.ndarray) -> None:
        if self.tmp is None:
            return
        if self.writer is None:
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          (rgb.shape[1], rgb.shape[0]))
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.release()
        if self.tmp is not None:
            discard(self.tmp)


def track_video(pipeline, frames, out_video: Path | None, out_tracks: Path | None, fps: float = 10.0,
                total: int | None = None, view=None, progress=tqdm) -> dict:
    """Track through ``frames`` with a ``tracking.pipeline.TrackingPipeline``; write an overlay video
    (mp4) and a JSON list of per-frame tracks. ``view``: an optional FoxgloveView (overlay, heatmaps);
    ``progress``: the frame progress bar, a tqdm-like callable (Ray workers pass Ray's)."""
    writer, trails = VideoWriter(out_video, fps), Trails()
    records, seconds, n_frames = [], [], 0
    period_ns = int(1e9 / fps)
    try:
        for i, frame in enumerate(progress(frames, total=total, desc="track", unit="frame")):
            n_frames = i + 1
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
    except BaseException:
        writer.abort()
        raise
    if not records:
        writer.abort()
        raise ValueError("fewer than two frames: nothing to track (a video OpenCV can read, or a folder of images)")
    writer.close()
    if out_tracks is not None:
        write_json(Path(out_tracks), records)
    n_pts = sum(len(r["tracks"]) for r in records)
    total_s = float(np.sum(seconds)) if seconds else 0.0
    return {"frames": n_frames, "pairs": len(records), "tracks": n_pts, "seconds": total_s,
            "tracks_per_s": n_pts / total_s if total_s else 0.0,
            "latency_ms": 1000 * float(np.mean(seconds)) if seconds else 0.0}


def track_file(pipeline, path: Path, out_video: Path | None, out_tracks: Path | None, max_frames: int | None = None,
               max_side: int | None = 640, view=None, progress=tqdm) -> dict:
    """:func:`track_video` on a video file or image folder, at the video's own frame rate (stamps and the
    overlay video; 10 fps when the container does not say)."""
    fps, total = video_info(path)
    total = min(total, max_frames) if total and max_frames else (total or max_frames)
    return track_video(pipeline, read_frames(path, max_frames, max_side), out_video, out_tracks, fps=fps,
                       total=total, view=view, progress=progress)
