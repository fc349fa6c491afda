"""kltrace_node as a process with an LRAS in the published checkpoint layout (a tiny random one written here: the
published 5-token patch layout at 256 px, 8-px patches, a narrow LPQ), at the node's default tracking settings:
anchored tracking, the forward-backward check, the model's scales and masks, two cameras. Before, no pair ever gave
tracks (the backward check of anchored tracking raised inside the predictor)."""
import time

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy")

from rosutil import Harness, domain_id, node_log, shifted, start_node, stop_node, textured  # noqa: E402

from kltrace_ros.eval.bench import random_lras  # noqa: E402


def published_files(folder):
    """The two files a user downloads, as upstream writes them: ``cfg`` with the config class, the state dict under
    ``model`` with torch.compile's ``_orig_mod.`` prefix; the quantizer in its own file."""
    pred = random_lras("tiny", bits=6, std=0.5)
    cfg = {"config_class": "LRAS7B_Patch8_RGBConfig", "model_type": "lras", "patch_size": 2, "dropout": 0.0,
           "bias": False, **pred.lras.cfg}
    torch.save({"cfg": cfg, "model": {"_orig_mod." + k: v for k, v in pred.lras.state_dict().items()}},
               folder / "rgb_predictor.pt")
    pred.lpq.save_checkpoint(folder / "rgb_quantizer.pt")
    return folder / "rgb_predictor.pt", folder / "rgb_quantizer.pt"


def test_node_tracks_every_pair_with_a_published_layout_lras_at_default_settings(tmp_path, ros_env):
    """Two cameras sharing the model, the heatmap and overlay subscribed (the KL maps are kept then)."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from kltrace_ros.msg import TrackArray
    from rosutil import encode_image

    model, quantizer = published_files(tmp_path)
    proc = start_node(tmp_path, ros_env, {"model_path": str(model), "quantizer_path": str(quantizer), "num_points": 4,
                                          "masks": 0, "scales": 0, "threads": 2, "inputs": ["cam_a", "cam_b"]},
                      args=["-r", "cam_a:=/test_cam/image_raw", "-r", "cam_b:=/rear/image"])
    h = Harness(domain_id(ros_env), out_ns="/kltrace/cam_a")
    rear = h.node.create_publisher(Image, "/rear/image", qos_profile_sensor_data)
    rear_tracks, heatmaps, overlays = [], [], []
    h.node.create_subscription(TrackArray, "/kltrace/cam_b/tracks", rear_tracks.append, 10)
    h.node.create_subscription(Image, "/kltrace/cam_a/debug/heatmap", heatmaps.append, 10)
    h.node.create_subscription(Image, "/kltrace/cam_a/debug/overlay", overlays.append, 10)
    big = textured()
    try:
        assert h.wait_connected(90, proc) and h.wait_for(lambda: rear.get_subscription_count() > 0, 30, proc), \
            node_log(proc)
        h.spin(1.0)
        seconds = []
        for i in range(4):
            before, before_rear = len(h.tracks), len(rear_tracks)
            h.publish(shifted(big, 3 * i, i))
            msg = encode_image(Image(), shifted(big, -2 * i, 0), "rgb8")
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(h.stamp, 10**9)
            rear.publish(msg)
            if i:
                t0 = time.monotonic()
                assert h.wait_for(lambda: len(h.tracks) > before and len(rear_tracks) > before_rear, 180, proc), \
                    node_log(proc)
                seconds.append(time.monotonic() - t0)
            else:
                h.spin(0.5)
        h.spin(1.0)
        log = node_log(proc)
        assert "model LRAS" in log and "tracing failed" not in log, log
        assert len(h.tracks) == 3 and len(rear_tracks) == 3
        for msg in h.tracks + rear_tracks:   # every pair: the four tracks, finite, in the image (a random model
            # cannot follow the motion: what a track's position is worth is for the published weights to say)
            assert len(msg.tracks) == 4
            xy = np.array([[t.x, t.y] for t in msg.tracks])
            assert np.isfinite(xy).all() and (xy >= -0.5).all() and (xy[:, 0] <= 199.5).all()
        assert heatmaps and overlays
        print(f"LRAS tiny (published layout), node, two cameras, default tracking: seconds per pair {seconds}")
    finally:
        assert stop_node(proc) < 5.0
        h.close()
