"""``kltrace bag``: the node's job on a recorded rosbag2 (mcap or sqlite3), without ROS, via ``rosbags``.

Reads sensor_msgs/Image (or CompressedImage) from one topic and writes a new bag with the same
messages the node publishes: ``/kltrace/tracks`` (kltrace_ros/TrackArray),
``/kltrace/flow`` (kltrace_ros/FlowArray) and ``/kltrace/debug/overlay`` (sensor_msgs/Image),
stamped like the node (header of the newer frame, previous_stamp of the older one). With a depth topic and a
camera_info topic (an RGB-D recording), the tracks carry 3D as the node's with ``use_depth`` and
``/kltrace/tracks_cloud`` (sensor_msgs/PointCloud2) is written too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from tqdm import tqdm

from kltrace_ros.tracking.depth import CameraError, DepthError, DepthStream

from .drawing import Trails, draw_tracks
from .files import complete_or_absent
from .image_msgs import ImageError, compressed_to_rgb, depth_to_metres, image_to_rgb, rgb_to_image
from .messages import MessageTypes, cloud_message, pair_messages, stamp_ns

MSG_DIR = Path(__file__).resolve().parents[2] / "msg"
OUTPUTS = {"tracks": ("/kltrace/tracks", "kltrace_ros/msg/TrackArray"),
           "flow": ("/kltrace/flow", "kltrace_ros/msg/FlowArray"),
           "overlay": ("/kltrace/debug/overlay", "sensor_msgs/msg/Image"),
           "cloud": ("/kltrace/tracks_cloud", "sensor_msgs/msg/PointCloud2")}
DEPTH_TOLERANCE_NS = 20_000_000   # a colour frame takes the depth image nearest in stamp within 20 ms (the node's
#                                   default depth_tolerance)


def _msg_definition(name: str) -> str:
    path = MSG_DIR / f"{name}.msg"
    if not path.is_file():  # installed package: the definitions ship in share/kltrace_ros/msg
        from ament_index_python.packages import get_package_share_directory  # only in a ROS workspace

        path = Path(get_package_share_directory("kltrace_ros")) / "msg" / f"{name}.msg"
    return path.read_text()


def typestore():
    """ROS 2 message types with ours registered."""
    ts = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name in ("Track", "TrackArray", "FlowArray"):
        types.update(get_types_from_msg(_msg_definition(name), f"kltrace_ros/msg/{name}"))
    ts.register(types)
    return ts


def message_types(ts) -> MessageTypes:
    T = ts.types
    return MessageTypes(Track=T["kltrace_ros/msg/Track"], TrackArray=T["kltrace_ros/msg/TrackArray"],
                        FlowArray=T["kltrace_ros/msg/FlowArray"], Point32=T["geometry_msgs/msg/Point32"],
                        Vector3=T["geometry_msgs/msg/Vector3"], Time=T["builtin_interfaces/msg/Time"],
                        Point=T["geometry_msgs/msg/Point"], PointCloud2=T["sensor_msgs/msg/PointCloud2"],
                        PointField=T["sensor_msgs/msg/PointField"], bools=lambda v: np.asarray(v, bool),
                        floats=lambda v: np.asarray(v, np.float32), uint8s=lambda v: np.asarray(v, np.uint8))


def _to_rgb(msg, msgtype: str) -> np.ndarray:
    return compressed_to_rgb(msg) if "Compressed" in msgtype else image_to_rgb(msg)


def _image_msg(ts, header, rgb: np.ndarray):
    """The rosbags twin of :func:`image_msgs.rgb_to_image` (cv_bridge builds the fields)."""
    m = rgb_to_image(rgb)
    return ts.types["sensor_msgs/msg/Image"](header=header, height=m.height, width=m.width, encoding=m.encoding,
                                             is_bigendian=m.is_bigendian, step=m.step,
                                             data=np.frombuffer(bytes(m.data), np.uint8))


IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def _open(src: Path, ts) -> AnyReader:
    if not Path(src).exists():
        raise FileNotFoundError(f"bag {src} does not exist")
    try:
        reader = AnyReader([Path(src)], default_typestore=ts)
        reader.open()
    except Exception as err:  # noqa: BLE001 - rosbags raises many kinds; the user needs one line
        raise ValueError(f"cannot read {src} as a rosbag2 (mcap or sqlite3): {type(err).__name__}: {err}") from err
    return reader


def _image_connections(reader, src: Path, topic: str, types=IMAGE_TYPES) -> list:
    """The connections of ``topic`` in the bag, after checking that it is there and carries one of ``types``."""
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        raise ValueError(f"topic {topic} is not in {src}; topics: {sorted({c.topic for c in reader.connections})}")
    wrong = sorted({c.msgtype for c in conns} - set(types))
    if wrong:
        names = [t.replace("/msg/", "/") for t in types]
        raise ValueError(f"topic {topic} in {src} carries {', '.join(wrong)}, not {' or '.join(names)}: choose "
                         f"a {names[0]} topic")
    return conns


def write_image_bag(path: Path, frames, topic: str = "/camera/image_raw", rate: float = 10.0,
                    frame_id: str = "camera", start_ns: int = 1_700_000_000 * 10**9, mcap: bool = True,
                    depths=None, camera=None) -> int:
    """A rosbag2 of rgb8 sensor_msgs/Image at ``rate`` Hz, as a camera driver would record it (benchmarks, tests);
    the number of frames written. An RGB-D recording: ``depths`` ((topic, one (H,W) uint16 millimetre image per
    frame), written as 16UC1 just after its colour frame) and ``camera`` ((topic, K 3x3, plumb_bob D): camera_info
    with every frame)."""
    ts = typestore()
    T = ts.types
    n = 0
    with Writer(Path(path), version=9, storage_plugin=StoragePlugin.MCAP if mcap else StoragePlugin.SQLITE3) as w:
        conn = w.add_connection(topic, IMAGE_TYPES[0], typestore=ts)
        if depths is not None:
            depth_topic, depths = depths
            info_topic, K, D = camera
            dconn = w.add_connection(depth_topic, IMAGE_TYPES[0], typestore=ts)
            iconn = w.add_connection(info_topic, "sensor_msgs/msg/CameraInfo", typestore=ts)
        for i, rgb in enumerate(frames):
            t = start_ns + round(i * 1e9 / rate)
            header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9),
                                              frame_id=frame_id)
            w.write(conn, t, ts.serialize_cdr(_image_msg(ts, header, rgb), IMAGE_TYPES[0]))
            if depths is not None:
                d = np.ascontiguousarray(depths[i], "<u2")
                msg = T["sensor_msgs/msg/Image"](header=header, height=d.shape[0], width=d.shape[1], encoding="16UC1",
                                                 is_bigendian=0, step=2 * d.shape[1], data=d.view(np.uint8).reshape(-1))
                w.write(dconn, t + 1_000_000, ts.serialize_cdr(msg, IMAGE_TYPES[0]))
                roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
                info = T["sensor_msgs/msg/CameraInfo"](
                    header=header, height=d.shape[0], width=d.shape[1], distortion_model="plumb_bob",
                    d=np.asarray(D, np.float64), k=np.asarray(K, np.float64).reshape(-1), r=np.eye(3).reshape(-1),
                    p=np.concatenate([np.asarray(K, np.float64), np.zeros((3, 1))], 1).reshape(-1),
                    binning_x=0, binning_y=0, roi=roi)
                w.write(iconn, t + 2_000_000, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            n += 1
    return n


def process_bag(src: Path, topic: str, dst: Path, pipeline, overlay: bool = True, view=None, progress=tqdm,
                depth_topic: str | None = None, camera_info_topic: str | None = None) -> dict:
    """Push every image of ``topic`` through ``pipeline`` (a TrackingPipeline); write its messages to ``dst``
    (a rosbag2 folder, complete or absent: written inside ``dst.partial/`` and moved at the end).
    ``progress``: the frame progress bar, a tqdm-like callable (Ray workers pass Ray's). ``depth_topic`` and
    ``camera_info_topic`` (both or neither): an aligned depth image and the colour camera's camera_info, for
    tracks in 3D."""
    if (depth_topic is None) != (camera_info_topic is None):
        raise ValueError("give --depth-topic and --camera-info-topic together (tracks in 3D need both)")
    src, dst = Path(src), Path(dst)
    ts = typestore()
    reader = _open(src, ts)
    try:
        conns = _image_connections(reader, src, topic)
        rgbd = None
        if depth_topic is not None:
            rgbd = (_image_connections(reader, src, depth_topic, IMAGE_TYPES[:1]),
                    _image_connections(reader, src, camera_info_topic, ("sensor_msgs/msg/CameraInfo",)))
        mcap = dst.suffix == ".mcap" or src.suffix == ".mcap" or (src.is_dir() and any(src.glob("*.mcap")))
        plugin = StoragePlugin.MCAP if mcap else StoragePlugin.SQLITE3   # the input's storage, or what dst says
        with complete_or_absent(dst, replace=False, folder=True) as tmp, Writer(tmp, version=9, storage_plugin=plugin) as writer:
            return _run(reader, conns, writer, ts, pipeline, overlay, view, progress, rgbd)
    except Exception as err:  # noqa: BLE001 - a damaged bag midway: one line, no partial output
        if isinstance(err, (ValueError, FileExistsError, IsADirectoryError)):
            raise
        raise ValueError(f"reading {src} failed: {type(err).__name__}: {err}") from err
    finally:
        reader.close()


def _run(reader, conns, writer, ts, pipeline, overlay: bool, view, progress, rgbd=None) -> dict:
    """Every colour frame through the pipeline. With ``rgbd`` ((depth connections, camera_info connections)), a
    colour frame waits until the depth recorded after it has been read (a camera publishes both with one stamp,
    in either order), then its tracks are lifted to 3D."""
    types = message_types(ts)
    stats = {"frames": 0, "pairs": 0, "tracks": 0, "errors": 0}
    trails = Trails()
    out = {k: writer.add_connection(name, kind, typestore=ts) for k, (name, kind) in OUTPUTS.items()
           if k != "cloud" or rgbd}
    depth = DepthStream(DEPTH_TOLERANCE_NS, decode=depth_to_metres) if rgbd else None
    if rgbd:
        stats["pairs_3d"] = 0
    pending, told = [], set()

    def say(kind: str, text: str) -> None:
        if kind not in told:      # once per kind of problem; the count is in the stats
            told.add(kind)
            print(f"{text}; those pairs are written in 2D")

    def frame(t, msg, msgtype) -> None:
        try:
            rgb = _to_rgb(msg, msgtype)
        except ImageError as err:
            stats["errors"] += 1
            print(f"frame at {t}: skipped: {err}")
            return
        stats["frames"] += 1
        res = pipeline.push(rgb, stamp_ns(msg.header.stamp), stats["frames"])
        if res is None:
            return
        lift = None
        if depth is not None:
            try:
                lift = depth.lift(res, rgb.shape[:2])
                if lift is None:
                    say("unmatched", f"no depth within {DEPTH_TOLERANCE_NS / 1e6:.0f} ms of the colour frame at {t}")
            except (CameraError, DepthError, ImageError) as err:
                say(type(err).__name__, str(err))
            stats["pairs_3d"] += lift is not None
        for key, m in zip(("tracks", "flow"), pair_messages(types, msg.header, res, lift)):
            writer.write(out[key], t, ts.serialize_cdr(m, OUTPUTS[key][1]))
        if depth is not None:
            writer.write(out["cloud"], t, ts.serialize_cdr(cloud_message(types, msg.header, res, lift),
                                                          OUTPUTS["cloud"][1]))
        if overlay or view is not None:
            img = draw_tracks(rgb, res.tracks, trails)
            if view is not None:
                view.show("overlay", img, msg.header.frame_id)
            if overlay:
                writer.write(out["overlay"], t, ts.serialize_cdr(_image_msg(ts, msg.header, img), OUTPUTS["overlay"][1]))
        stats["pairs"] += 1
        stats["tracks"] += len(res.tracks)

    extra = [*rgbd[0], *rgbd[1]] if rgbd else []
    colour = {c.id for c in conns}
    for conn, t, raw in progress(reader.messages(connections=[*conns, *extra]),
                                 total=sum(c.msgcount for c in [*conns, *extra]), desc="bag", unit="message"):
        msg = reader.deserialize(raw, conn.msgtype)
        if conn.id in colour:
            if depth is None:
                frame(t, msg, conn.msgtype)
            else:
                pending.append((t, msg, conn.msgtype))
        elif conn.msgtype.endswith("CameraInfo"):
            depth.use_camera_info(msg)
        else:
            depth.add(stamp_ns(msg.header.stamp), msg)
        # colour frames wait for the depth recorded up to a second after them
        while pending and (depth.latest_ns is not None and depth.latest_ns >= stamp_ns(pending[0][1].header.stamp)
                           or t - pending[0][0] > 1_000_000_000):
            frame(*pending.pop(0))
    for item in pending:
        frame(*item)
    return stats
