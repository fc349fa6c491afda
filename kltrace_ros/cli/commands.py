"""Sub-commands of `kltrace`: argument parsing only; the work is done in the core.

Each ``_add_<name>`` declares one sub-command and points it at its ``_run_<name>``.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kltrace_ros import __version__
from kltrace_ros.eval import bench
from kltrace_ros.eval.calibrate import calibrate
from kltrace_ros.eval.longseq import evaluate_long, format_long
from kltrace_ros.eval.rgbd import rgbd_camera
from kltrace_ros.eval.run import evaluate, format_table
from kltrace_ros.eval.suite import make_suite
from kltrace_ros.io.files import write_json
from kltrace_ros.io.images import read_rgb
from kltrace_ros.io.video import track_file
from kltrace_ros.models.lras.published import fetch_lras
from kltrace_ros.models.registry import load_predictor, resolve_device
from kltrace_ros.tracing.engine import Engine
from kltrace_ros.tracking.builder import Options, build_pipeline, load_engine, trace_config
from kltrace_ros.tracking.tracker import inside_image
from kltrace_ros.training.export import export_model
from kltrace_ros.training.loop import train


CHUNK = 256   # track-pair: query points per engine call (progress is shown past one chunk)


def register(sub) -> None:
    for add in (_add_version, _add_train, _add_track_pair, _add_eval, _add_video, _add_demo, _add_bench,
                _add_fetch_lras, _add_calibrate, _add_bag, _add_bags, _add_make_suite, _add_eval_long):
        add(sub)


# ------------------------------------------------------------------ shared options
def add_engine_args(p) -> None:
    p.add_argument("--method", choices=("kl", "rgb"), default=None,
                   help="kl (LRAS models' default) or rgb (diffusion models: the only one)")
    p.add_argument("--model", default=None, help="model file (default: the embedded model), or svd:DIR / cosmos:DIR "
                   "for a local diffusers folder (settings after ?: noise_level, steps, samples, seed, size, allow_cpu)")
    p.add_argument("--quantizer", type=Path, default=None, help="LPQ file, with a published LRAS --model")
    p.add_argument("--masks", type=int, default=None, help="reveal masks per scale (default: the model's)")
    p.add_argument("--scales", type=int, default=None, help="zoom scales (default: the model's)")
    p.add_argument("--occlusion-threshold", type=float, default=None,
                   help="peak score below which a point is occluded (absent or negative: the model's calibration)")
    p.add_argument("--fb-threshold", type=float, default=12.0,
                   help="visible only if the point traced back lands within this many px (at 256) of the query; "
                        "0: no forward-backward check (half the work)")
    p.add_argument("--min-appearance", type=float, default=0.7,
                   help="visible only if the found point's neighbourhood still looks like the query's (normalised "
                        "cross-correlation within 2 px at 256); 0: no test")
    p.add_argument("--refine", choices=("lk", "none"), default="lk",
                   help="lk (default): polish each answer to sub-pixel with Lucas-Kanade started at the KL answer "
                        "(kept within 16 px at 256 and when it traces back within 0.25 px); none: the KL answer as it is")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (anything else is refused)")


def add_stream_args(p, live_view: bool = True) -> None:
    p.add_argument("--points", type=int, default=64)
    p.add_argument("--keypoints", choices=("grid", "features"), default="grid")
    p.add_argument("--tracking", choices=("anchored", "chained"), default="anchored",
                   help="trace each track from the frame it was born on (anchored, default: no drift) or from the "
                        "previous one (chained: about half the time per pair)")
    if live_view:
        p.add_argument("--foxglove", type=int, nargs="?", const=8765, default=None, metavar="PORT",
                       help="serve a live view to Foxglove (ws://127.0.0.1:PORT, default 8765)")
    add_engine_args(p)


def options(args, **changes) -> Options:
    """Engine and tracker options from the parsed arguments (those a command has)."""
    opts = Options(model=args.model, quantizer=args.quantizer, device=args.device, method=args.method,
                   masks=args.masks, scales=args.scales, occlusion_threshold=args.occlusion_threshold,
                   fb_threshold=args.fb_threshold, min_appearance=args.min_appearance,
                   refine=getattr(args, "refine", Options.refine),
                   keep_maps=getattr(args, "foxglove", None) is not None,
                   num_points=getattr(args, "points", 64), keypoints=getattr(args, "keypoints", "grid"),
                   tracking=getattr(args, "tracking", Options.tracking))
    return opts.with_(**changes)


def run_offline(args, job):
    """The node's job offline: ``job(pipeline, view)`` with a tracking pipeline and an optional Foxglove view."""
    pipe = build_pipeline(options(args), on_reset=lambda reason: print(f"warning: {reason}"))
    view = None
    if args.foxglove is not None:
        from kltrace_ros.io.foxglove import FoxgloveView  # heavy, only for --foxglove

        view = FoxgloveView(args.foxglove)
        print(f"Foxglove live view: open ws://127.0.0.1:{view.port} in Foxglove")
    try:
        return job(pipe, view)
    finally:
        if view is not None:
            view.close()


# ------------------------------------------------------------------ commands
def _add_version(sub) -> None:
    sub.add_parser("version", help="print the package version").set_defaults(func=lambda a: print(__version__))


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the small default model (CellCode tokenizer + MotionLRAS) on CPU")
    p.add_argument("--out", type=Path, default=Path("runs/default"), help="output folder (checkpoints, log, plot)")
    p.add_argument("--minutes", type=float, default=60.0, help="time budget (ignored with --steps)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    p.add_argument("--ckpt-minutes", type=float, default=3.0, help="checkpoint period")
    p.add_argument("--codes", type=int, default=512, help="CellCode vocabulary size (new runs)")
    p.add_argument("--log-every", type=int, default=25, help="validate and log every N steps")
    p.add_argument("--init", type=Path, default=None,
                   help="fine-tune: start from this model file's weights and tokenizer (fresh optimiser)")
    p.add_argument("--max-motion", type=float, default=12.0, help="largest synthetic motion, window px")
    p.add_argument("--max-zoom", type=float, default=1.0,
                   help="largest zoom of a training window (window px per image px); above 1 the model also "
                        "sees enlarged crops, as the engine's finest scales do")
    p.add_argument("--no-debian", action="store_true",
                   help="train on scikit-image's images only (no apt-get download of opencv-doc/python3-imageio)")
    p.add_argument("--export", type=Path, default=None,
                   help="afterwards write OUT/model.pt with this version's tracing settings here "
                        "(kltrace_ros/models/default.pt is the shipped model)")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.minutes > 0 or args.steps:
        train(args.out, minutes=args.minutes, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
              resume=args.resume, ckpt_minutes=args.ckpt_minutes, debian=not args.no_debian,
              cfg={"n_codes": args.codes}, log_every=args.log_every, init=args.init,
              max_motion=args.max_motion, max_zoom=args.max_zoom)
    if args.export:
        print(f"exported {export_model(args.out / 'model.pt', args.export)}")
    return 0


def _add_track_pair(sub) -> None:
    p = sub.add_parser("track-pair", help="track query points from FRAME1 to FRAME2")
    p.add_argument("frame1", type=Path)
    p.add_argument("frame2", type=Path)
    p.add_argument("queries", type=Path, help="JSON [[x, y], ...] in FRAME1 pixels")
    p.add_argument("out", type=Path, help='JSON {"points": [[x, y], ...], "visible": [...], "reason": [...]} '
                   '(a query outside FRAME1 is not traced: null coordinates, not visible, and its reason)')
    p.add_argument("--max-points", type=int, default=20000, help="refuse more query points than this")
    add_engine_args(p)
    p.set_defaults(func=_run_track_pair)


def read_points(path: Path) -> np.ndarray:
    """(N,2) finite query points from a JSON file ``[[x, y], ...]``; ValueError names what is wrong."""
    try:
        pts = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected [[x, y], ...]") from err
    if not isinstance(pts, list):
        raise ValueError(f"{path} must hold a list of [x, y] pairs, got {type(pts).__name__}")
    for i, p in enumerate(pts):
        ok = isinstance(p, list) and len(p) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
        if not ok:
            raise ValueError(f"{path}: point {i} is {p!r}; each point must be [x, y] with two finite numbers "
                             f"(a list of [x, y] pairs)")
    return np.array(pts, np.float64).reshape(-1, 2)


def _run_track_pair(args) -> int:
    f1, f2 = read_rgb(args.frame1), read_rgb(args.frame2)
    queries = read_points(args.queries)
    if len(queries) > args.max_points:
        raise ValueError(f"{args.queries} holds {len(queries)} points, more than --max-points {args.max_points}: "
                         f"raise --max-points if you mean it (about 40 ms per point on a CPU)")
    (h1, w1), (h2, w2) = f1.shape[:2], f2.shape[:2]
    if (h1, w1) != (h2, w2):
        warn(f"{args.frame2} is {w2}x{h2}, {args.frame1} {w1}x{h1}: each is scaled to the model's working frame, "
             f"so the points found are in {args.frame2}'s pixels (a different field of view is not corrected)")
    # as the node treats ~/queries: a query outside frame 1 is not traced; here it is answered not visible, with a
    # reason, so that the output stays aligned with the queries
    inside = inside_image(queries, h1, w1)
    outside = np.flatnonzero(~inside)
    if len(outside):
        warn(f"{len(outside)} of {len(queries)} queries lie outside {args.frame1} ({w1}x{h1}; x in [-0.5, "
             f"{w1 - 0.5}], y in [-0.5, {h1 - 0.5}]): point{'s' if len(outside) > 1 else ''} "
             f"{', '.join(map(str, outside[:10]))}{', ...' if len(outside) > 10 else ''} answered not visible, "
             f"with null coordinates and a reason")
    engine = load_engine(options(args))
    todo = queries[inside]
    chunks = range(0, len(todo), CHUNK)
    results = [engine.track(f1, f2, todo[i:i + CHUNK]) for i in tqdm(
        chunks, desc="track-pair", unit=f"x{CHUNK} points", disable=len(todo) <= CHUNK)]
    points = np.full((len(queries), 2), np.nan)
    visible = np.zeros(len(queries), bool)
    if results:
        points[inside] = np.concatenate([r.points for r in results])
        visible[inside] = np.concatenate([r.visible for r in results])
    reason = f"query outside frame 1 ({w1}x{h1})"
    write_json(args.out, {"points": [[float(v) if np.isfinite(v) else None for v in p] for p in points],
                          "visible": [bool(v) for v in visible],
                          "reason": [None if ok else reason for ok in inside]})
    return 0


def warn(text: str) -> None:
    """A warning on stderr (the command goes on)."""
    print(f"kltrace: warning: {text}", file=sys.stderr)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="TAP-Vid two-frame metrics on a flow-gt folder (kl, rgb, zero, lk, dis)")
    p.add_argument("root", type=Path, help="folder with pairs.json and one sub-folder per pair")
    p.add_argument("--methods", default=None,
                   help="comma-separated (default: the model's tracing methods, then zero, lk, dis)")
    p.add_argument("--queries", type=int, default=128, help="query points per pair")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("out/eval"), help="results.json, summary.png, pairs.png")
    add_engine_args(p)
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    pred = None
    if methods is None or {"kl", "rgb"} & set(methods):   # one model, one engine per tracing method
        pred = load_predictor(args.model, resolve_device(args.device), args.quantizer)
    if methods is None:
        methods = [*getattr(pred, "methods", ("kl", "rgb")), "zero", "lk", "dis"]
    engines = {m: Engine(pred, trace_config(options(args, method=m), pred)) for m in methods if m in ("kl", "rgb")}
    res = evaluate(args.root, methods, engines, n_queries=args.queries, seed=args.seed, out=args.out)
    print(format_table(res))
    print(f"results: {args.out / 'results.json'}; plots: {args.out / 'summary.png'}, {args.out / 'pairs.png'}")
    return 0


def _add_eval_long(sub) -> None:
    p = sub.add_parser("eval-long", help="long tracks on generated sequences (exact ground truth, a crossing "
                                         "occluder): TAP-Vid first-style metrics, chained LK and DIS beside")
    p.add_argument("--sequences", type=int, default=3)
    p.add_argument("--frames", type=int, default=48, help="frames per sequence (40-80 is the benchmark's range)")
    p.add_argument("--methods", default="anchored,chained,lk,dis",
                   help="comma-separated: anchored, chained (the tracker in that mode), lk, dis (chained OpenCV)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scene", choices=("planar", "3d"), default="planar",
                   help="planar: a photo under a moving camera (one homography per frame); 3d: textured boxes and "
                        "walls at several depths (parallax, depth edges, forward motion, surfaces that turn)")
    p.add_argument("--out", type=Path, default=Path("out/eval_long"), help="results.json, error_by_frame.png")
    add_engine_args(p)
    p.set_defaults(func=_run_eval_long)


def _run_eval_long(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - {"anchored", "chained", "lk", "dis"}
    if unknown:
        raise ValueError(f"--methods: unknown {sorted(unknown)}; use anchored, chained, lk, dis")
    modes = [m for m in methods if m in ("anchored", "chained")]
    engine = load_engine(options(args)) if modes else None
    pipes = {m: build_pipeline(options(args, keypoints="topic", num_points=4096, tracking=m), engine) for m in modes}
    res = evaluate_long(args.sequences, args.frames, [m for m in methods if m not in modes], pipes, args.seed,
                        args.out, args.scene)
    print(format_long(res))
    print(f"results: {args.out / 'results.json'}; plot: {args.out / 'error_by_frame.png'}")
    return 0


def _add_video(sub) -> None:
    p = sub.add_parser("video", help="track points through a video (or image folder): overlay video + tracks JSON")
    p.add_argument("input", type=Path)
    p.add_argument("--out", type=Path, default=Path("out/overlay.mp4"))
    p.add_argument("--tracks", type=Path, default=Path("out/tracks.json"))
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--max-side", type=int, default=640, help="downscale frames whose longest side is larger")
    add_stream_args(p)
    p.set_defaults(func=_run_video)


def _run_video(args) -> int:
    stats = run_offline(args, lambda pipe, view: track_file(pipe, args.input, args.out, args.tracks, args.max_frames,
                                                            args.max_side, view=view))
    print(f"overlay: {args.out}\ntracks: {args.tracks}\n{stats['pairs']} frame pairs, "
          f"{stats['tracks_per_s']:.1f} tracks/s, {stats['latency_ms']:.0f} ms per pair")
    return 0


def _add_bag(sub) -> None:
    p = sub.add_parser("bag", help="the node's job on a rosbag2 (mcap/sqlite3): writes tracks, flow and overlays")
    p.add_argument("input", type=Path, help="bag folder or .mcap file")
    p.add_argument("--topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    p.add_argument("--out", type=Path, required=True, help="output bag (new path; .mcap for MCAP storage)")
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument("--depth-topic", default=None, help="RGB-D: aligned depth image topic (16UC1 mm or 32FC1 m); "
                                                       "tracks get 3D positions and velocities, and "
                                                       "/kltrace/tracks_cloud is written (with --camera-info-topic)")
    p.add_argument("--camera-info-topic", default=None, help="RGB-D: the colour camera's sensor_msgs/CameraInfo")
    add_stream_args(p)
    p.set_defaults(func=_run_bag)


def _run_bag(args) -> int:
    from kltrace_ros.io.bag import process_bag  # rosbags: heavy, only for this command

    stats = run_offline(args, lambda pipe, view: process_bag(args.input, args.topic, args.out, pipe,
                                                             overlay=not args.no_overlay, view=view,
                                                             depth_topic=args.depth_topic,
                                                             camera_info_topic=args.camera_info_topic))
    print(f"wrote {args.out}: {stats}")
    return 0


def _add_make_suite(sub) -> None:
    p = sub.add_parser("make-suite", help="build the large-motion evaluation suite from freely licensed photos "
                                          "(flow-gt layout for kltrace eval; deterministic)")
    p.add_argument("out", type=Path, nargs="?", default=Path("out/large_motion"))
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_make_suite)


def _run_make_suite(args) -> int:
    if args.pairs < 1:
        raise ValueError(f"--pairs {args.pairs}: give at least 1")
    print(f"suite: {make_suite(args.out, args.pairs, args.seed)} (kltrace eval {args.out})")
    return 0


def _add_bags(sub) -> None:
    p = sub.add_parser("bags", help="every bag and video under a folder, in parallel on Ray or one by one; "
                                    "resumable, one output folder per recording and a summary")
    p.add_argument("input", type=Path, help="folder of rosbag2 folders, .mcap files and videos (searched recursively)")
    p.add_argument("--topic", required=True, help="image topic in the bags (sensor_msgs/Image or CompressedImage)")
    p.add_argument("--out", type=Path, required=True, help="output folder: OUT/<recording>/ and OUT/summary.json")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                   help="run on Ray: 'auto' starts a local instance, an address joins a cluster; "
                        "without it the recordings run here one by one")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray workers, one model each (default: one per CPU, or one per GPU when the cluster has GPUs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (per worker with --ray; default: "
                   "the CPUs each worker gets)")
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument("--max-side", type=int, default=640, help="videos: downscale frames whose longest side is larger")
    add_stream_args(p, live_view=False)
    p.set_defaults(func=_run_bags)


def _run_bags(args) -> int:
    from kltrace_ros.batch.jobs import Settings, discover, format_summary, run_serial, summarize  # rosbags: heavy

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers {args.workers}: give at least 1")
    jobs = discover(args.input, args.out)
    if not jobs:
        raise ValueError(f"no bags (folders with metadata.yaml, .mcap files) or videos under {args.input}")
    settings = Settings(args.topic, options(args), overlay=not args.no_overlay, max_side=args.max_side)
    t0 = time.perf_counter()
    if args.ray is None:
        if args.threads:
            torch.set_num_threads(args.threads)
        results, startup = run_serial(jobs, args.out, settings)
        mode, workers = "one by one", 1
    else:
        import ray  # noqa: PLC0415 - only with --ray

        from kltrace_ros.batch.ray_pool import run_ray  # noqa: PLC0415

        try:
            results, startup, workers = run_ray(jobs, args.out, settings, args.ray, args.workers, args.threads)
        finally:
            ray.shutdown()
        mode = f"ray {args.ray}"
    summary = summarize(results, args.out, mode, workers, startup, time.perf_counter() - t0)
    print(format_summary(summary))
    print(f"summary: {args.out / 'summary.json'}")
    return 1 if summary["failed"] else 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the node on real footage fed by this process; overlay video + tracks")
    p.add_argument("--video", type=Path, default=None, help="video or image folder (default: ../shared/data/video "
                   "when present; 'builtin': scikit-image's coffee photo with a simulated camera motion; 'rgbd': a "
                   "generated RGB-D camera, the node with use_depth: tracks in 3D)")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--points", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from kltrace_ros.ros.demo import run_demo  # the ROS layer (rclpy), only for this command

    rgbd = None
    if str(args.video) == "rgbd":
        cam = rgbd_camera()
        rays = cam.rays()
        rgbd = ([cam.render(i, rays)[:2] for i in range(args.frames)], cam.K, cam.D,
                "the generated RGB-D camera (a board moving in 3D before a wall; depth and camera_info)")
    run_demo(args.video, args.frames, args.points, args.out, args.device, rgbd)
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure: lras (transformer), tracing (pairs/s beside LK and DIS), lras-tracing "
                                     "(the LRAS tracing path on the published layout, random weights), node (a soak "
                                     "under a camera), bags (kltrace bags one by one vs on Ray)")
    p.add_argument("what", choices=("lras", "tracing", "lras-tracing", "node", "bags"))
    p.add_argument("--size", choices=tuple(bench.SIZES), default="tiny",
                   help="lras, lras-tracing: random model size (tiny: the 7B vocabulary and layout at 2 layers x 64)")
    p.add_argument("--prefix", type=int, default=1024, help="lras: prefill tokens")
    p.add_argument("--suffix", type=int, default=256, help="lras: extend tokens per continuation")
    p.add_argument("--batch", type=int, default=8, help="lras: continuations per extend")
    p.add_argument("--points", type=int, default=64, help="tracing, lras-tracing: query points per pair")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--masks", type=int, default=None)
    p.add_argument("--scales", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--minutes", type=float, default=10.0, help="node: soak duration after warm-up")
    p.add_argument("--frame-size", default=None,
                   help="camera frames WxH (node: default 640x480; bags: 320x240; tracing: 320x240 and 640x480)")
    p.add_argument("--recordings", type=int, default=4, help="bags: generated recordings")
    p.add_argument("--frames", type=int, default=10, help="bags: frames per recording")
    p.add_argument("--workers", type=int, default=None, help="bags: Ray workers (default: one per CPU)")
    p.add_argument("--rate", type=float, default=30.0, help="node: camera rate (Hz)")
    p.add_argument("--tracking", choices=("chained", "anchored"), default=None,
                   help="node: tracking mode (default: the node's)")
    p.add_argument("--out", type=Path, default=Path("out/soak"), help="node: soak.json, soak.png, node.log")
    p.add_argument("--depth", action="store_true", help="node: run twice, without and with an RGB-D camera "
                                                        "(use_depth; the time of the 3D lift per pair)")
    p.set_defaults(func=_run_bench)


def _run_bench(args) -> int:
    dev = str(resolve_device(args.device))
    if args.what == "node":
        from kltrace_ros.ros.soak import run_soak  # the ROS layer (rclpy), only for this benchmark

        w, h = _size(args.frame_size or "640x480")
        params = {"num_points": args.points, "device": dev, "heatmap_points": 4}
        params.update({k: v for k, v in (("masks", args.masks), ("scales", args.scales), ("tracking", args.tracking))
                       if v})
        if args.depth:
            res = {name: run_soak(args.minutes, (w, h), args.rate, params, args.out / name, depth=name == "depth_on")
                   for name in ("depth_off", "depth_on")}
        else:
            res = run_soak(args.minutes, (w, h), args.rate, params, args.out)
    elif args.what == "bags":
        from kltrace_ros.batch.bench import bench_bags  # rosbags and Ray, only for this benchmark

        res = bench_bags(args.recordings, args.frames, _size(args.frame_size or "320x240"), args.points, args.workers)
    elif args.what == "lras":
        res = bench.bench_lras(args.size, args.prefix, args.suffix, args.batch, dev)
    elif args.what == "lras-tracing":
        res = bench.bench_lras_tracing(args.size, args.points, dev, args.masks)
    else:
        sizes = {"frames": (_size(args.frame_size),)} if args.frame_size else {}
        res = bench.bench_tracing(args.points, dev, args.model, args.masks, args.scales, **sizes)
    print(json.dumps(res, indent=1))
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--frame-size {text}: give WIDTHxHEIGHT, e.g. 640x480") from None
    return w, h


def _add_fetch_lras(sub) -> None:
    p = sub.add_parser("fetch-lras", help="what to download for the published LRAS, and verify placed files")
    p.add_argument("--dest", type=Path, required=True)
    p.set_defaults(func=lambda a: fetch_lras(a.dest))


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="set a model file's occlusion thresholds from synthetic occlusions")
    p.add_argument("model", type=Path)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--prior", type=float, default=0.05, help="occluded fraction to calibrate for")
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args) -> int:
    print(json.dumps(calibrate(args.model, args.pairs, prior=args.prior), indent=1))
    print(f"thresholds written into {args.model}")
    return 0
