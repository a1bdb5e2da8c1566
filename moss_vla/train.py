"""moss-train: train a MossVLA policy on episode stores (hydra; defaults in configs/train.yaml).

    moss-train data.paths=[data/movesense_lr.zarr] policy=moss model=small steps=2000
    moss-train ... resume=runs/<run>/checkpoints/step_0001000      # continue exactly
    torchrun --nproc_per_node 2 -m moss_vla.train ...               # DistributedDataParallel

The batch of step s is a pure function of (seed, rank, s): indices and augmentation seeds are drawn from
a generator seeded with them, so `resume=` reproduces the uninterrupted run (with the RNG states and the
optimiser/scheduler state saved in the checkpoint).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm import tqdm

from moss_vla.command import ConfigError, command
from moss_vla.config import Rule, cli_config, flag, integer, number
from moss_vla.device import resolve_device
from moss_vla.training_data import build_datasets, label_classes

TRAIN_STATE = "training_state.pt"


# ----------------------------------------------------------------------------------------------- data
class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for steps start..steps-1, a batch of (window index, augmentation seed) pairs that depends
    only on (seed, rank, step): what makes `resume=` exact and DDP ranks see different data."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int, rank: int = 0, start: int = 0):
        self.n, self.batch_size, self.steps, self.seed, self.rank, self.start = n, batch_size, steps, seed, rank, start

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.steps):
            g = torch.Generator().manual_seed(hash((self.seed, self.rank, step)) % (2**62))
            idx = torch.randint(self.n, (self.batch_size,), generator=g).tolist()
            aug = torch.randint(2**31 - 1, (self.batch_size,), generator=g).tolist()
            yield list(zip(idx, aug, strict=True))


class SeededItems(Dataset):
    """`ds[(i, seed)]` = `ds[i]` with the global RNGs (that augmentation draws from) seeded for this item
    only: the caller's RNG streams (flow-matching noise, dropout) are restored afterwards."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        i, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            try:
                return self.dataset[i]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# ------------------------------------------------------------------------------------------ schedule
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on the matrices (linear, attention, convolution, embedding tables),
    none on the vectors (biases, LayerNorm gains). Decided by shape, not by name: a name rule ("norm")
    also exempted the DiT's AdaLN projection matrices (``norm1.linear.weight``)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup, then cosine decay to `min_ratio` of the base learning rate."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------- distributed
def _dist_setup(device_cfg: str) -> tuple[int, int, torch.device]:
    """Initialise torch.distributed under torchrun (gloo on CPU, nccl on GPU); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_cfg, local)  # auto | cpu | cuda | cuda:N (moss_vla/device.py)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


# ------------------------------------------------------------------------------------------- helpers
def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_states_of_all_ranks(world: int) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective: all ranks call it at a checkpoint step).
    Ranks start from seed + rank, so a resume must give each its own stream back."""
    if world == 1:
        return [_rng_state()]
    states: list[Any] = [None] * world
    torch.distributed.all_gather_object(states, _rng_state())
    return states


RESUME_KEYS = ("policy", "model", "dataset", "data.paths", "optim", "steps", "batch_size", "seed")


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _flatten(sub, f"{prefix}.{key}").items()}
    return {prefix: node}


def check_resume_config(saved: dict[str, Any], cfg: DictConfig, resume: Path) -> None:
    """A run continues exactly only with the settings it was trained with: name every one that differs
    (e.g. a resume that forgot `policy=` or `optim.lr=` would otherwise train something else)."""
    diffs = []
    for key in RESUME_KEYS:
        now = OmegaConf.select(cfg, key)
        now = OmegaConf.to_container(now, resolve=True) if OmegaConf.is_config(now) else now
        was = saved
        for part in key.split("."):
            was = was.get(part) if isinstance(was, dict) else None
        a, b = _flatten(was, key), _flatten(now, key)
        diffs += [f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
                  if a.get(k) != b.get(k)]
    if diffs:
        raise ValueError(f"resume={resume}: this run's settings differ from the checkpoint's, so it would not "
                         f"continue the run exactly: {'; '.join(diffs)}. Pass the run's own overrides again "
                         f"(its settings are in {resume.parent.parent / 'config.yaml'})")


def data_provenance(paths: Any) -> dict[str, Any]:
    """Which stores (and which task seeds) a run trained on: lets `moss-sim eval` keep its trials apart."""
    from moss_vla.episodes import EpisodeStore

    stores = []
    for p in [paths] if isinstance(paths, str) else list(paths):
        seeds: dict[str, list[int]] = {}
        for m in EpisodeStore(p).episode_metas:
            if m.get("seed") is not None:
                seeds.setdefault(str(m.get("task")), []).append(int(m["seed"]))
        stores.append({"path": str(Path(p).resolve()), "seeds": seeds})
    return {"stores": stores}


def save_checkpoint(run_dir: Path, step: int, policy, optimizer, scheduler, cfg: DictConfig,
                    rng: list[dict[str, Any]]) -> Path:
    """`checkpoints/step_XXXXXXX/`: the policy's save_pretrained files + the training state. Written to a
    temporary directory and renamed, so a crash never leaves a half-written checkpoint behind."""
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    torch.save(
        {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "rng": rng, "config": OmegaConf.to_container(cfg, resolve=True)},
        tmp / TRAIN_STATE,
    )
    shutil.copy(run_dir / "training_data.json", tmp / "training_data.json")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    # the new `latest` link is made beside the old one and renamed over it: a kill never leaves none
    tmp_link = ckpt_root / f".latest-{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(final.name)
    os.replace(tmp_link, ckpt_root / "latest")
    return final


def validation_subset(val_ds: Dataset, n: int) -> Dataset:
    """``n`` windows spread evenly over all validation episodes (the first ``n`` would cover only the
    start of the first one); the same windows at every evaluation."""
    total = len(val_ds)  # type: ignore[arg-type]
    if total <= n:
        return val_ds
    return Subset(val_ds, np.unique(np.linspace(0, total - 1, n).round().astype(int)).tolist())


@torch.no_grad()
def evaluate(policy, loader: DataLoader, device: torch.device, seed: int,
             mean_action: torch.Tensor | None = None) -> dict[str, float]:
    """Validation flow-matching loss and open-loop action error (predicted chunk vs recorded actions,
    mean absolute error over the unpadded steps and all action dimensions, in the units of the actions:
    rad for the 7 joints, m for the gripper width, which the pointing tasks keep constant, so there the
    joints' own error is about 8/7 of it). Batches are weighted alike. With ``mean_action`` (A,) (the
    training data's), also the error of always predicting it (`val_mean_action_mae`): the bar a policy that
    learned nothing from frames and state sits at. The noise
    comes from ``seed``, the same at every evaluation, so the numbers move only with the weights, and the
    training RNG streams are left as they were (validation does not change the training run)."""
    was_training = policy.training
    policy.eval()
    losses, errs, first_errs, mean_errs, aux, labels = [], [], [], [], [], []
    # manual_seed also seeds the GPU's generator: fork it too, so training noise on a GPU is untouched
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in loader:
            batch = _to_device(batch, device)
            vl, vl_mask = policy.encode(batch["image"], batch["instruction"])  # once for the loss and the chunk
            loss, stats = policy.loss_from_features(vl, vl_mask, batch)
            losses.append(stats.get("action_loss", float(loss)))  # the flow-matching loss, comparable across runs
            if "aux_label_loss" in stats:
                label, counted = policy.label_targets(batch)
                n = int(counted.sum())  # windows that count for the label (weighs the batch's numbers)
                if n:
                    aux.append((stats["aux_label_loss"] * n, stats["aux_label_acc"] * n, n))
                    labels.append(label[counted].cpu())
            pred = policy.sample_from_features(vl, vl_mask, batch["state"].float(), seed)  # (B, H, A), unnormalised
            target = batch["action"]
            valid = ~batch["action_is_pad"]  # (B, H)
            err = (pred - target).abs().mean(-1)  # (B, H)
            errs.append(float(err[valid].mean()))
            first_errs.append(float(err[:, 0].mean()))
            if mean_action is not None:
                mean_errs.append(float((mean_action - target).abs().mean(-1)[valid].mean()))
    policy.train(was_training)
    if not losses:
        return {}
    out = {"val_loss": float(np.mean(losses)), "val_action_mae": float(np.mean(errs)),
           "val_first_action_mae": float(np.mean(first_errs))}
    if mean_errs:
        out["val_mean_action_mae"] = float(np.mean(mean_errs))
    if aux:
        loss_sum, hits, n = np.sum(aux, 0)
        out["val_aux_label_loss"], out["val_aux_label_acc"] = float(loss_sum / n), float(hits / n)
        # what always answering the commonest class scores on these windows: the bar the accuracy must clear
        counts = torch.bincount(torch.cat(labels))
        out["val_aux_label_majority"] = float(counts.max() / counts.sum())
    return out


def plot_loss_curve(csv_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    fig, ax = plt.subplots(figsize=(7, 4))
    tr = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
    va = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss")]
    if tr:
        ax.plot(*zip(*tr, strict=True), label="train loss", lw=1)
    if va:
        ax.plot(*zip(*va, strict=True), "o-", label="validation loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_title(csv_path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def warn_if_learned_nothing(rows: list[dict[str, Any]], margin: float = 0.95) -> None:
    """Say so when the last validation's action error is no better than always predicting the mean action:
    lerobot's ACT at lr 1e-3 trained to that for 3000 steps while its loss looked like a plateau."""
    last = next((r for r in reversed(rows) if r.get("val_mean_action_mae") not in (None, "")), None)
    if last is None:
        return
    err, bar = float(last["val_action_mae"]), float(last["val_mean_action_mae"])
    if err >= margin * bar:
        print(f"[moss-train] WARNING: at step {last['step']} the validation action error ({err:.4f}) is no better "
              f"than always predicting the mean action ({bar:.4f}): the policy has learned nothing from the frames "
              f"or the state. Check optim.lr (configs/optim/) and the data (moss-data check).", flush=True)


class MetricsLog:
    """One CSV row per logged step (columns grow as new metrics appear) + TensorBoard scalars. Each row
    has ``elapsed_s``: wall seconds of training up to it, summed over resumed parts of the run."""

    def __init__(self, run_dir: Path, enabled: bool, start: int = 0):
        self.enabled = enabled
        self.path = run_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.tb = None
        self.wandb: Any = None  # a Weights & Biases run (logger=wandb, start_wandb)
        self.t0, self.elapsed0 = time.perf_counter(), 0.0
        if enabled:
            if self.path.exists():  # resuming: keep the history up to the checkpoint (later rows are redone)
                self.rows = [r for r in csv.DictReader(self.path.open()) if int(r["step"]) <= start]
                if self.rows:
                    self.elapsed0 = float(self.rows[-1].get("elapsed_s") or 0.0)
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        metrics = {**metrics, "elapsed_s": self.elapsed0 + time.perf_counter() - self.t0}
        self.rows = [r for r in self.rows if int(r["step"]) != step] + [{"step": step, **metrics}]
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({**metrics, "step": step})
        keys = ["step"] + sorted({k for r in self.rows for k in r} - {"step"})
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        tmp.replace(self.path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


WANDB_ID = "wandb_run_id.txt"  # in the run directory: `resume=` continues the same Weights & Biases run


def start_wandb(cfg: DictConfig, run_dir: Path) -> Any:
    """The Weights & Biases run of `logger=wandb`, beside metrics.csv and TensorBoard: its files under
    <run>/wandb (offline by default: `wandb.mode`, no network; `wandb sync <run>/wandb/offline-run-*` uploads
    later), the run's config, every logged row against `step`. A resumed run continues the run whose id is kept
    in <run>/wandb_run_id.txt."""
    import wandb

    wc = cfg.get("wandb") or {}
    id_file = run_dir / WANDB_ID
    run_id = id_file.read_text().strip() if cfg.get("resume") and id_file.is_file() else None
    run = wandb.init(project=str(wc.get("project") or "moss-vla"), entity=wc.get("entity"),
                     name=str(wc.get("name") or run_dir.name), tags=list(wc.get("tags") or []),
                     mode=str(wc.get("mode") or "offline"), dir=str(run_dir), id=run_id,
                     resume="must" if run_id else None, config=OmegaConf.to_container(cfg, resolve=True))
    id_file.write_text(run.id)
    run.define_metric("step")
    run.define_metric("*", step_metric="step")  # rows redone after a resume are not refused as out of order
    return run


# ---------------------------------------------------------------------------------------------- main
@dataclass
class TrainResult:
    checkpoint: Path  # the last checkpoint written (rank 0)
    policy: Any  # the trained MossVLAPolicy (unwrapped)
    step: int


def train(cfg: DictConfig) -> TrainResult:
    """Run (or resume) training (every rank under torchrun; rank 0 writes)."""
    from moss_vla.policy import MossVLAPolicy, make_policy

    rank, world, device = _dist_setup(cfg.device)
    is_main = rank == 0
    run_dir = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)

    train_ds, val_ds, stats = build_datasets(cfg, cfg.policy.n_frames, cfg.model.action_head.horizon)
    start = 0
    if cfg.resume:
        resume = Path(cfg.resume)
        if not (resume / TRAIN_STATE).exists():
            raise FileNotFoundError(
                f"resume={cfg.resume}: no {TRAIN_STATE} there; pass a checkpoint directory such as "
                f"<run>/checkpoints/step_0001000 (or <run>/checkpoints/latest)"
            )
        state = torch.load(resume / TRAIN_STATE, weights_only=False)
        if not cfg.policy.get("aux_label_classes"):  # sized from the data when the run started (config: 0)
            cfg.policy.aux_label_classes = state["config"]["policy"].get("aux_label_classes")
        check_resume_config(state["config"], cfg, resume)
        if isinstance(state["rng"], dict):  # written before checkpoints kept every rank's state
            state["rng"] = [state["rng"]]
        if len(state["rng"]) != world:
            raise ValueError(f"resume={resume}: the run was trained by {len(state['rng'])} process(es), this one "
                             f"has {world}; resume with the same torchrun --nproc_per_node")
        policy = MossVLAPolicy.from_pretrained(resume)
        start = int(state["step"])
    else:
        if cfg.policy.get("aux_label_weight", 0) > 0 and not cfg.policy.get("aux_label_classes"):
            cfg.policy.aux_label_classes = label_classes(cfg.data.paths)  # recorded in the run's config.yaml
        policy = make_policy(cfg.policy, cfg.model, stats)
        if cfg.get("init_from"):  # fine-tuning: its weights and normalisation, a fresh optimiser and schedule
            from moss_vla.zoo import resolve_checkpoint

            init = resolve_checkpoint(cfg.init_from)
            if not (init / "model.safetensors").is_file():
                raise FileNotFoundError(f"init_from={cfg.init_from}: no model.safetensors in {init}; pass a "
                                        f"checkpoint directory or zoo:<task>/<policy>")
            policy.load_weights(init / "model.safetensors")  # names every tensor that does not fit
    policy.to(device).train()

    optimizer = torch.optim.AdamW(param_groups(policy, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.optim.warmup_steps, cfg.steps, cfg.optim.min_lr_ratio)
    )
    if cfg.resume:
        saved, now = ([len(g["params"]) for g in groups]
                      for groups in (state["optimizer"]["param_groups"], optimizer.param_groups))
        if saved != now:
            raise ValueError(f"{cfg.resume}: its optimizer state groups {saved} parameters for weight decay / none, "
                             f"this version groups {now} (decay by "
                             f"shape since 2026-12-02): continue it with the moss-vla version that wrote it, or "
                             f"start a new run")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"][rank])

    model = policy
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            policy, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    sampler = StepBatchSampler(len(train_ds), cfg.batch_size, cfg.steps, cfg.seed, rank, start)
    # loaders get their own generators: creating an iterator must not draw from the global RNG, or a
    # resumed run would see other noise than the uninterrupted one
    loader = DataLoader(SeededItems(train_ds), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.data.num_workers > 0,
                        generator=torch.Generator().manual_seed(cfg.seed))
    val_loader = (DataLoader(validation_subset(val_ds, cfg.val_batches * cfg.batch_size), batch_size=cfg.batch_size)
                  if val_ds is not None and len(val_ds) > 0 else None)

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run_dir / "stats.json").write_text(json.dumps(stats, indent=1))
        (run_dir / "training_data.json").write_text(json.dumps(data_provenance(cfg.data.paths), indent=1))
        n_params = sum(p.numel() for p in policy.parameters())
        print(f"[moss-train] {len(train_ds)} training windows, {len(val_ds) if val_ds else 0} validation windows; "
              f"policy {cfg.policy.name}/{cfg.model.name} {n_params / 1e6:.2f} M parameters; "
              f"device {device}, world size {world}; run dir {run_dir}", flush=True)
    metrics = MetricsLog(run_dir, is_main, start)
    if is_main and cfg.get("logger") == "wandb":
        metrics.wandb = start_wandb(cfg, run_dir)
    use_amp = bool(cfg.amp) and device.type == "cuda"
    mean_action = torch.tensor(stats["action"]["mean"], dtype=torch.float32, device=device)

    step = start
    bar = tqdm(total=cfg.steps, initial=start, desc="train", disable=not is_main, dynamic_ncols=True)
    t_last, n_last = time.perf_counter(), 0
    final = run_dir
    try:
        for batch in loader:
            batch = _to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, stats_step = model(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step}: loss is {float(loss.detach())}; lower optim.lr or check the "
                                         f"data (moss-data check)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            n_last += cfg.batch_size
            bar.update(1)
            if is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                dt = time.perf_counter() - t_last
                loss_v = float(loss.detach())
                row = {"loss": loss_v, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "samples_per_s": n_last / dt}
                row.update({k: float(v) for k, v in (stats_step or {}).items() if k != "loss"})
                bar.set_postfix(loss=f"{loss_v:.4f}", sps=f"{n_last / dt:.1f}")
                t_last, n_last = time.perf_counter(), 0
                if val_loader is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                    row.update(evaluate(policy, val_loader, device, cfg.seed, mean_action))
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
                metrics.log(step, row)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                rng = _rng_states_of_all_ranks(world)  # every rank takes part
                if is_main:
                    final = save_checkpoint(run_dir, step, policy, optimizer, scheduler, cfg, rng)
    finally:
        bar.close()
        metrics.close()
    if is_main:
        if metrics.path.exists():
            plot_loss_curve(metrics.path, run_dir / "loss_curve.png")
        print(f"[moss-train] done: {step} steps; checkpoint {final}; loss curve {run_dir / 'loss_curve.png'}",
              flush=True)
        warn_if_learned_nothing(metrics.rows)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return TrainResult(final, policy, step)


# every value moss-train checks before it reads a store or creates its run directory (types come from configs/)
TRAIN_RULES: dict[str, Rule] = {
    "steps": integer(1, hint="training steps, e.g. steps=2000"),
    "batch_size": integer(1, hint="windows per step, e.g. batch_size=16"),
    "seed": integer(0),
    "log_every": integer(1), "val_every": integer(1), "val_batches": integer(1), "ckpt_every": integer(1),
    "amp": flag(),
    "data.num_workers": integer(0),
    "optim.lr": number(above=0, hint="e.g. optim.lr=1e-3"),
    "optim.weight_decay": number(lo=0),
    "optim.warmup_steps": integer(0),
    "optim.min_lr_ratio": number(0, 1),
    "optim.grad_clip": number(above=0),
    "policy.n_frames": integer(1, hint="frames per observation window, e.g. 8"),
    "policy.n_action_steps": integer(1),
    "policy.aux_label_weight": number(lo=0, optional=True),  # lerobot policies (act, diffusion) have none
    "model.action_head.horizon": integer(1),
    "logger": Rule("str", choices=("tensorboard", "wandb"), hint="logger=wandb adds Weights & Biases"),
    "wandb.mode": Rule("str", choices=("offline", "online", "disabled")),
}


def check_train_config(cfg: DictConfig) -> None:
    """What TRAIN_RULES cannot say: the device string and the stores to train on (before any work)."""
    from moss_vla.device import resolve_device

    try:
        resolve_device(str(cfg.device))  # the one parser of device=; no GPU for cuda: a one-line error too
    except ValueError as e:
        raise ConfigError(f"moss-train: {e}") from None
    paths = [cfg.data.paths] if isinstance(cfg.data.paths, str) else list(cfg.data.paths)
    if not paths:
        raise ConfigError("moss-train: data.paths=[] names no episode store; e.g. data.paths=[data/x.zarr]")
    missing = [str(p) for p in paths if not Path(str(p)).exists()]
    if missing:
        raise ConfigError(f"moss-train: data.paths: {', '.join(missing)} does not exist; pass episode stores "
                          f"written by moss-sim collect or moss-record")


@command("moss-train")
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # hydra's own message for a missing data.paths is cryptic: say what to pass
    if not any(a.startswith(("data.paths=", "--help", "-h", "--cfg")) for a in argv):
        raise ConfigError("moss-train: pass the episode store(s) to train on, e.g. "
                          "moss-train data.paths=[data/movesense_lr.zarr] policy=moss model=small")
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if resume and not any(a.startswith("out_dir=") for a in argv):
        # continue in the run directory the checkpoint belongs to (<run>/checkpoints/step_N)
        argv.append(f"out_dir={Path(resume).resolve().parent.parent}")
    cfg = cli_config(argv, "train", __doc__, TRAIN_RULES)
    if cfg is not None:
        check_train_config(cfg)
        train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
