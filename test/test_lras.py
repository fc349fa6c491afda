"""LRAS transformer, LPQ quantizer, sequence layout and the checkpoint loader (tiny random configs)."""
import argparse

import pytest
import torch

from kltrace_ros.models.checkpoint import CheckpointError
from kltrace_ros.models.lras.tokenizer import LPQ
from kltrace_ros.models.lras.network import LRAS
from kltrace_ros.models.lras.layout import Layout, split_mask
from kltrace_ros.tracing.ops import reveal_mask

# a tiny model with the published layout's structure: 8x8 patch grid, 2x2 codes per patch, 6-bit codes
LAYOUT = Layout(n_codes=64, grid=8, patch=2)
CFG = {"config_class": "LRAS7B_Patch8_RGBConfig", "model_type": "lras", "n_layer": 2, "n_head": 4, "n_embd": 32,
       "vocab_size": LAYOUT.vocab_needed, "block_size": 2 * 5 * LAYOUT.n_patches, "patch_size": 2,
       "dropout": 0.0, "bias": False}


def tiny_lras(seed=0):
    torch.manual_seed(seed)
    model = LRAS(CFG).eval()
    for p in model.parameters():  # break symmetry beyond the default init
        p.data.normal_(0, 0.2)
    return model


def upstream_file(path, model, key="model", prefix="_orig_mod.", extra=None):
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"cfg": dict(model.cfg), key: state, **(extra or {})}, path)


@pytest.mark.parametrize("key,prefix", [("model", "_orig_mod."), ("weights", ""), ("model", "")])
def test_upstream_layouts_load_and_match(tmp_path, key, prefix):
    model = tiny_lras()
    path = tmp_path / "rgb_predictor.pt"
    upstream_file(path, model, key, prefix, extra={"optimizer": {"state": {}}})
    loaded = LRAS.from_checkpoint(path)
    tok = torch.randint(0, CFG["vocab_size"], (2, 30))
    pos = torch.randperm(CFG["block_size"])[:30]
    assert torch.equal(loaded(tok, pos), model(tok, pos))
    assert loaded.transformer.h[0].attn.n_head == 4  # from cfg, not guessed


def test_args_object_is_allow_listed_not_executed(tmp_path):
    model = tiny_lras()
    path = tmp_path / "with_args.pt"
    upstream_file(path, model, extra={"args": argparse.Namespace(device="cuda", lr=1e-4)})
    loaded = LRAS.from_checkpoint(path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_arbitrary_objects_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"cfg": CFG, "model": tiny_lras().state_dict(), "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt.*weights-only"):
        LRAS.from_checkpoint(path)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = tiny_lras(3)
    model.save_checkpoint(tmp_path / "ours.pt")
    loaded = LRAS.from_checkpoint(tmp_path / "ours.pt")
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b)


def test_bad_files_name_the_problem(tmp_path):
    model = tiny_lras()
    good = tmp_path / "good.pt"
    model.save_checkpoint(good)
    with pytest.raises(CheckpointError, match="missing.pt.*does not exist"):
        LRAS.from_checkpoint(tmp_path / "missing.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="trunc.pt.*corrupt or truncated"):
        LRAS.from_checkpoint(trunc)
    # not torch.save's zip format: refused as such before anything is unpickled (a plain pickle could run code)
    import pickle

    legacy = tmp_path / "legacy.pt"
    torch.save({"cfg": CFG, "model": model.state_dict()}, legacy, _use_new_zipfile_serialization=False)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"cfg": CFG, "x": Evil()}))
    for bad in (legacy, plain):
        with pytest.raises(CheckpointError, match=f"{bad.name} is a legacy torch.save .* or plain pickle file: not a "
                                                  f"weights-only checkpoint, refused \\(nothing in it was executed\\)"):
            LRAS.from_checkpoint(bad)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pt is not a torch checkpoint at all"):
        LRAS.from_checkpoint(tmp_path / "text.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt.*empty"):
        LRAS.from_checkpoint(tmp_path / "empty.pt")
    wrong = tmp_path / "wrong_shape.pt"
    torch.save({"cfg": {**CFG, "n_embd": 64}, "model": model.state_dict()}, wrong)
    with pytest.raises(CheckpointError, match=r"wrong_shape.pt: key transformer\.\S+ has shape"):
        LRAS.from_checkpoint(wrong)
    extra = tmp_path / "extra_key.pt"
    torch.save({"cfg": CFG, "model": {**model.state_dict(), "transformer.h.9.ln_1.weight": torch.ones(32)}}, extra)
    with pytest.raises(CheckpointError, match=r"extra_key.pt.*unexpected keys \['transformer.h.9.ln_1.weight'\]"):
        LRAS.from_checkpoint(extra)
    nocfg = tmp_path / "nocfg.pt"
    torch.save({"model": model.state_dict()}, nocfg)
    with pytest.raises(CheckpointError, match="nocfg.pt has no 'cfg'"):
        LRAS.from_checkpoint(nocfg)


def test_logits_for_selects_positions_without_full_vocab_elsewhere():
    model = tiny_lras()
    tok = torch.randint(0, CFG["vocab_size"], (2, 25))
    pos = torch.arange(25)
    full = model(tok, pos)
    idx = torch.tensor([3, 7, 24])
    assert full.shape == (2, 25, CFG["vocab_size"])
    assert torch.allclose(model(tok, pos, logits_for=idx), full[:, idx], atol=1e-6)


def test_prefill_extend_equals_full_pass_fp32():
    model = tiny_lras(1).double().float()
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, CFG["vocab_size"], (1, 40), generator=g)
    pos = torch.randperm(CFG["block_size"], generator=g)[:70]
    suffix = torch.randint(0, CFG["vocab_size"], (5, 30), generator=g)  # five continuations of one prefix
    cache = model.prefill(prefix, pos[:40])
    ext = model.extend(cache, suffix, pos[40:])
    full = model(torch.cat([prefix.expand(5, -1), suffix], 1), pos)[:, 40:]
    assert ext.shape == full.shape
    assert (ext - full).abs().max() < 1e-5
    last = model.extend(cache, suffix, pos[40:], logits_for=slice(-4, None))
    assert (last - full[:, -4:]).abs().max() < 1e-5
    # the cache is shared, not copied per continuation
    assert cache.layers[0][0].shape[0] == 1


def test_out_of_range_ids_are_refused():
    model = tiny_lras()
    with pytest.raises(ValueError, match="token id out of range"):
        model(torch.tensor([[CFG["vocab_size"]]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="position id out of range"):
        model(torch.tensor([[0]]), torch.tensor([CFG["block_size"]]))


# ---------------------------------------------------------------- LPQ
def tiny_lpq(seed=0):
    torch.manual_seed(seed)
    arch = LPQ.default_arch(channels=16, bits=6, widths=(16, 8, 4), blocks=1)
    return LPQ(arch, {"config_class": "LPQConfig"}).eval()


def test_lpq_codes_bits_and_decode(tmp_path):
    lpq = tiny_lpq()
    img = torch.rand(2, 3, 32, 48)
    codes = lpq.encode(img)
    assert codes.shape == (2, 8, 12) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    # dimension 0 of project_in is the most significant bit
    from kltrace_ros.models.imagenet import normalise
    z = lpq.quantizer.project_in(lpq.encoder(normalise(img)).permute(0, 2, 3, 1))
    assert torch.equal((codes >> 5) & 1, (z[..., 0] > 0).long())
    assert torch.equal(codes & 1, (z[..., 5] > 0).long())
    # code values are +-1/sqrt(bits) before project_out
    q = lpq.quantizer
    lin = q.project_out.weight
    zq = (q.decode(codes).permute(0, 2, 3, 1) - q.project_out.bias) @ torch.linalg.pinv(lin).T
    assert torch.allclose(zq.abs(), torch.full_like(zq, 6 ** -0.5), atol=1e-4)
    out = lpq.decode(codes)
    assert out.shape == img.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    # upstream layout round trip (prefixed keys, cfg dict)
    path = tmp_path / "rgb_quantizer.pt"
    torch.save({"cfg": {"config_class": "LPQConfig"}, "model": {"_orig_mod." + k: v for k, v in lpq.state_dict().items()}},
               path)
    again = LPQ.from_checkpoint(path)
    assert torch.equal(again.encode(img), codes)
    assert torch.equal(again.decode(codes), out)


def test_lpq_published_key_shapes():
    lpq = LPQ(LPQ.default_arch(), {}).to("meta")
    shapes = {k: tuple(v.shape) for k, v in lpq.state_dict().items()}
    assert shapes["encoder.0.weight"] == (512, 3, 4, 4)
    assert shapes["encoder.2.conv1.weight"] == (1024, 512, 1, 1)
    assert shapes["quantizer.project_in.weight"] == (16, 512)
    assert shapes["quantizer.mask"] == (16,)
    assert shapes["decoder.2.conv2.weight"] == (512, 1024, 3, 3)
    assert shapes["decoder.3.conv.weight"] == (256, 512, 3, 3)
    assert shapes["decoder.7.conv.weight"] == (128, 256, 3, 3)
    assert shapes["decoder.10.ln1.weight"] == (128,)
    assert shapes["decoder.11.weight"] == (3, 128, 3, 3)
    # encoder 2+6, quantizer 5 (mask, project_in/out w+b), 9 residual blocks x 6, 2 upsample convs x 2, output conv 2
    assert len(shapes) == 8 + 5 + 54 + 4 + 2


# ---------------------------------------------------------------- layout
def test_layout_tokens_positions_and_raster():
    lay = LAYOUT
    codes = torch.arange(16 * 16).view(1, 16, 16) % 64
    patches = lay.patchify(codes)
    # patch 9 = row 1, col 1 of the 8x8 patch grid: codes (2,2), (2,3), (3,2), (3,3)
    assert patches[0, 9].tolist() == [codes[0, 2, 2], codes[0, 2, 3], codes[0, 3, 2], codes[0, 3, 3]]
    tok, pos = lay.frame_tokens(patches, torch.tensor([9, 0]), frame=1)
    assert tok[0, :5].tolist() == [64 + 64 + 9] + patches[0, 9].tolist()
    assert pos[:5].tolist() == [320 + 45 + j for j in range(5)]
    mask = reveal_mask(8, 8, 0.25, torch.Generator().manual_seed(0))
    assert int(mask.sum()) == 16
    revealed, hidden = split_mask(mask, torch.Generator().manual_seed(1))
    assert sorted(torch.cat([revealed, hidden]).tolist()) == list(range(64))
    seq, spos, ptr = lay.two_frame_sequence(patches, patches, torch.randperm(64), revealed, hidden)
    assert seq.shape[1] == 5 * 64 + 5 * 16 + 48 and spos.shape[0] == seq.shape[1]
    assert seq[0, ptr].tolist() == (128 + hidden).tolist()
    assert spos[ptr].tolist() == (320 + 5 * hidden).tolist()
    vals = torch.randn(1, 48, 3)
    r = lay.to_raster(vals, hidden)
    assert torch.equal(r[0, hidden], vals[0]) and torch.equal(r[0, revealed], torch.zeros(16, 3))
    keep = torch.zeros(8, 8, dtype=torch.bool)
    keep[3:6, 3:6] = True
    m2 = reveal_mask(8, 8, 0.9, torch.Generator().manual_seed(0), keep_hidden=keep)
    assert not (m2 & keep).any() and int(m2.sum()) == 55


def test_fetch_lras_lists_sources_and_verifies_placed_files(tmp_path, capsys):
    from kltrace_ros.models.lras.published import fetch_lras

    assert fetch_lras(tmp_path) == 1
    out = capsys.readouterr().out
    assert "rgb_predictor/rgb_predictor.pt" in out and "[missing]" in out and "never downloads" in out
    upstream_file(tmp_path / "rgb_predictor.pt", tiny_lras())
    lpq = tiny_lpq()
    torch.save({"cfg": {"config_class": "LPQConfig"}, "model": lpq.state_dict()}, tmp_path / "rgb_quantizer.pt")
    assert fetch_lras(tmp_path) == 0
    out = capsys.readouterr().out
    assert out.count("[ok]") == 2 and "2 layers x 32, 4 heads" in out
    torch.save({"cfg": {**CFG, "n_layer": 3}, "model": tiny_lras().state_dict()}, tmp_path / "rgb_predictor.pt")
    assert fetch_lras(tmp_path) == 1
    assert "[bad]" in capsys.readouterr().out


def test_bench_lras_reports_throughput_and_memory():
    from kltrace_ros.eval.bench import bench_lras

    r = bench_lras("tiny", prefix=64, suffix=16, batch=2, repeats=1)
    assert r["prefill_tokens_per_s"] > 0 and r["extend_tokens_per_s"] > 0 and r["peak_memory_MB"] > 0
    assert r["params_M"] > 1
