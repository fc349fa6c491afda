"""kltrace_node: camera images in; tracks, sparse flow, KL heatmaps, overlays, markers and diagnostics out.

Thin ROS 2 layer over the ROS-free core. Subscription callbacks only store the newest message
of each input; one worker thread traces the newest pair (older = the frame the tracks live on,
newer = the latest frame), so when the camera is faster than inference intermediate frames are
dropped and counted, never queued.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Point32, PolygonStamped, Vector3
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from kltrace_ros.msg import FlowArray, Track, TrackArray
from kltrace_ros.ros.convert import ImageError, compressed_to_rgb, fill_image, image_to_rgb
from kltrace_ros.viz import draw_tracks, heatmap_image

# name: (default, description, live) -- every parameter, declared in one place
PARAMETERS = {
    "inputs": (["image"], "image topics (relative; remap them); outputs are namespaced per input when several", False),
    "compressed": (False, "subscribe to <input>/compressed (sensor_msgs/CompressedImage)", False),
    "qos": ("sensor_data", "input QoS: sensor_data (best effort, depth 5) | reliable", False),
    "device": ("auto", "auto | cpu | cuda (bf16 on cuda; CPU fallback with a warning)", False),
    "model_path": ("", "model file; empty = the embedded default model", False),
    "quantizer_path": ("", "LPQ file to pair with a published LRAS model_path", False),
    "threads": (0, "torch CPU threads (0 = all cores)", False),
    "frame_gap": (1, "trace between frames at least this many frames apart", True),
    "keypoints": ("grid", "grid | features | topic (~/queries, geometry_msgs/PolygonStamped)", False),
    "num_points": (64, "maximum number of tracks", True),
    "max_occluded_frames": (5, "frames an occluded track is kept before it is dropped", True),
    "masks": (0, "reveal masks per scale (0 = the model's default)", True),
    "scales": (0, "zoom scales (0 = the model's default)", True),
    "occlusion_threshold": (-1.0, "peak score below which a point is occluded (-1 = the model's calibration)", True),
    "heatmap_points": (4, "how many tracks' KL maps ~/debug/heatmap shows", True),
    "marker_scale": (0.001, "metres per pixel for ~/markers (drawn in the image plane, z = 1 m)", True),
    "foxglove_port": (0, "serve overlay and heatmap to Foxglove on ws://127.0.0.1:PORT (0 = off)", False),
}
LIVE_CHECKS = {
    "frame_gap": lambda v: isinstance(v, int) and 1 <= v <= 100 or "frame_gap must be an integer in [1, 100]",
    "num_points": lambda v: isinstance(v, int) and 1 <= v <= 4096 or "num_points must be an integer in [1, 4096]",
    "max_occluded_frames": lambda v: isinstance(v, int) and 0 <= v <= 1000 or "max_occluded_frames must be in [0, 1000]",
    "masks": lambda v: isinstance(v, int) and 0 <= v <= 32 or "masks must be an integer in [0, 32] (0 = model default)",
    "scales": lambda v: isinstance(v, int) and 0 <= v <= 8 or "scales must be an integer in [0, 8] (0 = model default)",
    "occlusion_threshold": lambda v: isinstance(v, float) and (v == -1.0 or v >= 0.0)
    or "occlusion_threshold must be -1 (model default) or >= 0",
    "heatmap_points": lambda v: isinstance(v, int) and 0 <= v <= 64 or "heatmap_points must be in [0, 64]",
    "marker_scale": lambda v: isinstance(v, float) and v > 0 or "marker_scale must be > 0",
}


def stamp_ns(t) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


@dataclass
class InputState:
    """Everything the node keeps for one camera input."""
    topic: str
    pipeline: object
    pubs: dict
    latest: object = None                 # newest unprocessed message
    received: int = 0
    dropped: int = 0
    processed: int = 0
    older: tuple | None = None            # (header, rgb, index) the tracks live on
    last_stamp: int | None = None
    latency_ms: list = field(default_factory=list)
    history: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class KLTraceNode(Node):
    def __init__(self, **kwargs):
        super().__init__("kltrace", **kwargs)
        for name, (default, desc, live) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(
                description=desc + ("" if live else " (needs a restart)")))
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        self.params = p
        for name, check in LIVE_CHECKS.items():
            ok = check(p[name])
            if ok is not True:
                raise ValueError(f"parameter {name}={p[name]!r}: {ok}")
        if p["keypoints"] not in ("grid", "features", "topic"):
            raise ValueError(f"parameter keypoints={p['keypoints']!r}: use grid, features or topic")
        if not 0 <= p["foxglove_port"] <= 65535:
            raise ValueError(f"parameter foxglove_port={p['foxglove_port']}: use 0 (off) or a TCP port")
        if p["qos"] not in ("sensor_data", "reliable"):
            raise ValueError(f"parameter qos={p['qos']!r}: use sensor_data or reliable")
        self.engine, self.device = self._load_engine(p)
        self.view = None
        if p["foxglove_port"] > 0:
            from kltrace_ros.foxglove_view import FoxgloveView

            self.view = FoxgloveView(p["foxglove_port"])
            self.get_logger().info(f"Foxglove live view on ws://127.0.0.1:{self.view.port}")
        self.add_on_set_parameters_callback(self._on_parameters)
        self.wake = threading.Event()
        self._errors: dict = {}
        self.stopping = threading.Event()
        qos = qos_profile_sensor_data if p["qos"] == "sensor_data" else QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.inputs: list[InputState] = []
        several = len(p["inputs"]) > 1
        for topic in p["inputs"]:
            prefix = "~/" + topic.strip("/").replace("/", "_") + "/" if several else "~/"
            pubs = {
                "tracks": self.create_publisher(TrackArray, prefix + "tracks", 10),
                "flow": self.create_publisher(FlowArray, prefix + "flow", 10),
                "heatmap": self.create_publisher(Image, prefix + "debug/heatmap", 2),
                "overlay": self.create_publisher(Image, prefix + "debug/overlay", 2),
                "markers": self.create_publisher(MarkerArray, prefix + "markers", 2),
            }
            state = InputState(topic, self._make_pipeline(), pubs)
            self.inputs.append(state)
            if p["compressed"]:
                self.create_subscription(CompressedImage, topic + "/compressed",
                                         lambda m, s=state: self._on_image(s, m), qos)
            else:
                self.create_subscription(Image, topic, lambda m, s=state: self._on_image(s, m), qos)
        if p["keypoints"] == "topic":
            self.create_subscription(PolygonStamped, "~/queries", self._on_queries, 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.started = time.monotonic()
        self.create_timer(1.0, self._publish_diagnostics)
        self.worker = threading.Thread(target=self._work, name="kltrace-worker", daemon=True)
        self.worker.start()
        self.get_logger().info(f"kltrace ready: model {self.engine.p.name} on {self.device}, inputs {p['inputs']}"
                               f"{' (compressed)' if p['compressed'] else ''}, {p['num_points']} points")

    # ------------------------------------------------------------ setup
    def _load_engine(self, p):
        import torch

        from kltrace_ros.tracing.engine import Engine, TraceConfig
        from kltrace_ros.tracing.predictor import load_predictor, resolve_device

        if p["threads"] > 0:
            torch.set_num_threads(p["threads"])
        device = resolve_device(p["device"])
        if p["device"] == "cuda" and device.type == "cpu":
            self.get_logger().warning("device 'cuda' requested but CUDA is not available: running on the CPU")
        pred = load_predictor(p["model_path"] or None, device, p["quantizer_path"] or None)
        engine = Engine(pred)
        engine.cfg = self._trace_config(engine)
        return engine, device

    def _trace_config(self, engine=None):
        from kltrace_ros.tracing.engine import TraceConfig

        p = self.params
        thr = p["occlusion_threshold"]
        if thr < 0:
            thr = getattr((engine or self.engine).p, "occlusion_threshold", {}).get("kl", 0.0)
        return TraceConfig(masks=p["masks"] or None, scales=p["scales"] or None, occlusion_threshold=thr,
                           keep_maps=True)

    def _make_pipeline(self):
        from kltrace_ros.tracking.pipeline import TrackingPipeline
        from kltrace_ros.tracking.tracker import TrackerConfig

        p = self.params
        return TrackingPipeline(self.engine, TrackerConfig(num_points=p["num_points"], source=p["keypoints"],
                                                           max_occluded_frames=p["max_occluded_frames"]))

    def _on_parameters(self, params):
        for prm in params:
            if prm.name not in PARAMETERS:
                continue
            if not PARAMETERS[prm.name][2]:
                return SetParametersResult(successful=False, reason=f"{prm.name} cannot change at run time: restart "
                                                                    f"the node with the new value")
            check = LIVE_CHECKS.get(prm.name)
            ok = check(prm.value) if check else True
            if ok is not True:
                return SetParametersResult(successful=False, reason=ok)
        for prm in params:
            self.params[prm.name] = prm.value
        self.engine.cfg = self._trace_config()
        for s in self.inputs:
            cfg = s.pipeline.tracker.config
            cfg.num_points = self.params["num_points"]
            cfg.max_occluded_frames = self.params["max_occluded_frames"]
            if len(s.pipeline.tracker.tracks) > cfg.num_points:
                del s.pipeline.tracker.tracks[cfg.num_points:]
        return SetParametersResult(successful=True)

    # -------------------------------------------------------- callbacks
    def _on_image(self, state: InputState, msg) -> None:
        with state.lock:
            state.received += 1
            if state.latest is not None:
                state.dropped += 1
            state.latest = msg
        self.wake.set()

    def _on_queries(self, msg: PolygonStamped) -> None:
        pts = [[p.x, p.y] for p in msg.polygon.points]
        for s in self.inputs:
            with s.lock:
                s.pipeline.tracker.set_external_queries(pts)
        self.get_logger().info(f"following {len(pts)} query points from ~/queries")

    def _on_reset(self, request, response):
        for s in self.inputs:
            with s.lock:
                s.pipeline.reset()
                s.older = None
        response.success, response.message = True, "tracks cleared"
        self.get_logger().info("tracks cleared by ~/reset")
        return response

    # ----------------------------------------------------------- worker
    def _work(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(0.2)
            self.wake.clear()
            for s in self.inputs:
                with s.lock:
                    msg, s.latest = s.latest, None
                if msg is None or self.stopping.is_set():
                    continue
                try:
                    self._process(s, msg)
                except ImageError as err:
                    self._error(f"{s.topic}: {err}")
                except Exception as err:  # noqa: BLE001 - keep the node alive, say what happened
                    self._error(f"{s.topic}: tracing failed: {type(err).__name__}: {err}")

    def _error(self, text: str, period: float = 5.0) -> None:
        """Log an error at most once per ``period`` per distinct message, saying how many were suppressed."""
        now = time.monotonic()
        last, suppressed = self._errors.get(text, (None, 0))
        if last is None or now - last >= period:
            more = f" ({suppressed} more since last report)" if suppressed else ""
            self.get_logger().error(text + more)
            self._errors[text] = (now, 0)
        else:
            self._errors[text] = (last, suppressed + 1)

    def _process(self, s: InputState, msg) -> None:
        rgb = compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
        t_in = time.monotonic()
        stamp = stamp_ns(msg.header.stamp)
        index = s.received
        if s.older is not None:
            old_header, old_rgb, old_index = s.older
            if stamp < stamp_ns(old_header.stamp):
                self.get_logger().warning(f"{s.topic}: time jumped back ({stamp_ns(old_header.stamp) - stamp} ns): "
                                          f"tracks reset (bag loop or simulation reset?)")
                s.pipeline.reset()
                s.older = None
            elif old_rgb.shape != rgb.shape:
                self.get_logger().warning(f"{s.topic}: image size changed {old_rgb.shape[1]}x{old_rgb.shape[0]} -> "
                                          f"{rgb.shape[1]}x{rgb.shape[0]}: tracks reset")
                s.pipeline.reset()
                s.older = None
        if s.older is None:
            s.older = (msg.header, rgb, index)
            return
        if index - s.older[2] < self.params["frame_gap"]:
            return
        old_header = s.older[0]
        res = s.pipeline.step(s.older[1], rgb)
        s.older = (msg.header, rgb, index)
        s.processed += 1
        s.latency_ms.append(1000 * (time.monotonic() - t_in))
        del s.latency_ms[:-50]
        self._publish(s, msg.header, old_header, rgb, res)

    # ---------------------------------------------------------- outputs
    def _publish(self, s: InputState, header, old_header, rgb, res) -> None:
        prev = Time(sec=old_header.stamp.sec, nanosec=old_header.stamp.nanosec)
        tracks = TrackArray(header=header, previous_stamp=prev, tracks=[
            Track(id=t.id, x=t.x, y=t.y, vx=t.vx, vy=t.vy, visible=t.visible, confidence=t.confidence, age=t.age)
            for t in res.tracks])
        s.pubs["tracks"].publish(tracks)
        flow = FlowArray(header=header, previous_stamp=prev)
        flow.points = [Point32(x=float(a[0]), y=float(a[1]), z=0.0) for a in res.starts]
        flow.displacements = [Vector3(x=float(b[0] - a[0]), y=float(b[1] - a[1]), z=0.0)
                              for a, b in zip(res.starts, res.ends)]
        flow.visible = [bool(v) for v in res.visible]
        flow.confidence = [float(c) for c in res.confidence]
        s.pubs["flow"].publish(flow)
        if s.pubs["overlay"].get_subscription_count() > 0 or self.view is not None:
            overlay = draw_tracks(rgb, res.tracks, s.history)
            if s.pubs["overlay"].get_subscription_count() > 0:
                s.pubs["overlay"].publish(fill_image(Image(header=header), overlay))
            if self.view is not None:
                self.view.show("overlay", overlay, header.frame_id)
        n_maps = self.params["heatmap_points"]
        if (s.pubs["heatmap"].get_subscription_count() > 0 or self.view is not None) and res.maps and n_maps > 0:
            heat = heatmap_image(rgb, res.maps[:n_maps])
            if s.pubs["heatmap"].get_subscription_count() > 0:
                s.pubs["heatmap"].publish(fill_image(Image(header=header), heat))
            if self.view is not None:
                self.view.show("heatmap", heat, header.frame_id)
        if s.pubs["markers"].get_subscription_count() > 0:
            s.pubs["markers"].publish(self._markers(header, res.tracks))

    def _markers(self, header, tracks) -> MarkerArray:
        k = self.params["marker_scale"]
        pts = Marker(header=header, ns="kltrace", id=0, type=Marker.POINTS, action=Marker.ADD)
        pts.scale.x = pts.scale.y = 4 * k
        pts.color.g, pts.color.a = 1.0, 1.0
        vec = Marker(header=header, ns="kltrace", id=1, type=Marker.LINE_LIST, action=Marker.ADD)
        vec.scale.x = k
        vec.color.r, vec.color.a = 1.0, 1.0
        for t in tracks:
            if not t.visible:
                continue
            pts.points.append(Point(x=t.x * k, y=t.y * k, z=1.0))
            vec.points += [Point(x=(t.x - t.vx) * k, y=(t.y - t.vy) * k, z=1.0), Point(x=t.x * k, y=t.y * k, z=1.0)]
        return MarkerArray(markers=[pts, vec])

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        up = max(time.monotonic() - self.started, 1e-3)
        for s in self.inputs:
            lat = float(np.mean(s.latency_ms)) if s.latency_ms else 0.0
            st = DiagnosticStatus(name=f"kltrace: {s.topic}", hardware_id=str(self.device),
                                  level=DiagnosticStatus.OK if s.processed or not s.received else DiagnosticStatus.WARN,
                                  message="tracking" if s.processed else "waiting for frames")
            st.values = [KeyValue(key=k, value=v) for k, v in (
                ("input_rate_hz", f"{s.received / up:.2f}"), ("processed_rate_hz", f"{s.processed / up:.2f}"),
                ("received", str(s.received)), ("processed", str(s.processed)), ("dropped", str(s.dropped)),
                ("latency_ms", f"{lat:.1f}"), ("tracks", str(len(s.pipeline.tracker.tracks))),
                ("device", str(self.device)), ("model", self.engine.p.name))]
            arr.status.append(st)
        self.diag_pub.publish(arr)

    def shutdown(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.worker.join(timeout=1.0)
        if self.view is not None:
            self.view.close()


def main(argv=None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        node = KLTraceNode()
    except Exception as err:  # noqa: BLE001 - startup errors: say what and how to fix, exit non-zero
        rclpy.logging.get_logger("kltrace").fatal(f"cannot start: {err}")
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
