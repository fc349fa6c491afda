"""`kltrace eval-long`: long tracks on sequences built here, with exact ground truth and visibility.

Two kinds of scene. ``3d`` (``scene3d``): textured boxes and walls at several depths under a camera that strafes,
walks forward or goes around, so near and far points move differently, surfaces turn and grow, and nearer surfaces
hide farther ones. ``planar`` (below): a plane. A planar sequence is a freely licensed photo (scikit-image's data folder) seen by a virtual camera moving on a
smooth path (pan, roll, zoom and a little perspective: one homography per frame), with a textured disc cut
from another photo crossing the view on its own path. A query point of frame 0 is a point of the photo, so
its position in every frame is exact (the frame's homography), and it is visible when it is in view and not
under the disc. Tracks are scored TAP-Vid "first" style (queried on frame 0, every later frame scored):
delta_avg, AJ, OA in the 256-normalised frame, the median error at frames 5, 10, 20 and the last, how many
of the original ids survive, and the share of reported-visible points more than 8 px off; chained OpenCV LK
and chained DIS run beside. Deterministic per seed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kltrace_ros.io.images import SKIMAGE_IMAGES
from kltrace_ros.tracking.depth import CameraModel, lift_tracks
from kltrace_ros.tracking.pipeline import TrackingPipeline

from .baselines import BASELINES
from .metrics import tapvid_metrics
from .scene3d import render_sequence
from .suite import apply_homography, photo_rgb

SIZES = ((320, 240), (256, 256), (384, 216))      # (w, h)
REPORT_FRAMES = (5, 10, 20)                        # median error at these frames, and at the last one


SCENES = ("planar", "3d")
SIZES_3D = ((320, 240), (384, 216), (640, 480))


@dataclass
class Sequence:
    name: str
    frames: np.ndarray       # (T,H,W,3) uint8
    queries: np.ndarray      # (N,2) px of frame 0
    tracks: np.ndarray       # (T,N,2) ground-truth positions
    visible: np.ndarray      # (T,N) bool: in view and not hidden (under the disc; behind a nearer surface)
    depth: np.ndarray | None = None   # 3D scenes: (T,H,W) float32 z (m) of the nearest surface per pixel
    K: np.ndarray | None = None       # 3D scenes: (3,3) intrinsics
    poses: np.ndarray | None = None   # 3D scenes: (T,4,4) camera-to-world (optical frame: x right, y down, z forward)
    points: np.ndarray | None = None  # 3D scenes: (N,3) each query's point in the world (m)


def make_sequence(seed: int, n_frames: int = 48, size: tuple[int, int] | None = None, n_queries: int = 64,
                  speed_256: float = 4.0, scene: str = "planar") -> Sequence:
    """One sequence. ``planar``: the camera pans out and back over a photo (a sine over the sequence, about
    ``speed_256`` px per frame at 256 on average, so most points stay in view) with a wobble, a slow roll and zoom,
    and a little tilt. ``3d``: a camera moving through textured boxes and walls at several depths (``scene3d``:
    sideways, forward or around, by seed), with depth and intrinsics."""
    if scene == "3d":
        d = render_sequence(seed, n_frames, size or SIZES_3D[seed % len(SIZES_3D)], n_queries)
        return Sequence(d["name"], d["frames"], d["queries"], d["tracks"], d["visible"], d["depth"], d["K"],
                        d["poses"], d["points"])
    if scene != "planar":
        raise ValueError(f"scene must be one of {SCENES}, got {scene!r}")
    rng = np.random.default_rng(seed)
    w, h = size or SIZES[seed % len(SIZES)]
    photos = [n for n in SKIMAGE_IMAGES if n not in ("page.png", "text.png", "cell.png", "horse.png")]
    bg, fg = rng.choice(len(photos), 2, replace=False)
    photo = photo_rgb(photos[bg])
    # the photo scaled so that the camera's whole path stays on it
    span = speed_256 * w / 256 * n_frames / np.pi
    s = max((w + 2 * span) / photo.shape[1], (h + span) / photo.shape[0], 1.0) * 1.15
    canvas = cv2.resize(photo, (int(photo.shape[1] * s), int(photo.shape[0] * s)), interpolation=cv2.INTER_CUBIC)
    ch, cw = canvas.shape[:2]
    direction = rng.uniform(0, 2 * np.pi)
    v = speed_256 * w / 256 * np.array([np.cos(direction), 0.5 * np.sin(direction)])
    wobble, period = rng.uniform(0.5, 1.5) * w / 256, rng.uniform(20, 40)
    roll, zoom = np.deg2rad(rng.uniform(2, 6)), rng.uniform(0.04, 0.1)
    tilt = rng.uniform(-1, 1, 2) * 1e-4 * 256 / max(w, h)
    start = np.array([cw / 2, ch / 2])
    mats = []
    for t in range(n_frames):
        phase = 2 * np.pi * t / period
        sweep = n_frames / np.pi * np.sin(np.pi * t / n_frames)            # out and back; mean speed |v|
        centre = start + v * sweep + wobble * np.array([np.sin(phase), np.cos(1.3 * phase)])
        a, z = roll * np.sin(phase / 2), 1 + zoom * np.sin(phase / 3)
        m = np.eye(3)
        m[:2, :2] = z * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        m[:2, 2] = np.array([w / 2, h / 2]) - m[:2, :2] @ centre
        m[2, :2] = tilt * np.sin(phase / 2)
        m[2, 2] = 1 - m[2, :2] @ centre                                   # canvas -> frame
        mats.append(m)
    # the occluder crosses the view from one side to the other, on its own straight path
    r = rng.uniform(0.14, 0.2) * min(w, h)
    y0, y1 = rng.uniform(0.3, 0.7, 2) * h
    side = rng.choice([-1, 1])
    centres = np.stack([np.linspace(w / 2 - side * (w / 2 + r), w / 2 + side * (w / 2 + r), n_frames),
                        np.linspace(y0, y1, n_frames)], 1)
    tex = cv2.resize(photo_rgb(photos[fg]), (int(2 * r) + 2, int(2 * r) + 2), interpolation=cv2.INTER_AREA)
    ys, xs = np.mgrid[0:h, 0:w]
    frames = np.zeros((n_frames, h, w, 3), np.uint8)
    for t, (m, c) in enumerate(zip(mats, centres)):
        f = cv2.warpPerspective(canvas, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        layer = cv2.warpAffine(tex, np.float64([[1, 0, c[0] - r], [0, 1, c[1] - r]]), (w, h),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        disc = (xs - c[0]) ** 2 + (ys - c[1]) ** 2 <= r * r
        f[disc] = layer[disc]
        frames[t] = f
    margin = 0.08 * min(w, h)
    q = rng.uniform([margin, margin], [w - margin, h - margin], (4 * n_queries, 2))
    q = q[np.linalg.norm(q - centres[0], axis=1) > r + 4][:n_queries]
    on_canvas = apply_homography(np.linalg.inv(mats[0]), q)
    tracks = np.stack([apply_homography(m, on_canvas) for m in mats])               # T,N,2
    inside = ((tracks[..., 0] >= 0) & (tracks[..., 0] <= w - 1) & (tracks[..., 1] >= 0) & (tracks[..., 1] <= h - 1))
    free = np.linalg.norm(tracks - centres[:, None], axis=2) > r
    name = f"long_{seed:03d}_{photos[bg].split('.')[0]}_{w}x{h}"
    return Sequence(name, frames, q, tracks, inside & free)


# --------------------------------------------------------------------------- trackers under test
def track_chained_baseline(seq: Sequence, name: str) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV LK or DIS from each frame to the next, each point from where it was last found; a point LK loses
    (or that leaves the view) stays lost, at its last position."""
    flow = BASELINES[name]
    t_n, n = seq.visible.shape
    pos, vis = np.zeros((t_n, n, 2)), np.zeros((t_n, n), bool)
    pos[0], vis[0] = seq.queries, True
    h, w = seq.frames.shape[1:3]
    for t in range(1, t_n):
        p, v = flow(seq.frames[t - 1], seq.frames[t], pos[t - 1])
        v = v & vis[t - 1] & (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)
        pos[t] = np.where(v[:, None], p, pos[t - 1])
        vis[t] = v
    return pos, vis


def track_pipeline(seq: Sequence, pipeline: TrackingPipeline) -> tuple[np.ndarray, np.ndarray]:
    """The product's tracker (a fresh ``pipeline`` following the queries as external points, no re-seeding):
    positions and visibility per frame; a dropped track is reported invisible at its last position."""
    t_n, n = seq.visible.shape
    pipeline.reset()
    pipeline.tracker.next_id = 0
    pipeline.tracker.set_external_queries(seq.queries, seq.frames.shape[1:3])
    pos, vis = np.zeros((t_n, n, 2)), np.zeros((t_n, n), bool)
    pos[0], vis[0] = seq.queries, True
    for t in range(t_n):
        res = pipeline.push(seq.frames[t], t * 100_000_000, t)
        if t == 0:
            continue
        pos[t], vis[t] = pos[t - 1], False
        for tr in (res.tracks if res is not None else []):
            if tr.id < n and tr.born_frame == 0:       # the original points only
                pos[t, tr.id], vis[t, tr.id] = (tr.x, tr.y), tr.visible
        if res is not None:
            pipeline.tracker.external = np.zeros((0, 2))   # never re-seed the queries
    return pos, vis


def score(seq: Sequence, pos: np.ndarray, vis: np.ndarray, alive: np.ndarray | None = None) -> dict:
    """TAP-Vid "first" metrics over frames 1..T-1, median errors (px at 256) at REPORT_FRAMES and the last,
    the share of reported-visible points more than 8 px off, occlusion recall, and id survival."""
    h, w = seq.frames.shape[1:3]
    gt, gv = seq.tracks[1:], seq.visible[1:]
    m = tapvid_metrics(pos[1:].reshape(-1, 2), vis[1:].ravel(), gt.reshape(-1, 2), gv.ravel(), (h, w))
    err = np.linalg.norm((pos - seq.tracks) * [256 / w, 256 / h], axis=2)         # T,N
    med = [float(np.median(err[t][seq.visible[t]])) if seq.visible[t].any() else float("nan")
           for t in range(len(err))]
    at = {f"median_error_f{t}": med[t] for t in REPORT_FRAMES if t < len(med)}
    at["median_error_last"] = med[-1]
    shown = vis[1:] & gv
    occluded = ~seq.visible[1:] & inside_view(seq)[1:]
    return {**{k: m[k] for k in ("delta_avg", "AJ", "OA")}, **at,
            # of the points reported visible that are visible, the share more than 8 px off
            "visible_over_8px": float((err[1:][shown] > 8).mean()) if shown.any() else 0.0,
            "occluded_flagged": float((~vis[1:][occluded]).mean()) if occluded.any() else float("nan"),
            "survival": float(alive.mean()) if alive is not None else float(vis[-1].mean()),
            **(score_3d(seq, pos, vis) if seq.depth is not None else {}),
            "error_by_frame": med}


FRAME_SECONDS = 0.1   # the sequences' frame period (track_pipeline stamps them at 10 Hz)


def score_3d(seq: Sequence, pos: np.ndarray, vis: np.ndarray) -> dict:
    """What an RGB-D robot would get from these tracks (``tracking.depth``, the node's ``use_depth``): each track
    reported visible (and visible) lifted with the frame's depth, against the query's true point in the camera
    frame; its velocity between consecutive frames against the true one. Medians over frames 1..T-1: the 3D
    error in m and relative to the true depth, the velocity error relative to the true speed, and the share of
    those tracks that got a 3D position (the rest on a depth edge)."""
    h, w = seq.frames.shape[1:3]
    camera = CameraModel(seq.K, np.zeros(0), (w, h))
    world = np.concatenate([seq.points, np.ones((len(seq.points), 1))], 1)
    truth = np.stack([(np.linalg.inv(p) @ world.T).T[:, :3] for p in seq.poses])       # T,N,3 camera frame
    err, rel, vel, placed, n = [], [], [], 0, 0
    for t in range(1, len(pos)):
        shown = vis[t] & seq.visible[t]
        older = np.where((vis[t - 1] & seq.visible[t - 1])[:, None], pos[t - 1], np.nan)
        lift = lift_tracks(camera, seq.depth[t], np.where(shown[:, None], pos[t], np.nan), seq.depth[t - 1], older,
                           FRAME_SECONDS)
        n += shown.sum()
        ok = lift.has_position
        placed += ok.sum()
        d = np.linalg.norm(lift.position[ok] - truth[t, ok], axis=1)
        err += list(d)
        rel += list(d / truth[t, ok, 2])
        v = lift.has_velocity
        true_v = (truth[t, v] - truth[t - 1, v]) / FRAME_SECONDS
        speed = np.linalg.norm(true_v, axis=1)
        moving = speed > 1e-3
        vel += list(np.linalg.norm(lift.velocity[v] - true_v, axis=1)[moving] / speed[moving])
    nan = float("nan")
    return {"error_3d_m": float(np.median(err)) if err else nan,
            "error_3d_rel": float(np.median(rel)) if rel else nan,
            "velocity_error_rel": float(np.median(vel)) if vel else nan,
            "placed_3d": float(placed / n) if n else nan}


def inside_view(seq: Sequence) -> np.ndarray:
    h, w = seq.frames.shape[1:3]
    t = seq.tracks
    return (t[..., 0] >= 0) & (t[..., 0] <= w - 1) & (t[..., 1] >= 0) & (t[..., 1] <= h - 1)


def evaluate_long(sequences: int = 3, n_frames: int = 48, methods=("lk", "dis"), pipelines: dict | None = None,
                  seed: int = 0, out: Path | None = None, scene: str = "planar") -> dict:
    """Every method on ``sequences`` generated sequences of ``scene`` (planar | 3d); per method the mean of each
    metric over sequences (and per sequence). ``pipelines`` (name -> TrackingPipeline) run first, then the
    baselines ``methods``."""
    pipelines = pipelines or {}
    results = {"scene": scene, "sequences": [], "methods": {m: [] for m in [*pipelines, *methods]}}
    for k in tqdm(range(sequences), desc=f"eval-long {scene}", unit="seq"):
        seq = make_sequence(seed + k, n_frames, scene=scene)
        results["sequences"].append(seq.name)
        for m, pipe in pipelines.items():
            pos, vis = track_pipeline(seq, pipe)
            alive = np.array([any(t.id == i for t in pipe.tracker.tracks) for i in range(len(seq.queries))])
            results["methods"][m].append(score(seq, pos, vis, alive))
        for m in methods:
            results["methods"][m].append(score(seq, *track_chained_baseline(seq, m)))
    results["overall"] = {m: {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "error_by_frame"}
                          for m, rows in results["methods"].items()}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        plot_error_by_frame(results, out / "error_by_frame.png")
    return results


def format_long(results: dict) -> str:
    keys = ["delta_avg", "AJ", "OA"] + [f"median_error_f{t}" for t in REPORT_FRAMES] + [
        "median_error_last", "visible_over_8px", "occluded_flagged", "survival", "error_3d_m", "error_3d_rel",
        "velocity_error_rel", "placed_3d"]
    rows = [r for r in keys if any(r in o for o in results["overall"].values())]
    lines = ["| method | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for m, o in results["overall"].items():
        lines.append(f"| {m} | " + " | ".join(f"{o.get(k, float('nan')):.3g}" for k in rows) + " |")
    return "\n".join(lines)


def plot_error_by_frame(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # optional heavy dependency: only the plot needs it

    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for m, rows in results["methods"].items():
        curve = np.nanmean(np.array([r["error_by_frame"] for r in rows], float), axis=0)
        ax.plot(curve, label=m)
    ax.set_xlabel("frame")
    ax.set_ylabel("median error of visible points (px at 256)")
    ax.set_yscale("symlog", linthresh=1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
