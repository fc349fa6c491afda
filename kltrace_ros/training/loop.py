"""`kltrace train`: fit the CellCode tokenizer, then train MotionLRAS on video pairs (CPU).

Resumable (``--resume``), seeded, time-boxed (``--minutes``); writes ``ckpt.pt`` (model +
optimiser, every ``--ckpt-minutes``), ``model.pt`` (weights-only cfg + model, what ships),
``log.csv`` and ``curves.png`` into ``--out``. Library code: it sets no global state (thread
count, seeds, plotting backend); the CLI sets the thread count.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from kltrace_ros.models.checkpoint import load_checkpoint, save_checkpoint
from kltrace_ros.models.motion.network import MotionLRAS
from kltrace_ros.tracing.ops import reveal_mask

from .data import PairSampler, load_sources

LOG_FIELDS = ["step", "pairs", "minutes", "loss", "acc", "copy_acc", "val_loss", "val_acc", "val_copy_acc",
              "val_offset_corr", "val_offset_err"]


def fit_tokenizer(model: MotionLRAS, sampler: PairSampler, n_windows: int = 1500, seed: int = 0) -> float:
    src, tgt, _ = sampler.sample(n_windows)
    cells = model.tokenizer.cells_of(torch.cat([src, tgt]))
    cells = cells.reshape(-1, cells.shape[-1])
    g = torch.Generator().manual_seed(seed)
    cells = cells[torch.randperm(len(cells), generator=g)[:120_000]]
    return model.tokenizer.fit(cells, seed=seed)


def batch_loss(model: MotionLRAS, src_img, tgt_img, ratio_range, gen, return_offsets=False):
    """Cross-entropy of hidden target cells, accuracy, same-cell copy accuracy (and offsets)."""
    src = model.tokenizer.encode(src_img)
    tgt = model.tokenizer.encode(tgt_img)
    b, g, _ = src.shape
    ratio = float(torch.empty(1).uniform_(*ratio_range, generator=gen))
    reveal = torch.stack([reveal_mask(g, g, ratio, gen) for _ in range(b)])
    logp, offsets = model(src, tgt, reveal, return_offsets=True)
    hidden = ~reveal.flatten(1)
    t = tgt.flatten(1)
    nll = -logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    loss = nll[hidden].mean()
    acc = (logp.argmax(-1) == t)[hidden].float().mean()
    copy = (src.flatten(1) == t)[hidden].float().mean()
    out = (loss, acc, copy)
    return out + (offsets, hidden) if return_offsets else out


@torch.no_grad()
def validate(model: MotionLRAS, val: tuple, ratio: float) -> dict:
    src_img, tgt_img, motion = val
    gen = torch.Generator().manual_seed(1234)
    loss, acc, copy, offsets, hidden = batch_loss(model, src_img, tgt_img, (ratio, ratio), gen, True)
    syn = ~torch.isnan(motion[:, 0])
    g = model.grid
    # offset of the window's central cells, in px, against the true centre motion (source = target - motion)
    centre = [(g // 2 - 1) * g + g // 2 - 1, (g // 2 - 1) * g + g // 2, (g // 2) * g + g // 2 - 1, (g // 2) * g + g // 2]
    off_px = offsets[:, centre].mean(1) * model.cfg["cell"]
    est, true = -off_px[syn], motion[syn]
    corr = torch.corrcoef(torch.stack([est.flatten(), true.flatten()]))[0, 1]
    return {"val_loss": float(loss), "val_acc": float(acc), "val_copy_acc": float(copy),
            "val_offset_corr": float(corr), "val_offset_err": float((est - true).norm(dim=-1).mean())}


def plot_log(csv_path: Path, png_path: Path) -> None:
    """Loss, code accuracy (model vs same-cell copy) and motion curves against pairs seen."""
    from matplotlib.figure import Figure  # optional heavy dependency: only the plot needs it

    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return
    x = [float(r["pairs"]) for r in rows]
    fig = Figure(figsize=(14, 4))
    ax = fig.subplots(1, 3)
    for key in ("loss", "val_loss"):
        ax[0].plot(x, [float(r[key]) for r in rows], label=key)
    for key in ("acc", "copy_acc", "val_acc", "val_copy_acc"):
        ax[1].plot(x, [float(r[key]) for r in rows], label=key)
    ax[2].plot(x, [float(r["val_offset_err"]) for r in rows], label="centre offset error (px)")
    ax[2].plot(x, [float(r["val_offset_corr"]) for r in rows], label="offset/motion correlation")
    for a, t in zip(ax, ("cross-entropy (hidden cells)", "code accuracy: model vs same-cell copy", "motion")):
        a.set_title(t)
        a.set_xlabel("pairs seen")
        a.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)


@dataclass
class Run:
    """What a checkpoint restores: the model, its optimiser and the counters."""
    model: MotionLRAS
    opt: torch.optim.Optimizer
    step: int = 0
    pairs: int = 0
    minutes: float = 0.0        # spent in earlier sessions of this run


def start_run(out: Path, train_src, cfg: dict | None, lr: float, seed: int, resume: bool,
              init: Path | None = None) -> Run:
    """Resume from ``out/ckpt.pt``; or start from the weights of the model file ``init`` (fine-tuning: its
    tokenizer and cfg, a fresh optimiser); or build a new model (seeded locally) and fit its tokenizer."""
    ckpt_path = out / "ckpt.pt"
    if resume and ckpt_path.is_file():
        mcfg, state = load_checkpoint(ckpt_path)
        model = MotionLRAS(mcfg)
        model.load_state_dict(state)
        full = torch.load(ckpt_path, weights_only=True)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        opt.load_state_dict(full["optimizer"])
        run = Run(model, opt, int(full["step"]), int(full["pairs"]), float(full["minutes"]))
        print(f"resumed from {ckpt_path} at step {run.step} ({run.pairs} pairs, {run.minutes:.1f} min)")
        return run
    if (out / "log.csv").exists():
        (out / "log.csv").unlink()
    if init is not None:
        mcfg, state = load_checkpoint(init)
        model = MotionLRAS(mcfg)
        model.load_state_dict(state)
        print(f"fine-tuning the weights of {init}")
        return Run(model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0))
    with torch.random.fork_rng():  # seed the initial weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = MotionLRAS(cfg)
    mse = fit_tokenizer(model, PairSampler(train_src, model.cfg["window"], seed=seed + 7), seed=seed)
    model.init_embedding_from_codebook(seed)
    print(f"CellCode: {model.cfg['n_codes']} codes fitted, cell MSE {mse:.4f} (normalised RGB)")
    return Run(model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0))


def save_run(out: Path, run: Run, minutes: float) -> None:
    state = run.model.state_dict()
    save_checkpoint(out / "ckpt.pt", run.model.cfg, state, optimizer=run.opt.state_dict(), step=run.step,
                    pairs=run.pairs, minutes=minutes)
    save_checkpoint(out / "model.pt", run.model.cfg, state)
    plot_log(out / "log.csv", out / "curves.png")


def learning_rate(lr: float, step: int, frac: float) -> float:
    """Warm-up over 100 steps, then cosine decay to 10% over the budget (``frac`` of it used)."""
    return lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(out: Path, minutes: float = 60.0, steps: int | None = None, batch: int = 32, lr: float = 2e-3,
          seed: int = 0, resume: bool = False, ckpt_minutes: float = 3.0, debian: bool = True,
          cfg: dict | None = None, val_size: int = 128, log_every: int = 25, init: Path | None = None,
          max_motion: float = 12.0, max_zoom: float = 1.0) -> Path:
    """Train (or fine-tune from ``init``) for ``minutes`` or ``steps``. Pairs move by up to ``max_motion`` window
    px; windows show the image at up to ``max_zoom`` window px per image px (above 1: enlarged crops, as the
    engine's finest scales see)."""
    out.mkdir(parents=True, exist_ok=True)
    train_src, val_src = load_sources(debian=debian).split()
    run = start_run(out, train_src, cfg, lr, seed, resume, init)
    model, opt = run.model, run.opt
    sampler = PairSampler(train_src, model.cfg["window"], max_motion=max_motion, max_zoom=max_zoom,
                          seed=seed * 1000 + run.step)
    val = PairSampler(val_src if val_src.images else train_src, model.cfg["window"], max_motion=max_motion,
                      max_zoom=max_zoom, seed=99).sample(val_size)
    gen = torch.Generator().manual_seed(seed * 1000 + run.step + 1)
    ratio = model.cfg["reveal"]
    log = open(out / "log.csv", "a", newline="")
    writer = csv.DictWriter(log, LOG_FIELDS)
    if log.tell() == 0:
        writer.writeheader()
    t0 = last_ckpt = time.time()
    elapsed = lambda: (time.time() - t0) / 60  # noqa: E731
    bar = tqdm(total=steps, desc="train", unit="step", dynamic_ncols=True)
    running = {"loss": 0.0, "acc": 0.0, "copy_acc": 0.0, "n": 0}
    while (bar.n < steps) if steps is not None else (elapsed() < minutes):
        frac = bar.n / max(steps, 1) if steps is not None else min(1.0, (run.minutes + elapsed()) / max(
            minutes + run.minutes, 1e-6))
        for group in opt.param_groups:
            group["lr"] = learning_rate(lr, run.step, frac)
        src_img, tgt_img, _ = sampler.sample(batch)
        loss, acc, copy = batch_loss(model, src_img, tgt_img, (ratio * 0.6, ratio * 1.4), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run.step += 1
        run.pairs += batch
        bar.update(1)
        for k, v in (("loss", loss), ("acc", acc), ("copy_acc", copy)):
            running[k] += float(v.detach())
        running["n"] += 1
        if run.step % log_every == 0:
            row = {"step": run.step, "pairs": run.pairs, "minutes": round(run.minutes + elapsed(), 2),
                   **{k: round(running[k] / running["n"], 4) for k in ("loss", "acc", "copy_acc")},
                   **{k: round(x, 4) for k, x in validate(model, val, ratio).items()}}
            writer.writerow(row)
            log.flush()
            bar.set_postfix(loss=row["loss"], acc=row["acc"], vacc=row["val_acc"], verr=row["val_offset_err"])
            running = {"loss": 0.0, "acc": 0.0, "copy_acc": 0.0, "n": 0}
        if time.time() - last_ckpt > ckpt_minutes * 60:
            save_run(out, run, run.minutes + elapsed())
            last_ckpt = time.time()
    bar.close()
    save_run(out, run, run.minutes + elapsed())
    log.close()
    print(f"trained {run.step} steps, {run.pairs} pairs, {run.minutes + elapsed():.1f} min; "
          f"weights: {out / 'model.pt'}; log: {out / 'log.csv'}; plot: {out / 'curves.png'}")
    return out / "model.pt"
