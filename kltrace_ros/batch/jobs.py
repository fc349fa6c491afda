"""`kltrace bags`: every recording under a folder through the node's job, one output folder per recording.

A *job* is one recording (a rosbag2 folder, a bare ``.mcap`` file or a video file). Its outputs live in
``OUT_DIR/<name>/`` and are complete or absent: the folder is written inside ``<name>.partial/`` and moved
when the job succeeds, so a rerun skips complete folders and redoes interrupted ones. :func:`run_job` is
the one function that does a job, whether the caller runs jobs one by one here (:func:`run_serial`) or
on Ray workers (``batch.ray_pool``); it runs the same code as ``kltrace bag`` and ``kltrace video``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from kltrace_ros.io.bag import process_bag
from kltrace_ros.io.files import complete_or_absent, write_json
from kltrace_ros.io.video import track_file
from kltrace_ros.tracking.builder import Options, build_pipeline, load_engine

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
RESULT = "result.json"        # a job's own record inside its output folder (read back when it is skipped)


@dataclass(frozen=True)
class Job:
    src: Path          # bag folder, .mcap file or video file
    kind: str          # "bag" | "video" | "unsupported"
    name: str          # relative name; the output folder is OUT_DIR/name

    def out(self, out_dir: Path) -> Path:
        return Path(out_dir) / self.name


@dataclass(frozen=True)
class Settings:
    """What every job of one ``kltrace bags`` run shares (sent to each Ray worker once)."""
    topic: str                 # image topic in the bags
    options: Options           # engine and tracker options (the same as `kltrace bag`)
    overlay: bool = True       # write overlay images (bags) / an overlay video (videos)
    max_side: int = 640        # videos: frames downscaled to this longest side, as `kltrace video`


def discover(in_dir: Path, out_dir: Path | None = None) -> list[Job]:
    """Every recording under ``in_dir``, sorted by path: folders holding a ``metadata.yaml`` (rosbag2, mcap or
    sqlite3; not searched further), bare ``.mcap`` files and videos. A ``.db3`` without its folder's
    metadata becomes an ``unsupported`` job, so that it is reported rather than silently left out.
    ``out_dir`` (when inside ``in_dir``) and symlinked folders are not searched."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"{in_dir} is not a folder: give the folder that holds the bags and videos")
    skip = Path(out_dir).resolve() if out_dir is not None else None
    jobs: list[Job] = []

    def walk(folder: Path) -> None:
        for p in sorted(folder.iterdir()):
            rel = p.relative_to(in_dir)
            if p.is_dir():
                if (p / "metadata.yaml").is_file():
                    jobs.append(Job(p, "bag", str(rel)))
                elif not (p.is_symlink() or p.name.endswith(".partial") or p.resolve() == skip):
                    walk(p)
            elif p.suffix.lower() == ".mcap":
                jobs.append(Job(p, "bag", _file_name(rel)))
            elif p.suffix.lower() in VIDEO_SUFFIXES:
                jobs.append(Job(p, "video", _file_name(rel)))
            elif p.suffix.lower() == ".db3":
                jobs.append(Job(p, "unsupported", _file_name(rel)))

    walk(in_dir)
    names: dict[str, Path] = {}
    for job in jobs:
        if job.name in names:
            raise ValueError(f"{names[job.name]} and {job.src} would both write {job.name}/: rename one of them")
        names[job.name] = job.src
    return jobs


def _file_name(rel: Path) -> str:
    """``day1/run.mcap`` -> ``day1/run_mcap``: beside ``day1/run.mp4`` and never read back as a bag."""
    return str(rel.with_name(rel.name.replace(".", "_")))


def settings_record(settings: Settings) -> dict:
    """What a finished output was made with (a rerun with other settings does not take it as done)."""
    o = settings.options
    return {"topic": settings.topic, "model": str(o.model) if o.model else "embedded", "method": o.method,
            "points": o.num_points, "keypoints": o.keypoints, "tracking": o.tracking, "masks": o.masks,
            "scales": o.scales,
            "fb_threshold": o.fb_threshold, "overlay": settings.overlay, "max_side": settings.max_side}


def new_record(job: Job, status: str = "done", error: str = "") -> dict:
    """A job's line in the summary."""
    return {"name": job.name, "src": str(job.src), "kind": job.kind, "frames": 0, "pairs": 0, "tracks": 0,
            "bad_frames": 0, "seconds": 0.0, "status": status, "error": error}


def run_job(engine, job: Job, out_dir: Path, settings: Settings, progress=tqdm) -> dict:
    """Do one job with a loaded ``engine`` (shared by the jobs of one worker); never raises for a bad
    recording: the error is the result's ``error`` and its status is ``failed``."""
    out = job.out(out_dir)
    record = {**new_record(job), "settings": settings_record(settings)}
    t0 = time.perf_counter()
    try:
        if (out / RESULT).is_file():
            return _finished(out, record)
        if out.exists():   # never delete what this command did not write
            raise FileExistsError(f"{out} exists and is not a finished kltrace output: move it away")
        if job.kind == "unsupported":
            raise ValueError(f"{job.src.name}: a sqlite3 bag is read from its folder with metadata.yaml; "
                             "keep the .db3 inside its bag folder")
        with complete_or_absent(out, folder=True) as tmp:
            tmp.mkdir()
            stats = _track(engine, job, tmp, settings, progress)
            record.update({k: stats[k] for k in ("frames", "pairs", "tracks")}, bad_frames=stats.get("errors", 0),
                          seconds=round(time.perf_counter() - t0, 3))
            write_json(tmp / RESULT, record)
    except Exception as err:  # noqa: BLE001 - one bad recording is reported and must not stop the others
        record.update(status="failed", error=f"{type(err).__name__}: {err}", seconds=round(time.perf_counter() - t0, 3))
    return record


def _finished(out: Path, record: dict) -> dict:
    """The record of a finished output, marked skipped; an error if it was made with other settings."""
    try:
        done = json.loads((out / RESULT).read_text())
        before = {k: done[k] for k in record}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{out / RESULT} is damaged ({type(err).__name__}): delete {out} to redo it") from None
    if before["settings"] != record["settings"]:
        changed = {k: (v, record["settings"].get(k)) for k, v in before["settings"].items()
                   if record["settings"].get(k) != v}
        raise ValueError(f"{out} was made with other settings {changed} (before, now): delete it or choose "
                         f"another --out")
    return {**before, "status": "skipped"}


def _track(engine, job: Job, tmp: Path, settings: Settings, progress) -> dict:
    pipeline = build_pipeline(settings.options, engine, on_reset=lambda reason: print(f"{job.name}: {reason}"))
    if job.kind == "bag":
        return process_bag(job.src, settings.topic, tmp / "tracks", pipeline, overlay=settings.overlay,
                           progress=progress)
    return track_file(pipeline, job.src, tmp / "overlay.mp4" if settings.overlay else None, tmp / "tracks.json",
                      max_side=settings.max_side, progress=progress)


def run_serial(jobs: list[Job], out_dir: Path, settings: Settings) -> tuple[list[dict], float]:
    """Every job in this process, one by one, with one engine; (results in job order, start-up seconds)."""
    t0 = time.perf_counter()
    engine = load_engine(settings.options)
    startup = time.perf_counter() - t0
    results = [run_job(engine, job, out_dir, settings) for job in tqdm(jobs, desc="recordings", unit="rec")]
    return results, startup


def summarize(results: list[dict], out_dir: Path, mode: str, workers: int, startup_s: float, wall_s: float) -> dict:
    """The run's summary (also written to ``OUT_DIR/summary.json``)."""
    done = [r for r in results if r["status"] == "done"]
    frames = sum(r["frames"] for r in done)
    summary = {"mode": mode, "workers": workers, "startup_s": round(startup_s, 3), "wall_s": round(wall_s, 3),
               "frames": frames, "frames_per_s": round(frames / wall_s, 3) if wall_s > 0 else 0.0,
               "done": len(done), "skipped": sum(r["status"] == "skipped" for r in results),
               "failed": sum(r["status"] == "failed" for r in results), "recordings": results}
    write_json(Path(out_dir) / "summary.json", summary)
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a table: one line per recording, then the totals."""
    rows = [f"{'recording':32s} {'kind':6s} {'frames':>6s} {'tracks/s':>9s} status"]
    for r in summary["recordings"]:
        rate = r["tracks"] / r["seconds"] if r["seconds"] else 0.0
        status = r["status"] + (f": {r['error']}" if r["error"] else "")
        rows.append(f"{r['name'][:32]:32s} {r['kind'][:6]:6s} {r['frames']:6d} {rate:9.1f} {status}")
    rows.append(f"{summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed; "
                f"{summary['frames']} frames in {summary['wall_s']:.1f} s ({summary['frames_per_s']:.2f} frames/s, "
                f"{summary['mode']}, {summary['workers']} worker(s), start-up {summary['startup_s']:.2f} s)")
    return "\n".join(rows)

