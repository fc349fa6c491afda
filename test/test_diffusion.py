"""SVD and Cosmos behind the predictor protocol, with tiny random-config models built and saved here
(diffusers' and transformers' own small configs; nothing is downloaded)."""
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import (AutoencoderKLTemporalDecoder, AutoencoderKLWan, CosmosTransformer3DModel,  # noqa: E402
                       EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, UNetSpatioTemporalConditionModel)
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection,  # noqa: E402
                          PreTrainedTokenizerFast, T5Config, T5EncoderModel)

from kltrace_ros.models.checkpoint import CheckpointError  # noqa: E402
from kltrace_ros.models.diffusion.predictor import DiffusionPredictor  # noqa: E402
from kltrace_ros.models.diffusion.spec import DiffusionSettings, parse_spec  # noqa: E402
from kltrace_ros.models.registry import load_predictor  # noqa: E402
from kltrace_ros.tracing.engine import Engine, TraceConfig  # noqa: E402
from kltrace_ros.tracing.ops import add_tracer  # noqa: E402
from kltrace_ros.tracking.builder import Options, load_engine  # noqa: E402
from rosutil import shifted, textured  # noqa: E402

SIZE = 32     # working resolution of the tiny models (px)


def save_svd(folder, real=False):
    """A tiny random SVD folder; ``real``: random weights at the published sizes (tools/device_check.py)."""
    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel() if real else UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
        num_attention_heads=8, projection_class_embeddings_input_dim=96, addition_time_embed_dim=32)
    unet.save_pretrained(folder / "unet")
    blocks = [128, 256, 512, 512] if real else [32, 64]
    vae = AutoencoderKLTemporalDecoder(block_out_channels=blocks, in_channels=3, out_channels=3,
                                       down_block_types=["DownEncoderBlock2D"] * len(blocks), latent_channels=4,
                                       layers_per_block=2 if real else 1)
    vae.save_pretrained(folder / "vae")
    clip = dict(hidden_size=1280, projection_dim=1024, num_hidden_layers=32, num_attention_heads=16, image_size=224,
                intermediate_size=5120, patch_size=14) if real else \
        dict(hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=32,
             intermediate_size=37, patch_size=4)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**clip)).save_pretrained(folder / "image_encoder")
    CLIPImageProcessor(crop_size=clip["image_size"], size=clip["image_size"]).save_pretrained(
        folder / "feature_extractor")
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           interpolation_type="linear", num_train_timesteps=1000, prediction_type="v_prediction",
                           sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
                           timestep_type="continuous", use_karras_sigmas=True).save_pretrained(folder / "scheduler")
    return folder


def save_cosmos(folder, real=False):
    """A tiny random Cosmos-Predict2 folder; ``real``: the 2B transformer and the Wan VAE at their published
    sizes with random weights (a small T5: only its width matters here)."""
    torch.manual_seed(0)
    width = 1024 if real else 32
    tr = dict(num_attention_heads=16, attention_head_dim=128, num_layers=28, mlp_ratio=4.0, adaln_lora_dim=256,
              max_size=(128, 240, 240), rope_scale=(1.0, 4.0, 4.0), extra_pos_embed_type=None) if real else \
        dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2, adaln_lora_dim=4,
             max_size=(4, 32, 32), rope_scale=(2.0, 1.0, 1.0), extra_pos_embed_type="learnable")
    transformer = CosmosTransformer3DModel(in_channels=16 + 1, out_channels=16, text_embed_dim=width,
                                           patch_size=(1, 2, 2), concat_padding_mask=True, **tr)
    vae = AutoencoderKLWan() if real else AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1],
                                                           num_res_blocks=1, temperal_downsample=[False, True, True])
    if not real:    # fresh inits pass almost nothing through (zero-initialised outputs, tiny gains): a trained
        with torch.no_grad():   # model's weights are not like that, so shake them
            for prm in [*transformer.parameters(), *vae.parameters()]:
                prm.add_(0.1 * torch.randn_like(prm))
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True).save_pretrained(folder / "scheduler")
    T5EncoderModel(T5Config(vocab_size=32, d_model=width, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
                   ).save_pretrained(folder / "text_encoder")
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "robot": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=16).save_pretrained(folder / "tokenizer")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    return {"svd": save_svd(root / "svd"), "cosmos": save_cosmos(root / "cosmos")}


def spec(folders, family, **settings):
    q = "&".join(f"{k}={v}" for k, v in {"size": SIZE, "steps": 4, "samples": 2, **settings}.items())
    return f"{family}:{folders[family]}?{q}"


def frames():
    big = textured()
    f1, f2 = shifted(big, 0, 0), shifted(big, 3, 1)
    return [torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None].float().div(255)
            for f in (f1, f2)], (f1, f2)


def write_pair(folder, q=((40.0, 50.0),)):
    _, (f1, f2) = frames()
    cv2.imwrite(str(folder / "f1.png"), cv2.cvtColor(f1, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "f2.png"), cv2.cvtColor(f2, cv2.COLOR_RGB2BGR))
    (folder / "q.json").write_text(json.dumps(np.asarray(q).tolist()))


@pytest.mark.parametrize("family", ["svd", "cosmos"])
def test_same_seed_same_prediction_and_a_tracer_changes_it(folders, family):
    p = load_predictor(spec(folders, family), "cpu")
    assert p.methods == ("rgb",) and p.image_size == SIZE
    (t1, t2), _ = frames()
    src = torch.nn.functional.interpolate(t1, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    tgt = torch.nn.functional.interpolate(t2, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    mask = torch.zeros(SIZE // p.patch, SIZE // p.patch, dtype=torch.bool)
    clean = p.predict_rgb(src, tgt, mask)
    again = p.predict_rgb(src, tgt, mask)
    assert clean.shape == (1, 3, SIZE, SIZE) and torch.isfinite(clean).all()
    assert torch.equal(clean, again)                             # clean vs clean: exactly zero difference
    traced = add_tracer(src, torch.tensor([[10.0, 12.0]]), p.tracer_sigma)
    diff = (p.predict_rgb(traced, tgt, mask) - clean).abs()
    assert diff.max() > 1e-6                                      # the tracer changes the prediction (a tiny
    #                                random model passes little through; without a path the difference is 0.0)
    other = load_predictor(spec(folders, family, seed=1), "cpu").predict_rgb(src, tgt, mask)
    assert not torch.equal(other, clean)                          # the seed is what makes the runs equal
    three = add_tracer(src.expand(3, -1, -1, -1), torch.tensor([[10.0, 12.0], [20.0, 5.0], [25.0, 25.0]]),
                       p.tracer_sigma)
    whole = p.predict_rgb(three, tgt, mask)
    chunked = load_predictor(spec(folders, family, batch=2), "cpu").predict_rgb(three, tgt, mask)
    assert whole.shape == (3, 3, SIZE, SIZE) and torch.allclose(whole, chunked, atol=1e-4)
    assert torch.allclose(whole[:1], p.predict_rgb(three[:1], tgt, mask), atol=1e-4)   # the same draws per variant


@pytest.mark.parametrize("family", ["svd", "cosmos"])
def test_the_tracer_reaches_the_prediction_only_through_the_model(folders, family):
    """A denoiser that ignores its input: clean and traced predictions must then be identical (no leak of
    frame 1 through the VAE's encoder or decoder into the predicted frame 2)."""
    p = load_predictor(spec(folders, family), "cpu")
    net = p.unet if family == "svd" else p.transformer
    if family == "svd":
        net.forward = lambda x, *a, **k: (torch.zeros_like(x[:, :, : x.shape[2] // 2]),)
    else:
        net.forward = lambda hidden_states, **k: (torch.zeros_like(hidden_states),)
    (t1, t2), _ = frames()
    src = torch.nn.functional.interpolate(t1, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    tgt = torch.nn.functional.interpolate(t2, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    mask = torch.zeros(SIZE // p.patch, SIZE // p.patch, dtype=torch.bool)
    traced = add_tracer(src, torch.tensor([[10.0, 12.0]]), p.tracer_sigma)
    assert torch.equal(p.predict_rgb(traced, tgt, mask), p.predict_rgb(src, tgt, mask))


def test_cosmos_schedule_is_the_pipelines(folders):
    p = load_predictor(spec(folders, "cosmos", steps=10), "cpu")
    sigmas, start = p.schedule()
    assert abs(float(sigmas[0]) - 80.0) < 1e-3 and abs(float(sigmas[-1]) - 0.002) < 1e-6
    assert (sigmas[1:] <= sigmas[:-1]).all() and start == 5 and 0.002 < float(sigmas[start]) < 80


@pytest.mark.parametrize("family", ["svd", "cosmos"])
def test_engine_and_track_pair_on_a_diffusion_model(folders, family, tmp_path):
    engine = load_engine(Options(model=spec(folders, family), fb_threshold=0.0))
    assert engine.cfg.method == "rgb"                              # the model's method, without asking
    _, (f1, f2) = frames()
    q = np.array([[40.0, 50.0], [120.0, 80.0], [150.0, 30.0]])
    res = engine.track(f1, f2, q)
    assert res.points.shape == (3, 2) and res.visible.shape == (3,) and np.isfinite(res.points).all()
    # anchored tracking's call at default settings: a first image per query and the backward check (the backward
    # trace has one source and a target per point)
    default = load_engine(Options(model=spec(folders, family)))
    assert default.cfg.fb_threshold > 0
    anchored = default.track([f1, f2], f2, q, source=[0, 1, 0])
    assert np.isfinite(anchored.points).all() and np.isfinite(anchored.fb_error).all()
    write_pair(tmp_path, q)
    proc = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "track-pair", str(tmp_path / "f1.png"),
                           str(tmp_path / "f2.png"), str(tmp_path / "q.json"), str(tmp_path / "out.json"),
                           "--model", spec(folders, family), "--fb-threshold", "0"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert np.array(out["points"]).shape == (3, 2) and len(out["visible"]) == 3
    assert np.allclose(out["points"], res.points, atol=1e-3)       # the CLI runs the same engine
    proc = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "track-pair", str(tmp_path / "f1.png"),
                           str(tmp_path / "f2.png"), str(tmp_path / "q.json"), str(tmp_path / "o2.json"),
                           "--model", spec(folders, family), "--method", "kl"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "use --method rgb" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_folders_and_settings_name_the_fix(folders, tmp_path):
    cases = []
    cases.append((f"svd:{tmp_path / 'nope'}", "stabilityai/stable-video-diffusion-img2vid-xt"))
    # a Hub repository name is a folder that is not here: refused before any loader runs, never downloaded
    cases.append(("svd:stabilityai/stable-video-diffusion-img2vid-xt", "does not exist: on a machine with internet"))
    partial = tmp_path / "partial"
    shutil.copytree(folders["svd"], partial)
    shutil.rmtree(partial / "unet")
    cases.append((f"svd:{partial}", "lacks unet/ (UNetSpatioTemporalConditionModel"))
    pickled = tmp_path / "pickled"
    shutil.copytree(folders["cosmos"], pickled)
    for f in (pickled / "vae").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    cases.append((f"cosmos:{pickled}", "pickle files, refused"))
    broken = tmp_path / "broken"
    shutil.copytree(folders["svd"], broken)
    for f in (broken / "vae").glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:100])
    cases.append((f"svd:{broken}", "does not load as StableVideoDiffusionPipeline"))
    cases.append((f"svd:{folders['svd']}?steps=abc", "steps='abc' is not a int"))
    cases.append((f"svd:{folders['svd']}?speed=2", "unknown setting 'speed'"))
    cases.append((f"cosmos:{folders['cosmos']}?size=30", "multiple of 16"))
    for model, text in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=None) as err:
            load_predictor(model, "cpu")
        assert text in str(err.value), (model, str(err.value))
        if "does not load" in text:
            assert isinstance(err.value, CheckpointError)
    # the CLI: one line on stderr, exit 2
    write_pair(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "track-pair", "f1.png", "f2.png", "q.json",
                           "o.json", "--model", f"cosmos:{tmp_path / 'nope'}"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "nvidia/Cosmos-Predict2-2B-Video2World" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.json").exists()


def test_real_sizes_are_refused_on_the_cpu_unless_forced():
    s = parse_spec("svd:/x")[2]
    with pytest.raises(ValueError, match="allow_cpu=1"):
        DiffusionPredictor.check_device("svd", torch.device("cpu"), 9 * 2**30, s)
    DiffusionPredictor.check_device("svd", torch.device("cpu"), 9 * 2**30, DiffusionSettings(allow_cpu=True))
    DiffusionPredictor.check_device("svd", torch.device("cuda"), 9 * 2**30, s)


@pytest.mark.parametrize("family", ["svd", "cosmos"])
def test_node_runs_a_diffusion_model(folders, family, tmp_path, ros_env):
    from rosutil import Harness, domain_id, node_log, start_node, stop_node

    # default tracking settings (anchored, the backward check): they used to fail for the diffusion models
    proc = start_node(tmp_path, ros_env, {"model_path": spec(folders, family, samples=1), "num_points": 6,
                                          "masks": 0, "scales": 0})
    h = Harness(domain_id(ros_env))
    big = textured()
    try:
        assert h.wait_connected(90, proc), node_log(proc)
        for i in range(3):
            before = len(h.tracks)
            h.publish(shifted(big, 2 * i, 0))
            if i:
                assert h.wait_for(lambda: len(h.tracks) > before, 120, proc), node_log(proc)
            else:
                h.spin(0.5)
        assert len(h.tracks) == 2 and all(len(m.tracks) == 6 for m in h.tracks)
        assert all(np.isfinite([t.x for t in m.tracks]).all() for m in h.tracks)
        assert f"model {family}:" in node_log(proc)
    finally:
        stop_node(proc)
        h.close()
    bad = start_node(tmp_path, ros_env, {"model_path": f"{family}:{tmp_path / 'nope'}"}, name="bad")
    assert bad.wait(timeout=120) != 0 and "does not exist" in node_log(bad)
