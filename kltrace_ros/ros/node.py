"""kltrace_node: camera images in; tracks, sparse flow, KL heatmaps, overlays, markers and diagnostics out.

Thin ROS 2 layer over the ROS-free core. Threads and who owns what:
- subscription callbacks put the newest message of each camera into a size-1 slot (drop-oldest,
  dropped frames are counted) and never block;
- services, ``~/queries`` and parameter changes put commands on a queue and return at once;
- one worker thread owns every piece of tracking state: between pairs it applies the queued
  commands, then takes the newest frame of each camera and traces the pair (the frame the
  tracks live on -> that frame).
Parameters carry descriptors (ranges, read-only), so rclpy rejects bad values itself; input
QoS is overridable the ROS way (``qos_overrides.<topic>.subscription.*`` parameters).
"""
from __future__ import annotations

import difflib
import queue
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import rclpy
import torch
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Point32, PolygonStamped, Vector3
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from kltrace_ros.io.drawing import Trails, draw_tracks, heatmap_image
from kltrace_ros.io.image_msgs import ImageError, compressed_to_rgb, depth_to_metres, image_to_rgb, rgb_to_image
from kltrace_ros.io.messages import MessageTypes, cloud_message, pair_messages, stamp_ns
from kltrace_ros.models.registry import resolve_device
from kltrace_ros.msg import FlowArray, Track, TrackArray
from kltrace_ros.tracing.engine import Cancelled
from kltrace_ros.tracking.builder import Options, build_pipeline, load_engine, trace_config, tracker_config
from kltrace_ros.tracking.depth import CameraError, CameraModel, DepthError, DepthStream
from kltrace_ros.tracking.pipeline import Reset

SERVICE_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
# Fast DDS, best effort: the first sample over about 16 MB of a new publisher never arrives (4096x3072 rgb8: frame 0
# lost, frames 1-4 received, also without the node, with a 128 MB shared-memory segment or 64 MB socket buffers);
# with reliable QoS on both sides every frame arrives
LARGE_SAMPLE_BYTES = 16 * 2**20
MESSAGES = MessageTypes(Track=Track, TrackArray=TrackArray, FlowArray=FlowArray, Point32=Point32, Vector3=Vector3,
                        Time=Time, Point=Point, PointCloud2=PointCloud2, PointField=PointField)


@dataclass(frozen=True)
class Param:
    default: object
    description: str
    live: bool = False              # False: read-only (needs a restart)
    range: tuple | None = None      # (min, max), inclusive


PARAMETERS = {
    "inputs": Param(["image"], "image topics (relative; remap them); outputs are namespaced per input when several"),
    "compressed": Param(False, "subscribe to <input>/compressed (sensor_msgs/CompressedImage)"),
    "device": Param("auto", "auto | cpu | cuda | cuda:N (bf16 on cuda; CPU fallback when CUDA is absent; anything "
                            "else is refused at start-up)"),
    "model_path": Param("", "model file; empty = the embedded default model"),
    "quantizer_path": Param("", "LPQ file to pair with a published LRAS model_path"),
    "threads": Param(0, "torch CPU threads (0 = all cores)", range=(0, 256)),
    "frame_gap": Param(1, "trace between frames at least this many frames apart", True, (1, 100)),
    "keypoints": Param("grid", "grid | features | topic (~/queries, geometry_msgs/PolygonStamped)"),
    "tracking": Param("anchored", "anchored (each track traced from the frame it was born or re-anchored on: no "
                                  "drift, occluded points found again) | chained (from the previous traced frame: "
                                  "about half the time per pair, errors add up)"),
    "num_points": Param(64, "maximum number of tracks in view (anchored tracking also keeps up to as many that "
                             "left the view: max_out_of_view_frames)", True, (1, 4096)),
    "max_occluded_frames": Param(-1, "traced pairs an occluded track is kept (moving with the visible ones) before "
                                     "it is dropped (-1: the tracking mode's default, 12 chained, 40 anchored)", True,
                                 (-1, 1000)),
    "max_out_of_view_frames": Param(40, "anchored tracking: traced pairs a track that left the view is kept (moving "
                                        "with the visible ones, searched for from its anchor when it is predicted "
                                        "back in view; not counted in num_points); chained drops it at once", True,
                                    (0, 1000)),
    "masks": Param(0, "reveal masks per scale (0 = the model's default)", True, (0, 32)),
    "scales": Param(0, "zoom scales (0 = the model's default); fewer leave out the coarse ones (less reach)", True,
                    (0, 8)),
    "occlusion_threshold": Param(-1.0, "peak score below which a point is occluded (negative = the model's "
                                       "calibration)", True, (-1.0, 1e6)),
    "fb_threshold": Param(12.0, "visible only if the point traced back lands within this many px (at 256) of the "
                                "query (forward-backward check; 0 = off, half the work)", True, (0.0, 256.0)),
    "min_appearance": Param(0.7, "visible only if the found point's neighbourhood still looks like the query's "
                                 "(normalised cross-correlation within 2 px; 0 = off)", True, (0.0, 1.0)),
    "refine": Param("lk", "lk (each answer polished to sub-pixel by Lucas-Kanade started at the KL answer, kept only "
                          "within 16 px at 256 and when it traces back within 0.25 px: dev set delta_avg 85.3 -> 91.7) "
                          "| none (the KL answer as it is)"),
    "heatmap_points": Param(4, "how many tracks' KL maps ~/debug/heatmap shows", True, (0, 64)),
    "marker_scale": Param(0.001, "metres per pixel for ~/markers drawn in the image plane (z = 1 m); with depth "
                                 "(use_depth) they are drawn in 3D, in metres", True, (1e-9, 1e3)),
    "max_point_passes": Param(4096, "work budget per pair: num_points x masks x (scales + 1 with the fb check); larger "
                                    "settings are refused with the time they would take", range=(1, 10**7)),
    "max_image_pixels": Param(4096 * 4096, "larger images are refused before decoding (decompression bombs)", True,
                              (1, 2**28)),
    "use_depth": Param(False, "RGB-D: subscribe to an aligned depth image (16UC1 mm or 32FC1 m, REP-118) and the "
                              "colour camera's camera_info (topics depth and camera_info, or <input>/depth and "
                              "<input>/camera_info with several inputs) and publish tracks in 3D: positions and "
                              "velocities in the camera's optical frame, ~/tracks_cloud, 3D ~/markers"),
    "rectified": Param(False, "use_depth: the colour images are rectified (image_rect): camera_info's p is their "
                              "intrinsics, without distortion"),
    "depth_tolerance": Param(0.02, "use_depth: a colour frame takes the depth image nearest in stamp within this "
                                   "many seconds (none: traced in 2D, counted in /diagnostics)", True, (0.0, 10.0)),
    "foxglove_port": Param(0, "serve overlay and heatmap to Foxglove on ws://127.0.0.1:PORT (0 = off)",
                           range=(0, 65535)),
}


def descriptor(p: Param) -> ParameterDescriptor:
    d = ParameterDescriptor(description=p.description + ("" if p.live else " (read-only: needs a restart)"),
                            read_only=not p.live)
    if p.range is not None and isinstance(p.default, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(p.range[0]), to_value=float(p.range[1]))]
    elif p.range is not None:
        d.integer_range = [IntegerRange(from_value=p.range[0], to_value=p.range[1], step=1)]
    return d


def options(params: dict) -> Options:
    """Engine and tracker options from the node's parameters."""
    return Options(model=params["model_path"] or None, quantizer=params["quantizer_path"] or None,
                   device=params["device"], masks=params["masks"] or None, scales=params["scales"] or None,
                   occlusion_threshold=params["occlusion_threshold"], fb_threshold=params["fb_threshold"],
                   min_appearance=params["min_appearance"], refine=params["refine"], keep_maps=True,
                   num_points=params["num_points"], keypoints=params["keypoints"],
                   max_occluded_frames=params["max_occluded_frames"],
                   max_out_of_view_frames=params["max_out_of_view_frames"], frame_gap=params["frame_gap"],
                   tracking=params["tracking"])


class FrameSlot:
    """Size-1 drop-oldest hand-off from a subscription callback to the worker. It also keeps the camera's frame
    period (median of the last stamp steps), so that frames lost on the way are counted too."""

    def __init__(self):
        self._lock = threading.Lock()
        self._msg = None
        self.received = 0
        self.dropped = 0
        self._last_stamp = None
        self._steps: deque = deque(maxlen=31)

    def put(self, msg) -> None:
        stamp = stamp_ns(msg.header.stamp)
        with self._lock:
            self.received += 1
            if self._msg is not None:
                self.dropped += 1
            self._msg = msg
            if self._last_stamp is not None and stamp > self._last_stamp:
                self._steps.append(stamp - self._last_stamp)
            self._last_stamp = stamp

    def take(self):
        """(message or None, its index in the stream, the camera's frame period in ns or None)."""
        with self._lock:
            msg, self._msg = self._msg, None
            period = float(np.median(self._steps)) if self._steps else None
            return msg, self.received, period


@dataclass
class Camera:
    """One input. ``slot`` is shared with its callback; everything else belongs to the worker."""
    topic: str
    pipeline: object
    pubs: dict
    slot: FrameSlot = field(default_factory=FrameSlot)
    trails: Trails = field(default_factory=Trails)
    processed: int = 0
    errors: int = 0                       # frames that could not be converted or traced
    resets: int = 0                       # tracks reset by a time jump or a size change
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=50))
    size: tuple | None = None             # (H, W) of its last image: checks ~/queries even right after a reset
    best_effort: bool = True              # the input's QoS (after qos_overrides)
    told_large: bool = False              # the large-frame transport advice was logged
    depth: DepthStream | None = None      # use_depth: its depth frames (filled by the depth callback)
    info: object = None                   # use_depth: the newest camera_info message (set by its callback)
    depth_errors: int = 0                 # pairs traced in 2D because depth or camera_info could not be used
    said: dict = field(default_factory=dict)   # depth problem kind -> when it was last logged
    depth_ms: deque = field(default_factory=lambda: deque(maxlen=50))   # use_depth: matching + 3D lift per pair


class KLTraceNode(Node):
    def __init__(self, **kwargs):
        # undeclared names reach our check (which names them); rclpy's own refusal names none ("[]")
        super().__init__("kltrace", allow_undeclared_parameters=True, **kwargs)
        for name, p in PARAMETERS.items():
            self.declare_parameter(name, p.default, descriptor(p))
        self.params = {name: self.get_parameter(name).value for name in PARAMETERS}
        p = self.params
        if p["threads"] > 0:
            torch.set_num_threads(p["threads"])
        log = self.get_logger()
        self.device = resolve_device(p["device"], explain=lambda why, fallback: (log.warning if fallback else
                                                                                  log.info)(why))
        self.engine = load_engine(options(p).with_(device=str(self.device)))
        self.seconds_per_pass = 0.0           # measured by the worker: seconds per point-pass (0: not yet)
        over = self._over_budget(p)
        if over:
            raise ValueError(over)
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.wake = threading.Event()
        self.stopping = threading.Event()   # shutdown: the worker ends and abandons a pair in progress
        self.view = None
        if p["foxglove_port"] > 0:
            from kltrace_ros.io.foxglove import FoxgloveView  # heavy, only when asked for

            self.view = FoxgloveView(p["foxglove_port"])
            self.get_logger().info(f"Foxglove live view on ws://127.0.0.1:{self.view.port}")
        self.cameras = [self._add_camera(topic, len(p["inputs"]) > 1) for topic in p["inputs"]]
        if p["keypoints"] == "topic":
            self.create_subscription(PolygonStamped, "~/queries", self._on_queries, 10)
        # keep-all: a burst of calls is queued, never overwritten (each is answered at once, applied by the worker)
        self.create_service(Trigger, "~/reset", self._on_reset, qos_profile=SERVICE_QOS)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._on_parameters)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.started = time.monotonic()
        self.create_timer(1.0, self._publish_diagnostics)
        self.worker = threading.Thread(target=self._work, name="kltrace-worker", daemon=True)
        self.worker.start()
        self.get_logger().info(f"kltrace ready: model {self.engine.p.name} on {self.device}, inputs {p['inputs']}"
                               f"{' (compressed)' if p['compressed'] else ''}, {p['num_points']} points")

    def _add_camera(self, topic: str, several: bool) -> Camera:
        prefix = "~/" + topic.strip("/").replace("/", "_") + "/" if several else "~/"
        pubs = {
            "tracks": self.create_publisher(TrackArray, prefix + "tracks", 10),
            "flow": self.create_publisher(FlowArray, prefix + "flow", 10),
            "heatmap": self.create_publisher(Image, prefix + "debug/heatmap", 2),
            "overlay": self.create_publisher(Image, prefix + "debug/overlay", 2),
            "markers": self.create_publisher(MarkerArray, prefix + "markers", 2),
        }
        cam = Camera(topic, None, pubs)
        if self.params["use_depth"]:
            base = topic.rstrip("/") + "/" if several else ""
            pubs["cloud"] = self.create_publisher(PointCloud2, prefix + "tracks_cloud", 2)
            cam.depth = DepthStream(round(self.params["depth_tolerance"] * 1e9),
                                    decode=lambda m: depth_to_metres(m, self.params["max_image_pixels"]),
                                    rectified=self.params["rectified"])
            overridable = QoSOverridingOptions.with_default_policies()   # e.g. a driver's transient-local camera_info
            self.create_subscription(Image, base + "depth", lambda m: cam.depth.add(stamp_ns(m.header.stamp), m),
                                     qos_profile_sensor_data, qos_overriding_options=overridable)
            self.create_subscription(CameraInfo, base + "camera_info", lambda m: setattr(cam, "info", m),
                                     qos_profile_sensor_data, qos_overriding_options=overridable)
        cam.pipeline = build_pipeline(options(self.params), self.engine, lambda reason: self._warn_reset(cam, reason),
                                      self.stopping)
        kind, name = (CompressedImage, topic + "/compressed") if self.params["compressed"] else (Image, topic)
        sub = self.create_subscription(kind, name, lambda m: self._on_image(cam, m), qos_profile_sensor_data,
                                       qos_overriding_options=QoSOverridingOptions.with_default_policies())
        cam.best_effort = sub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        return cam

    # -------------------------------------------------- callbacks: enqueue only
    def _on_image(self, cam: Camera, msg) -> None:
        cam.slot.put(msg)
        self.wake.set()

    def _on_queries(self, msg: PolygonStamped) -> None:
        self.commands.put(("queries", [[p.x, p.y] for p in msg.polygon.points]))
        self.wake.set()

    def _on_reset(self, request, response):
        self.commands.put(("reset", None))
        self.wake.set()
        response.success, response.message = True, "tracks are cleared before the next pair"
        return response

    def _over_budget(self, params: dict) -> str | None:
        """Why these parameters would make a pair take too long (or None): the work against max_point_passes."""
        cfg = trace_config(options(params), self.engine.p)
        work = self.engine.point_passes(params["num_points"], cfg)
        if work <= params["max_point_passes"]:
            return None
        rate = self.seconds_per_pass
        estimate = (f"about {work * rate:.0f} s per pair at the {1000 * rate:.1f} ms per point-pass measured here"
                    if rate else "not measured yet on this machine")
        return (f"num_points={params['num_points']} with masks={params['masks']} and scales={params['scales']} "
                f"(0 = the model's) is {work} point-passes per pair, over max_point_passes="
                f"{params['max_point_passes']} ({estimate}): lower num_points, masks or scales")

    def _check_parameters(self, params) -> SetParametersResult:
        """Before rclpy applies a change (ranges are checked by the descriptors): known names, the work budget."""
        unknown = [prm.name for prm in params if not self.has_parameter(prm.name)]
        if unknown:
            hints = [f" (did you mean {m[0]}?)" if (m := difflib.get_close_matches(n, PARAMETERS, 1)) else ""
                     for n in unknown]
            return SetParametersResult(successful=False, reason="; ".join(
                f"kltrace has no parameter '{n}'{h}" for n, h in zip(unknown, hints)) + f": it has {', '.join(PARAMETERS)}")
        # against every change rclpy has accepted so far (self.params is the worker's copy, updated between pairs:
        # two quick changes would otherwise each be checked without the other)
        accepted = {name: self.get_parameter(name).value for name in PARAMETERS}
        new = {**accepted, **{prm.name: prm.value for prm in params if prm.name in PARAMETERS}}
        reason = self._over_budget(new)
        return SetParametersResult(successful=reason is None, reason=reason or "")

    def _on_parameters(self, params) -> None:
        """After rclpy accepted a change (descriptors checked it): hand it to the worker."""
        self.commands.put(("params", {prm.name: prm.value for prm in params if prm.name in PARAMETERS}))
        self.wake.set()

    # -------------------------------------------------------------- the worker
    def _work(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(0.2)
            self.wake.clear()
            for cam in self.cameras:
                try:
                    self._apply_commands()
                    msg, index, period = cam.slot.take()
                    if msg is not None and not self.stopping.is_set():
                        self._process(cam, msg, index, period)
                except Cancelled:
                    return
                except ImageError as err:
                    cam.errors += 1
                    self.get_logger().error(f"{cam.topic}: {err} ({cam.errors} bad frames so far; repeats within "
                                            f"5 s are not logged)", throttle_duration_sec=5.0)
                except Exception as err:  # noqa: BLE001 - keep the node alive, say what happened
                    cam.errors += 1
                    self.get_logger().error(f"{cam.topic}: tracing failed: {type(err).__name__}: {err} "
                                            f"({cam.errors} failed frames so far)", throttle_duration_sec=5.0)

    def _apply_commands(self) -> None:
        while True:
            try:
                kind, value = self.commands.get_nowait()
            except queue.Empty:
                return
            if kind == "reset":
                for cam in self.cameras:
                    cam.pipeline.reset()
                self.get_logger().info("tracks cleared by ~/reset")
            elif kind == "queries":
                for cam in self.cameras:
                    n = cam.pipeline.tracker.set_external_queries(value, cam.size)
                    text = f"{cam.topic}: following {n['kept']} of {n['given']} query points from ~/queries"
                    if n["kept"] == n["given"]:   # one severity per call site (rclpy refuses a change)
                        self.get_logger().info(text)
                        continue
                    size = f" the {cam.size[1]}x{cam.size[0]} image" if cam.size else " the image"
                    why = {"non_finite": "not finite", "outside": f"outside{size}",
                           "beyond_num_points": f"beyond num_points={cam.pipeline.tracker.config.num_points}"}
                    self.get_logger().warning(text + "; dropped: " + "; ".join(
                        f"{len(idx)} {why[k]} (point{'s' if len(idx) > 1 else ''} "
                        f"{', '.join(map(str, idx[:8]))}{', ...' if len(idx) > 8 else ''})"
                        for k, idx in n["dropped"].items() if len(idx)))
            else:
                self._apply_parameters(value)

    def _apply_parameters(self, changed: dict) -> None:
        self.params.update(changed)
        opts = options(self.params)
        for cam in self.cameras:
            pipe = cam.pipeline
            pipe.trace = trace_config(opts, self.engine.p)
            pipe.tracker.config = tracker_config(opts)
            pipe.frame_gap = opts.frame_gap
            pipe.tracker.limit(opts.num_points)
            if cam.depth is not None:
                cam.depth.tolerance_ns = round(self.params["depth_tolerance"] * 1e9)

    def _warn_reset(self, cam: Camera, reset: Reset) -> None:
        """Rate-limited per kind (rclpy throttles per call site), with the running count."""
        cam.resets += 1
        text = f"{cam.topic}: {reset} ({cam.resets} resets so far; repeats within 5 s are not logged)"
        if reset.kind == "time":   # two call sites on purpose: a size change is not hidden by a time jump
            self.get_logger().warning(text, throttle_duration_sec=5.0)
        else:
            self.get_logger().warning(text, throttle_duration_sec=5.0)

    def _process(self, cam: Camera, msg, index: int, period_ns: float | None = None) -> None:
        if cam.best_effort and not cam.told_large and len(msg.data) > LARGE_SAMPLE_BYTES:
            cam.told_large = True
            self.get_logger().warning(
                f"{cam.topic}: {len(msg.data) / 2**20:.0f} MB frames over best-effort DDS: Fast DDS loses the first "
                f"sample over {LARGE_SAMPLE_BYTES // 2**20} MB of each new publisher (and more under load). Publish "
                f"reliable and subscribe reliable (qos_overrides.<topic>.subscription.reliability:=reliable), or "
                f"publish image/compressed (README, the node: full-resolution images)")
        limit = self.params["max_image_pixels"]
        rgb = compressed_to_rgb(msg, limit) if isinstance(msg, CompressedImage) else image_to_rgb(msg, limit)
        cam.size = rgb.shape[:2]
        t_in = time.monotonic()
        res = cam.pipeline.push(rgb, stamp_ns(msg.header.stamp), index, period_ns)
        if res is None:
            return
        cam.processed += 1
        passes = self.engine.point_passes(len(res.starts), cam.pipeline.trace)
        if passes:
            rate = res.seconds / passes
            self.seconds_per_pass = rate if not self.seconds_per_pass else 0.8 * self.seconds_per_pass + 0.2 * rate
        lift = None
        if cam.depth is not None:   # after tracing: the frame's depth has had that time to arrive
            t0 = time.perf_counter()
            lift = self._lift(cam, res, rgb.shape[:2])
            cam.depth_ms.append(1000 * (time.perf_counter() - t0))
        cam.latency_ms.append(1000 * (time.monotonic() - t_in))
        self._publish(cam, msg.header, rgb, res, lift)

    # ------------------------------------------------------------------ depth
    def _depth_error(self, cam: Camera, kind: str, text: str) -> None:
        """Say why a pair has no 3D: each kind of problem at most every 5 s (one call site, so rclpy's own
        throttle would hide one kind behind another)."""
        cam.depth_errors += 1
        now = time.monotonic()
        if now - cam.said.get(kind, -1e9) >= 5.0:
            cam.said[kind] = now
            self.get_logger().error(f"{cam.topic}: {text}; tracking goes on in 2D ({cam.depth_errors} pairs without "
                                    f"3D so far; repeats within 5 s are not logged)")

    def _lift(self, cam: Camera, res, shape):
        """The 3D of a pair's tracks, or None (no depth for it, or depth or camera_info that cannot be used: said
        why, each kind at most every 5 s)."""
        if cam.info is not None:
            cam.depth.use_camera_info(cam.info)
        try:
            lift = cam.depth.lift(res, shape)
        except (CameraError, DepthError, ImageError) as err:
            kind = "depth" if isinstance(err, ImageError) else type(err).__name__ + str(err)[:24]
            self._depth_error(cam, kind, f"depth: {err}" if isinstance(err, ImageError) else str(err))
            return None
        if lift is None:
            near = cam.depth.nearest_ms
            self._depth_error(cam, "unmatched", (
                f"no depth image within depth_tolerance={self.params['depth_tolerance']} s of this colour frame ("
                f"{'no depth received yet' if near is None else f'the nearest is {near:.0f} ms away'}): check that "
                f"the depth topic is remapped and stamped like the colour images, or raise depth_tolerance"))
        return lift

    # ------------------------------------------------------------------ outputs
    def _publish(self, cam: Camera, header, rgb, res, lift=None) -> None:
        tracks, flow = pair_messages(MESSAGES, header, res, lift)
        cam.pubs["tracks"].publish(tracks)
        cam.pubs["flow"].publish(flow)
        if "cloud" in cam.pubs:
            cam.pubs["cloud"].publish(cloud_message(MESSAGES, header, res, lift))
        wants = {k: cam.pubs[k].get_subscription_count() > 0 for k in ("overlay", "heatmap", "markers")}
        if wants["overlay"] or self.view is not None:
            self._show(cam, "overlay", header, draw_tracks(rgb, res.tracks, cam.trails), wants["overlay"])
        n_maps = self.params["heatmap_points"]
        if (wants["heatmap"] or self.view is not None) and res.maps and n_maps > 0:
            self._show(cam, "heatmap", header, heatmap_image(rgb, res.maps[:n_maps]), wants["heatmap"])
        if wants["markers"]:
            cam.pubs["markers"].publish(self._markers(header, res, lift))

    def _show(self, cam: Camera, name: str, header, rgb: np.ndarray, publish: bool) -> None:
        if publish:
            cam.pubs[name].publish(rgb_to_image(rgb, header))
        if self.view is not None:
            self.view.show(name, rgb, header.frame_id)

    def _markers(self, header, res, lift=None) -> MarkerArray:
        """Visible tracks as points and their motion over the pair: in 3D in the camera's optical frame when the
        pair has depth (``lift``: an arrow per track from its older position to the newer, metres), else as lines
        in the image plane (``marker_scale`` metres per pixel, z = 1 m)."""
        k = self.params["marker_scale"]
        # with depth the previous message's markers are cleared first (the number of arrows changes, and a pair
        # without depth draws in the image plane instead)
        clear = Marker(header=header, ns="kltrace", id=0, action=Marker.DELETEALL)
        pts = Marker(header=header, ns="kltrace", id=0, type=Marker.POINTS, action=Marker.ADD)
        pts.color.g, pts.color.a = 1.0, 1.0
        if lift is not None:
            pts.ns = "kltrace_3d"
            pts.scale.x = pts.scale.y = 0.02
            seconds = (res.newer_stamp_ns - res.older_stamp_ns) / 1e9
            arrows = []
            for i in np.flatnonzero(lift.has_position):
                p = lift.position[i]
                pts.points.append(Point(x=float(p[0]), y=float(p[1]), z=float(p[2])))
                if lift.has_velocity[i]:     # an arrow from the older position to the newer one
                    o = p - lift.velocity[i] * seconds
                    arrow = Marker(header=header, ns="kltrace_3d", id=2 + len(arrows), type=Marker.ARROW,
                                   action=Marker.ADD)
                    arrow.points = [Point(x=float(o[0]), y=float(o[1]), z=float(o[2])),
                                    Point(x=float(p[0]), y=float(p[1]), z=float(p[2]))]
                    arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.005, 0.012, 0.015
                    arrow.color.r, arrow.color.a = 1.0, 1.0
                    arrows.append(arrow)
            return MarkerArray(markers=[clear, pts, *arrows])
        vec = Marker(header=header, ns="kltrace", id=1, type=Marker.LINE_LIST, action=Marker.ADD)
        vec.color.r, vec.color.a = 1.0, 1.0
        pts.scale.x = pts.scale.y = 4 * k
        vec.scale.x = k
        for t in res.tracks:
            if not t.visible:
                continue
            pts.points.append(Point(x=t.x * k, y=t.y * k, z=1.0))
            vec.points += [Point(x=(t.x - t.vx) * k, y=(t.y - t.vy) * k, z=1.0), Point(x=t.x * k, y=t.y * k, z=1.0)]
        return MarkerArray(markers=[clear, pts, vec] if self.params["use_depth"] else [pts, vec])

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        up = max(time.monotonic() - self.started, 1e-3)
        for cam in self.cameras:
            received, dropped = cam.slot.received, cam.slot.dropped
            counts = cam.pipeline.tracker.counts
            lat = float(np.mean(cam.latency_ms)) if cam.latency_ms else 0.0
            st = DiagnosticStatus(name=f"kltrace: {cam.topic}", hardware_id=str(self.device),
                                  level=DiagnosticStatus.OK if cam.processed or not received else DiagnosticStatus.WARN,
                                  message="tracking" if cam.processed else "waiting for frames")
            st.values = [KeyValue(key=k, value=v) for k, v in (
                ("input_rate_hz", f"{received / up:.2f}"), ("processed_rate_hz", f"{cam.processed / up:.2f}"),
                ("received", str(received)), ("processed", str(cam.processed)), ("dropped", str(dropped)),
                ("latency_ms", f"{lat:.1f}"), ("tracks", str(len(cam.pipeline.tracker.tracks))),
                *((k, str(getattr(counts, k))) for k in ("seeded", "reseeded", "lost", "lost_out_of_view",
                                                         "lost_occluded", "lost_reset", "lost_crowded")),
                ("errors", str(cam.errors)), ("resets", str(cam.resets)),
                *((("depth_matched", str(cam.depth.matched)), ("depth_unmatched", str(cam.depth.unmatched)),
                   ("depth_errors", str(cam.depth_errors)),
                   ("depth_ms", f"{np.mean(cam.depth_ms) if cam.depth_ms else 0.0:.2f}")) if cam.depth is not None
                  else ()),
                ("device", str(self.device)), ("model", self.engine.p.name))]
            arr.status.append(st)
        self.diag_pub.publish(arr)

    def shutdown(self) -> None:
        """Stop the worker: a pair in progress is abandoned at its next predictor call (Cancelled)."""
        self.stopping.set()
        self.wake.set()
        self.worker.join(timeout=5.0)
        if self.worker.is_alive():
            self.get_logger().error("the worker did not stop within 5 s")
        if self.view is not None:
            self.view.close()


def main(argv=None) -> int:
    """Run the node until SIGINT/SIGTERM; then stop the worker (it abandons a pair in progress), and only
    after it has joined destroy the node and shut the context down: exit 0, within about a second."""
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = KLTraceNode()
    except Exception as err:  # noqa: BLE001 - startup errors: say what and how to fix, exit non-zero
        rclpy.logging.get_logger("kltrace").fatal(f"cannot start: {err}")
        rclpy.try_shutdown()
        return 1
    # the worker runs many short torch calls, each re-taking the GIL; with the default 5 ms switch interval it
    # waits behind the executor thread at every one of them (a pair took 3x longer under a 30 Hz camera)
    sys.setswitchinterval(0.0005)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:
        node.shutdown()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
