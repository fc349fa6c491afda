"""`kltrace bag`: the node's job on a recorded rosbag2 (mcap or sqlite3), without ROS, via ``rosbags``.

Reads sensor_msgs/Image (or CompressedImage) from one topic and writes a new bag with the same
messages the node publishes: ``/kltrace/tracks`` (kltrace_ros/TrackArray),
``/kltrace/flow`` (kltrace_ros/FlowArray) and ``/kltrace/debug/overlay`` (sensor_msgs/Image),
stamped like the node (header of the newer frame, previous_stamp of the older one).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tqdm import tqdm

MSG_DIR = Path(__file__).resolve().parent.parent / "msg"


def typestore():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name in ("Track", "TrackArray", "FlowArray"):
        path = MSG_DIR / f"{name}.msg"
        if not path.is_file():  # installed package: the definitions ship in share/kltrace_ros/msg
            from ament_index_python.packages import get_package_share_directory

            path = Path(get_package_share_directory("kltrace_ros")) / "msg" / f"{name}.msg"
        types.update(get_types_from_msg(path.read_text(), f"kltrace_ros/msg/{name}"))
    ts.register(types)
    return ts


def process_bag(src: Path, topic: str, dst: Path, pipeline, overlay: bool = True, view=None) -> dict:
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    from kltrace_ros.ros.convert import compressed_to_rgb, image_to_rgb
    from kltrace_ros.viz import draw_tracks

    ts = typestore()
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    stats = {"frames": 0, "pairs": 0, "tracks": 0, "errors": 0}
    history: dict = {}
    if dst.exists():
        raise FileExistsError(f"{dst} exists: choose a new output path")
    with AnyReader([Path(src)], default_typestore=ts) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            raise ValueError(f"topic {topic} is not in {src}; topics: {sorted({c.topic for c in reader.connections})}")
        plugin = StoragePlugin.MCAP if dst.suffix == ".mcap" or str(src).endswith(".mcap") else StoragePlugin.SQLITE3
        with Writer(dst, version=9, storage_plugin=plugin) as writer:
            c_tr = writer.add_connection("/kltrace/tracks", "kltrace_ros/msg/TrackArray", typestore=ts)
            c_fl = writer.add_connection("/kltrace/flow", "kltrace_ros/msg/FlowArray", typestore=ts)
            c_ov = writer.add_connection("/kltrace/debug/overlay", "sensor_msgs/msg/Image", typestore=ts)
            prev = None
            total = sum(c.msgcount for c in conns)
            for conn, t, raw in tqdm(reader.messages(connections=conns), total=total, desc="bag", unit="frame"):
                msg = reader.deserialize(raw, conn.msgtype)
                try:
                    fields = SimpleNamespace(**{k: getattr(msg, k) for k in msg.__dataclass_fields__})
                    rgb = compressed_to_rgb(fields) if "Compressed" in conn.msgtype else image_to_rgb(fields)
                except ValueError as err:
                    stats["errors"] += 1
                    print(f"frame at {t}: skipped: {err}")
                    continue
                stats["frames"] += 1
                stamp = msg.header.stamp
                if prev is None or prev[1].shape != rgb.shape or (prev[0].sec, prev[0].nanosec) > (stamp.sec, stamp.nanosec):
                    pipeline.reset()
                    prev = (stamp, rgb)
                    continue
                res = pipeline.step(prev[1], rgb)
                header = Header(stamp=Time(sec=stamp.sec, nanosec=stamp.nanosec), frame_id=msg.header.frame_id)
                prev_t = Time(sec=prev[0].sec, nanosec=prev[0].nanosec)
                tracks = [T["kltrace_ros/msg/Track"](id=tr.id, x=tr.x, y=tr.y, vx=tr.vx, vy=tr.vy, visible=tr.visible,
                                                     confidence=tr.confidence, age=tr.age) for tr in res.tracks]
                writer.write(c_tr, t, ts.serialize_cdr(T["kltrace_ros/msg/TrackArray"](
                    header=header, previous_stamp=prev_t, tracks=tracks), "kltrace_ros/msg/TrackArray"))
                P32, V3 = T["geometry_msgs/msg/Point32"], T["geometry_msgs/msg/Vector3"]
                flow = T["kltrace_ros/msg/FlowArray"](
                    header=header, previous_stamp=prev_t,
                    points=[P32(x=float(a[0]), y=float(a[1]), z=0.0) for a in res.starts],
                    displacements=[V3(x=float(b[0] - a[0]), y=float(b[1] - a[1]), z=0.0)
                                   for a, b in zip(res.starts, res.ends)],
                    visible=np.asarray(res.visible, bool), confidence=np.asarray(res.confidence, np.float32))
                writer.write(c_fl, t, ts.serialize_cdr(flow, "kltrace_ros/msg/FlowArray"))
                if overlay or view is not None:
                    img = draw_tracks(rgb, res.tracks, history)
                    if view is not None:
                        view.show("overlay", img, msg.header.frame_id)
                if overlay:
                    out = T["sensor_msgs/msg/Image"](header=header, height=img.shape[0], width=img.shape[1],
                                                     encoding="rgb8", is_bigendian=0, step=img.shape[1] * 3,
                                                     data=np.ascontiguousarray(img).reshape(-1))
                    writer.write(c_ov, t, ts.serialize_cdr(out, "sensor_msgs/msg/Image"))
                stats["pairs"] += 1
                stats["tracks"] += len(res.tracks)
                prev = (stamp, rgb)
    return stats
