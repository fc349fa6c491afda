"""``kltrace bag``: the node's job on a recorded rosbag2 (mcap or sqlite3), without ROS, via ``rosbags``.

Reads sensor_msgs/Image (or CompressedImage) from one topic and writes a new bag with the same
messages the node publishes: ``/kltrace/tracks`` (kltrace_ros/TrackArray),
``/kltrace/flow`` (kltrace_ros/FlowArray) and ``/kltrace/debug/overlay`` (sensor_msgs/Image),
stamped like the node (header of the newer frame, previous_stamp of the older one).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from tqdm import tqdm

from .drawing import Trails, draw_tracks
from .files import complete_or_absent
from .image_msgs import ImageError, compressed_to_rgb, image_to_rgb, rgb_to_image
from .messages import MessageTypes, pair_messages, stamp_ns

MSG_DIR = Path(__file__).resolve().parents[2] / "msg"
OUTPUTS = {"tracks": ("/kltrace/tracks", "kltrace_ros/msg/TrackArray"),
           "flow": ("/kltrace/flow", "kltrace_ros/msg/FlowArray"),
           "overlay": ("/kltrace/debug/overlay", "sensor_msgs/msg/Image")}


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
                        bools=lambda v: np.asarray(v, bool), floats=lambda v: np.asarray(v, np.float32))


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


def _image_connections(reader, src: Path, topic: str) -> list:
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        raise ValueError(f"topic {topic} is not in {src}; topics: {sorted({c.topic for c in reader.connections})}")
    wrong = sorted({c.msgtype for c in conns} - set(IMAGE_TYPES))
    if wrong:
        raise ValueError(f"topic {topic} in {src} carries {', '.join(wrong)}, not sensor_msgs/Image or "
                         f"CompressedImage: choose an image topic")
    return conns


def write_image_bag(path: Path, frames, topic: str = "/camera/image_raw", rate: float = 10.0,
                    frame_id: str = "camera", start_ns: int = 1_700_000_000 * 10**9, mcap: bool = True) -> int:
    """A rosbag2 of rgb8 sensor_msgs/Image at ``rate`` Hz, as a camera driver would record it (benchmarks, tests);
    the number of frames written."""
    ts = typestore()
    T = ts.types
    n = 0
    with Writer(Path(path), version=9, storage_plugin=StoragePlugin.MCAP if mcap else StoragePlugin.SQLITE3) as w:
        conn = w.add_connection(topic, IMAGE_TYPES[0], typestore=ts)
        for i, rgb in enumerate(frames):
            t = start_ns + round(i * 1e9 / rate)
            header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9),
                                              frame_id=frame_id)
            w.write(conn, t, ts.serialize_cdr(_image_msg(ts, header, rgb), IMAGE_TYPES[0]))
            n += 1
    return n


def process_bag(src: Path, topic: str, dst: Path, pipeline, overlay: bool = True, view=None, progress=tqdm) -> dict:
    """Push every image of ``topic`` through ``pipeline`` (a TrackingPipeline); write its messages to ``dst``
    (a rosbag2 folder, complete or absent: written inside ``dst.partial/`` and moved at the end).
    ``progress``: the frame progress bar, a tqdm-like callable (Ray workers pass Ray's)."""
    src, dst = Path(src), Path(dst)
    ts = typestore()
    reader = _open(src, ts)
    try:
        conns = _image_connections(reader, src, topic)
        mcap = dst.suffix == ".mcap" or src.suffix == ".mcap" or (src.is_dir() and any(src.glob("*.mcap")))
        plugin = StoragePlugin.MCAP if mcap else StoragePlugin.SQLITE3   # the input's storage, or what dst says
        with complete_or_absent(dst, replace=False, folder=True) as tmp, Writer(tmp, version=9, storage_plugin=plugin) as writer:
            return _run(reader, conns, writer, ts, pipeline, overlay, view, progress)
    except Exception as err:  # noqa: BLE001 - a damaged bag midway: one line, no partial output
        if isinstance(err, (ValueError, FileExistsError, IsADirectoryError)):
            raise
        raise ValueError(f"reading {src} failed: {type(err).__name__}: {err}") from err
    finally:
        reader.close()


def _run(reader, conns, writer, ts, pipeline, overlay: bool, view, progress) -> dict:
    types = message_types(ts)
    stats = {"frames": 0, "pairs": 0, "tracks": 0, "errors": 0}
    trails = Trails()
    out = {k: writer.add_connection(name, kind, typestore=ts) for k, (name, kind) in OUTPUTS.items()}
    for conn, t, raw in progress(reader.messages(connections=conns), total=sum(c.msgcount for c in conns),
                             desc="bag", unit="frame"):
        msg = reader.deserialize(raw, conn.msgtype)
        try:
            rgb = _to_rgb(msg, conn.msgtype)
        except ImageError as err:
            stats["errors"] += 1
            print(f"frame at {t}: skipped: {err}")
            continue
        stats["frames"] += 1
        res = pipeline.push(rgb, stamp_ns(msg.header.stamp), stats["frames"])
        if res is None:
            continue
        for key, m in zip(("tracks", "flow"), pair_messages(types, msg.header, res)):
            writer.write(out[key], t, ts.serialize_cdr(m, OUTPUTS[key][1]))
        if overlay or view is not None:
            img = draw_tracks(rgb, res.tracks, trails)
            if view is not None:
                view.show("overlay", img, msg.header.frame_id)
            if overlay:
                writer.write(out["overlay"], t, ts.serialize_cdr(_image_msg(ts, msg.header, img), OUTPUTS["overlay"][1]))
        stats["pairs"] += 1
        stats["tracks"] += len(res.tracks)
    return stats
