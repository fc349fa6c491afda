"""Sub-commands of `kltrace` (argument parsing only; the work is done in the core)."""
from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("version", help="print the package version")
    p.set_defaults(func=_version)

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
    p.add_argument("--no-debian", action="store_true",
                   help="train on scikit-image's images only (no apt-get download of opencv-doc/python3-imageio)")
    p.add_argument("--export", type=Path, default=None,
                   help="afterwards write OUT/model.pt with this version's tracing settings here "
                        "(kltrace_ros/models/default.pt is the shipped model)")
    p.set_defaults(func=_train)


    p = sub.add_parser("track-pair", help="track query points from FRAME1 to FRAME2")
    p.add_argument("frame1", type=Path)
    p.add_argument("frame2", type=Path)
    p.add_argument("queries", type=Path, help="JSON [[x, y], ...] in FRAME1 pixels")
    p.add_argument("out", type=Path, help='JSON {"points": [[x, y], ...], "visible": [...]}')
    add_engine_args(p)
    p.set_defaults(func=_track_pair)

    p = sub.add_parser("eval", help="TAP-Vid two-frame metrics on a flow-gt folder (kl, rgb, zero, lk, dis)")
    p.add_argument("root", type=Path, help="folder with pairs.json and one sub-folder per pair")
    p.add_argument("--methods", default="kl,rgb,zero,lk,dis")
    p.add_argument("--queries", type=int, default=128, help="query points per pair")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("out/eval"), help="results.json, summary.png, pairs.png")
    add_engine_args(p)
    p.set_defaults(func=_eval)


    p = sub.add_parser("video", help="track points through a video (or image folder): overlay video + tracks JSON")
    p.add_argument("input", type=Path)
    p.add_argument("--out", type=Path, default=Path("out/overlay.mp4"))
    p.add_argument("--tracks", type=Path, default=Path("out/tracks.json"))
    p.add_argument("--points", type=int, default=64)
    p.add_argument("--keypoints", choices=("grid", "features"), default="grid")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--max-side", type=int, default=640, help="downscale frames whose longest side is larger")
    p.add_argument("--foxglove", type=int, nargs="?", const=8765, default=None, metavar="PORT",
                   help="serve a live view to Foxglove (ws://127.0.0.1:PORT, default 8765)")
    add_engine_args(p)
    p.set_defaults(func=_video)


    p = sub.add_parser("demo", help="run the node on real footage fed by this process; overlay video + tracks")
    p.add_argument("--video", type=Path, default=None, help="video or image folder (default: ../shared/data/video when present; "
                   "'builtin': scikit-image's coffee photo with a simulated camera motion)")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--points", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_demo)


    p = sub.add_parser("bench", help="measure speed and memory: lras (transformer) or tracing (points/s)")
    p.add_argument("what", choices=("lras", "tracing"))
    p.add_argument("--size", choices=("tiny", "small", "1b", "7b"), default="tiny", help="lras: random model size")
    p.add_argument("--prefix", type=int, default=1024, help="lras: prefill tokens")
    p.add_argument("--suffix", type=int, default=256, help="lras: extend tokens per continuation")
    p.add_argument("--batch", type=int, default=8, help="lras: continuations per extend")
    p.add_argument("--points", type=int, default=64, help="tracing: query points per pair")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--masks", type=int, default=None)
    p.add_argument("--scales", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_bench)

    p = sub.add_parser("fetch-lras", help="what to download for the published LRAS, and verify placed files")
    p.add_argument("--dest", type=Path, required=True)
    p.set_defaults(func=lambda a: __import__("kltrace_ros.bench", fromlist=["x"]).fetch_lras(a.dest))


    p = sub.add_parser("calibrate", help="set a model file's occlusion thresholds from synthetic occlusions")
    p.add_argument("model", type=Path)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--prior", type=float, default=0.05, help="occluded fraction to calibrate for")
    p.set_defaults(func=_calibrate)


    p = sub.add_parser("bag", help="the node's job on a rosbag2 (mcap/sqlite3): writes tracks, flow and overlays")
    p.add_argument("input", type=Path, help="bag folder or .mcap file")
    p.add_argument("--topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    p.add_argument("--out", type=Path, required=True, help="output bag (new path; .mcap for MCAP storage)")
    p.add_argument("--points", type=int, default=64)
    p.add_argument("--keypoints", choices=("grid", "features"), default="grid")
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument("--foxglove", type=int, nargs="?", const=8765, default=None, metavar="PORT",
                   help="serve a live view to Foxglove (ws://127.0.0.1:PORT, default 8765)")
    add_engine_args(p)
    p.set_defaults(func=_bag)


def add_engine_args(p) -> None:
    p.add_argument("--method", choices=("kl", "rgb"), default="kl")
    p.add_argument("--model", type=Path, default=None, help="model file (default: the embedded model)")
    p.add_argument("--quantizer", type=Path, default=None, help="LPQ file, with a published LRAS --model")
    p.add_argument("--masks", type=int, default=None, help="reveal masks per scale (default: the model's)")
    p.add_argument("--scales", type=int, default=None, help="zoom scales (default: the model's)")
    p.add_argument("--occlusion-threshold", type=float, default=None,
                   help="peak score below which a point is occluded (default: the model's calibration)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")


def make_view(args):
    if getattr(args, "foxglove", None) is None:
        return None
    from kltrace_ros.foxglove_view import FoxgloveView

    view = FoxgloveView(args.foxglove)
    print(f"Foxglove live view: open ws://127.0.0.1:{view.port} in Foxglove")
    return view


def make_engine(args, method=None):
    from kltrace_ros.tracing.engine import Engine, TraceConfig
    from kltrace_ros.tracing.predictor import load_predictor, resolve_device

    pred = load_predictor(args.model, resolve_device(args.device), args.quantizer)
    thr = args.occlusion_threshold
    if thr is None:
        thr = getattr(pred, "occlusion_threshold", {}).get(method or args.method, 0.0)
    return Engine(pred, TraceConfig(method=method or args.method, masks=args.masks, scales=args.scales,
                                    occlusion_threshold=thr, keep_maps=getattr(args, "foxglove", None) is not None))


def _track_pair(args) -> int:
    import json

    from kltrace_ros.eval.datasets import read_rgb

    f1, f2 = read_rgb(args.frame1), read_rgb(args.frame2)
    try:
        queries = json.loads(args.queries.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{args.queries} is not valid JSON ({err}); expected [[x, y], ...]") from err
    if not isinstance(queries, list) or not all(isinstance(q, (list, tuple)) and len(q) == 2 for q in queries):
        raise ValueError(f"{args.queries} must hold a list of [x, y] pairs")
    res = make_engine(args).track(f1, f2, queries)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"points": res.points.tolist(), "visible": res.visible.tolist()}))
    return 0


def _eval(args) -> int:
    from kltrace_ros.eval.run import evaluate, format_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    engines = {m: make_engine(args, m) for m in methods if m in ("kl", "rgb")}
    res = evaluate(args.root, methods, engines, n_queries=args.queries, seed=args.seed, out=args.out)
    print(format_table(res))
    print(f"results: {args.out / 'results.json'}; plots: {args.out / 'summary.png'}, {args.out / 'pairs.png'}")
    return 0


def run_offline(args, job):
    """The node's job offline: ``job(pipeline, view)`` with a tracking pipeline and an optional Foxglove view."""
    from kltrace_ros.tracking.pipeline import TrackingPipeline
    from kltrace_ros.tracking.tracker import TrackerConfig

    pipe = TrackingPipeline(make_engine(args), TrackerConfig(num_points=args.points, source=args.keypoints))
    view = make_view(args)
    try:
        return job(pipe, view)
    finally:
        if view is not None:
            view.close()


def _video(args) -> int:
    from kltrace_ros.offline import read_frames, track_video

    stats = run_offline(args, lambda pipe, view: track_video(
        pipe, read_frames(args.input, args.max_frames, args.max_side), args.out, args.tracks,
        total=args.max_frames, view=view))
    print(f"overlay: {args.out}\ntracks: {args.tracks}\n{stats['pairs']} frame pairs, "
          f"{stats['tracks_per_s']:.1f} tracks/s, {stats['latency_ms']:.0f} ms per pair")
    return 0


def _bench(args) -> int:
    import json

    from kltrace_ros import bench
    from kltrace_ros.tracing.predictor import resolve_device

    dev = str(resolve_device(args.device))
    if args.what == "lras":
        res = bench.bench_lras(args.size, args.prefix, args.suffix, args.batch, dev)
    else:
        res = bench.bench_tracing(args.points, dev, args.model, args.masks, args.scales)
    print(json.dumps(res, indent=1))
    return 0


def _calibrate(args) -> int:
    import json

    from kltrace_ros.eval.calibrate import calibrate

    print(json.dumps(calibrate(args.model, args.pairs, prior=args.prior), indent=1))
    print(f"thresholds written into {args.model}")
    return 0


def _bag(args) -> int:
    from kltrace_ros.bag import process_bag

    stats = run_offline(args, lambda pipe, view: process_bag(args.input, args.topic, args.out, pipe,
                                                             overlay=not args.no_overlay, view=view))
    print(f"wrote {args.out}: {stats}")
    return 0


def _demo(args) -> int:
    from kltrace_ros.ros.demo import run_demo

    run_demo(args.video, args.frames, args.points, args.out, args.device)
    return 0


def _version(args) -> int:
    from kltrace_ros import __version__

    print(__version__)
    return 0


def _train(args) -> int:
    from kltrace_ros.lras.train import export_model, train

    if args.minutes > 0 or args.steps:
        train(args.out, minutes=args.minutes, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
              resume=args.resume, ckpt_minutes=args.ckpt_minutes, threads=args.threads, debian=not args.no_debian,
              cfg={"n_codes": args.codes}, log_every=args.log_every)
    if args.export:
        print(f"exported {export_model(args.out / 'model.pt', args.export)}")
    return 0
