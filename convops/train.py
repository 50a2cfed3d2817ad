"""Train a convops model zoo network: `python -m convops.train --model lenet5 --dataset digits`.

Defaults train LeNet-5 on scikit-learn's bundled 8x8 digits (no download) and write, under
--out-dir (default runs/<model>-<dataset>): metrics.jsonl (one JSON object per step and per
epoch), curves.png (loss and accuracy), summary.json, and with --save a checkpoint written
atomically after every epoch; --resume PATH continues it exactly (same batches, same losses).

Data-parallel on several processes through torch's DistributedDataParallel:
    torchrun --nproc_per_node=2 -m convops.train --model lenet5 --batch-size 16
(gloo on CPU, NCCL on CUDA). --batch-size is per process; rank 0 alone writes files and logs.
The batches of the ranks together are exactly the batch one process with
--batch-size (world size * B) would draw, so both runs follow the same trajectory.

Bad input (unknown model or dataset, missing data files, a checkpoint of another model,
non-positive sizes, an unwritable output directory) ends with a one-line error and exit code 2,
before anything is written.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import models as zoo
from .datasets import DATASETS, DatasetError, ImageDataset, load_dataset

CHECKPOINT_FORMAT = "convops.train/1"


class CLIError(Exception):
    """Bad input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise CLIError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m convops.train", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="lenet5", help=f"one of: {', '.join(zoo.list_models())}")
    p.add_argument("--dataset", default="digits", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--data-dir", default=None, help="torchvision root folder holding the dataset files")
    p.add_argument("--conv-type", default=None, help=f"conv family of the model: {', '.join(zoo.CONV_TYPES)}")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    p.add_argument("--schedule", default="cosine", choices=["cosine", "constant"],
                   help="learning rate per step: cosine decay from --lr to 0 over the run, or constant")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap on batches per epoch (quick runs)")
    p.add_argument("--augment", type=int, default=2, metavar="PIXELS",
                   help="random translation of each training image by up to this many pixels (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 for models under 1M parameters, whose ops are "
                        "too small to split across cores; torch's default otherwise)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--amp", default=None, choices=["bf16"], help="autocast to bfloat16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compare-torch", action="store_true",
                   help="also train the same model with torch's own convs (same init, same batches) "
                        "and report the parity of losses and weights")
    p.add_argument("--out-dir", default=None, help="default: runs/<model>-<dataset>")
    p.add_argument("--save", nargs="?", const="", default=None, metavar="PATH",
                   help="checkpoint after every epoch (default path: <out-dir>/checkpoint.pt)")
    p.add_argument("--resume", default=None, metavar="PATH", help="continue from a --save checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="end this run after N epochs (the schedule still spans --epochs; --resume later)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm bars (default: when stderr is a terminal)")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True)
    return p


# ----------------------------------------------------------------------------- setup

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env() -> "Dist":
        """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process without it."""
        return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def _validate(args) -> None:
    if args.model not in zoo.list_models():
        raise CLIError(f"unknown model {args.model!r}; available: {', '.join(zoo.list_models())}")
    if args.dataset not in DATASETS:
        raise CLIError(f"unknown dataset {args.dataset!r}; available: {', '.join(DATASETS)}")
    if args.augment < 0:
        raise CLIError(f"--augment must be a non-negative number of pixels, got {args.augment}")
    for name in ("epochs", "batch_size", "threads", "steps_per_epoch", "stop_after"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise CLIError(f"--lr must be a positive number, got {args.lr}")
    if args.conv_type is not None and args.conv_type not in zoo.CONV_TYPES:
        raise CLIError(f"unknown conv type {args.conv_type!r}; available: {', '.join(zoo.CONV_TYPES)}")
    if args.amp and args.dtype != "float32":
        raise CLIError("--amp bf16 autocasts float32 training; it cannot be combined with --dtype float64")


def _device(args, dist: Dist) -> torch.device:
    device = torch.device(args.device) if args.device in ("cpu", "cuda") or args.device.startswith("cuda:") \
        else None
    if device is None:
        raise CLIError(f"unknown device {args.device!r}; expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        if dist.world > 1:  # one GPU per process
            device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    return device


def _model_config(args, data: ImageDataset) -> Dict:
    """The builder kwargs: what a checkpoint must match to be resumed into this model."""
    kwargs = {"num_classes": data.num_classes, "in_channels": data.in_channels}
    if args.model == "lenet5":
        kwargs["input_size"] = data.image_size
    if args.conv_type is not None:
        kwargs["conv_type"] = args.conv_type
    return {"model": args.model, "dataset": args.dataset, "dtype": args.dtype, "kwargs": kwargs}


def _build_model(config: Dict) -> nn.Module:
    try:
        return zoo.get_model(config["model"], **config["kwargs"])
    except (ValueError, TypeError, ImportError, NotImplementedError) as e:
        raise CLIError(f"cannot build {config['model']} with {config['kwargs']}: {e}")


def _load_checkpoint(path: str, config: Dict) -> Dict:
    if not os.path.isfile(path):
        raise CLIError(f"--resume: no checkpoint file at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CLIError(f"--resume: cannot read {path} as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CLIError(f"--resume: {path} is not a convops.train checkpoint")
    theirs = ckpt["config"]
    if theirs != config:
        raise CLIError(f"--resume: {path} was written for model {theirs['model']} on {theirs['dataset']} "
                       f"({theirs['dtype']}, {theirs['kwargs']}), not {config['model']} on {config['dataset']} "
                       f"({config['dtype']}, {config['kwargs']})")
    return ckpt


def _prepare_output(paths: List[str]) -> None:
    """Creates the folders of `paths` and proves them writable with a temporary file, removing
    again every folder it created when one fails: an unwritable output stops the run before
    any training, with nothing left behind."""
    created: List[str] = []
    try:
        for path in paths:
            folder = os.path.dirname(os.path.abspath(path))
            missing, probe = [], folder
            while not os.path.exists(probe):
                missing.append(probe)
                probe = os.path.dirname(probe)
            os.makedirs(folder, exist_ok=True)
            created += reversed(missing)  # outermost first
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
    except OSError as e:
        for d in reversed(created):  # innermost first
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise CLIError(f"cannot write to {folder}: {e.strerror or e}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """write(tmp_path) then rename over `path`: readers see the old file or the new, never half."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file open()'s mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- training

class Replica:
    """A model and its optimizer, trained in lockstep with the others (convops and torch twin)."""

    def __init__(self, name: str, model: nn.Module, args, dist: Dist, device: torch.device):
        self.name, self.raw = name, model
        params = model.parameters()
        self.optimizer = (torch.optim.Adam(params, lr=args.lr) if args.optimizer == "adam"
                          else torch.optim.SGD(params, lr=args.lr, momentum=0.9))
        self.model = model
        if dist.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if args.compile:
            self.model = torch.compile(self.model)

    def step(self, x: Tensor, y: Tensor, autocast) -> Tensor:
        """One optimizer step; returns [sum of losses, correct] over the local batch."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = self.model(x)
            logits = _at_least_float32(logits)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        self.optimizer.step()
        return torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double()])

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, autocast, batch_size: int) -> Tensor:
        """[sum of losses, correct] over (x, y)."""
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=x.device)
        for i in range(0, len(y), batch_size):
            with autocast():
                logits = _at_least_float32(self.raw(x[i:i + batch_size]))  # no DDP hooks in eval
            yy = y[i:i + batch_size]
            total += torch.stack([F.cross_entropy(logits, yy, reduction="sum").double(),
                                  (logits.argmax(1) == yy).sum().double()])
        return total

    def state(self) -> Dict:
        return {"model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load(self, state: Dict) -> None:
        self.raw.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def _trajectory_args(args, dist: Dist) -> Dict:
    """The arguments that decide the batches and updates: a resume with the same ones continues
    the uninterrupted run exactly."""
    return {"epochs": args.epochs, "global_batch_size": args.batch_size * dist.world, "lr": args.lr,
            "optimizer": args.optimizer, "schedule": args.schedule, "augment": args.augment,
            "seed": args.seed, "steps_per_epoch": args.steps_per_epoch}


def _at_least_float32(t: Tensor) -> Tensor:
    """Autocast logits come in bfloat16; the loss is taken in float32 (float64 stays)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _all_reduce(t: Tensor, dist: Dist, op=None) -> Tensor:
    if dist.world > 1:
        torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM)
    return t


def _local_batches(n: int, batch_size: int, epoch: int, args, dist: Dist) -> List[Tensor]:
    """This rank's batches of the epoch. DistributedSampler deals a seeded permutation out
    round-robin, so batch k of all ranks together is batch k of one process with
    batch_size * world (for a dataset size divisible by world; otherwise the sampler pads)."""
    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=dist.world, rank=dist.rank,
                                                  shuffle=True, seed=args.seed)
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler), dtype=torch.int64)
    batches = list(order.split(batch_size))
    return batches[:args.steps_per_epoch] if args.steps_per_epoch else batches


def _epoch_shifts(n: int, epoch: int, args) -> Optional[Tensor]:
    """(n, 2) translations (dy, dx) for the training images of `epoch`, drawn per image from
    (seed, epoch) alone: every rank and a resumed run see the same augmented images."""
    if not args.augment:
        return None
    generator = torch.Generator().manual_seed(args.seed * 100003 + epoch)
    return torch.randint(-args.augment, args.augment + 1, (n, 2), generator=generator)


def _translate(x: Tensor, shifts: Tensor) -> Tensor:
    """Each image moved by its (dy, dx), borders replicated (the background of these datasets)."""
    m = int(shifts.abs().max())
    if m == 0:
        return x
    padded = F.pad(x, (m, m, m, m), mode="replicate")
    shifts = shifts.to(x.device)
    rows = torch.arange(x.shape[2], device=x.device) + m - shifts[:, :1]   # (B, H)
    cols = torch.arange(x.shape[3], device=x.device) + m - shifts[:, 1:]   # (B, W)
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=_memory_format(x))


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


def _learning_rate(args, progress: float) -> float:
    """The rate at `progress` epochs into the run: a function of the position alone, so a
    resumed run needs no scheduler state."""
    if args.schedule == "constant":
        return args.lr
    return 0.5 * args.lr * (1 + math.cos(math.pi * progress / args.epochs))


def _progress(args, dist: Dist, **kwargs):
    from tqdm.auto import tqdm
    # tqdm's disable=None: shown only when stderr is a terminal.
    disable = True if not dist.main or args.progress is False else (None if args.progress is None else False)
    return tqdm(disable=disable, dynamic_ncols=True, **kwargs)


def train(argv: Optional[List[str]] = None) -> Dict:
    """Runs the command; returns the summary (also written to summary.json by rank 0)."""
    args = build_parser().parse_args(argv)
    _validate(args)
    dist = Dist.from_env()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args, dist)
    dtype = getattr(torch, args.dtype)

    try:
        data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    except DatasetError as e:
        raise CLIError(str(e))
    config = _model_config(args, data)
    torch.manual_seed(args.seed)
    model = _build_model(config)
    reference = None
    if args.compare_torch:
        try:
            reference = zoo.torch_twin(model)
        except ValueError as e:
            raise CLIError(f"--compare-torch: {e}")
    ckpt = _load_checkpoint(args.resume, config) if args.resume else None
    if ckpt is not None and reference is not None and "torch" not in ckpt["replicas"]:
        raise CLIError(f"--resume: {args.resume} holds no torch-conv model to continue --compare-torch with "
                       f"(it was saved without --compare-torch)")
    if args.threads is None and device.type == "cpu" and sum(p.numel() for p in model.parameters()) < 1_000_000:
        # Splitting LeNet-sized ops costs more in synchronisation than it gains, and on a busy
        # machine every barrier waits for a descheduled thread (measured: 1 thread ~10x faster).
        torch.set_num_threads(1)

    out_dir = args.out_dir or os.path.join("runs", f"{args.model}-{args.dataset}")
    files = {name: os.path.join(out_dir, name) for name in ("metrics.jsonl", "summary.json", "curves.png")}
    save_path = None if args.save is None else (args.save or os.path.join(out_dir, "checkpoint.pt"))
    if dist.main:
        _prepare_output(list(files.values()) + ([save_path] if save_path else []))

    if dist.world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        result = _run(args, dist, device, dtype, data, config, model, reference, ckpt, files, save_path)
        if dist.world > 1:
            # Every rank is done with gloo before any tears it down: a rank destroying its group
            # while a peer still writes its files could abort at exit ("terminate called ...").
            torch.distributed.barrier()
        return result
    finally:
        if dist.world > 1:
            torch.distributed.destroy_process_group()


def _run(args, dist, device, dtype, data, config, model, reference, ckpt, files, save_path) -> Dict:
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    replicas = [("convops", model)] + ([("torch", reference)] if reference is not None else [])
    for _, m in replicas:
        m.to(device=device, dtype=dtype, memory_format=memory_format)
    replicas = [Replica(name, m, args, dist, device) for name, m in replicas]

    history: List[Dict] = []
    start_epoch = 0
    if ckpt is not None:
        for r in replicas:
            r.load(ckpt["replicas"][r.name])
        history, start_epoch = list(ckpt["history"]), ckpt["epoch"]
        changed = {k: (v, ckpt["trajectory"].get(k)) for k, v in _trajectory_args(args, dist).items()
                   if ckpt["trajectory"].get(k) != v}
        if changed and dist.main:
            print("convops.train: warning: resuming with " + ", ".join(
                f"{k}={now} (checkpoint: {then})" for k, (now, then) in changed.items())
                + ": the run will not follow the uninterrupted one", file=sys.stderr)
        torch.set_rng_state(ckpt["rng"])

    def to_device(t: Tensor) -> Tensor:
        t = t.to(device)
        return t.to(dtype=dtype, memory_format=memory_format) if t.is_floating_point() else t

    train_x, train_y = to_device(data.train_images), to_device(data.train_labels)
    # Evaluation is sharded over the ranks (contiguous slices, no padding) and summed.
    shard = slice(dist.rank * len(data.test_labels) // dist.world,
                  (dist.rank + 1) * len(data.test_labels) // dist.world)
    test_x, test_y = to_device(data.test_images[shard]), to_device(data.test_labels[shard])
    autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp
                else contextlib.nullcontext)

    started = time.perf_counter()
    epochs_bar = _progress(args, dist, total=args.epochs, initial=start_epoch, desc="epochs", unit="epoch")
    last_epoch = args.epochs if args.stop_after is None else min(args.epochs, start_epoch + args.stop_after)
    for epoch in range(start_epoch, last_epoch):
        batches = _local_batches(len(train_y), args.batch_size, epoch, args, dist)
        sums = torch.zeros(len(replicas), 3, dtype=torch.float64)
        epoch_start = time.perf_counter()
        with _progress(args, dist, total=len(batches), desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch",
                       leave=False) as bar:
            shifts = _epoch_shifts(len(train_y), epoch, args)
            for step, idx in enumerate(batches):
                x, y = train_x[idx], train_y[idx]
                if shifts is not None:
                    x = _translate(x, shifts[idx])
                lr = _learning_rate(args, epoch + step / len(batches))
                for r in replicas:
                    for group in r.optimizer.param_groups:
                        group["lr"] = lr
                stats = torch.stack([torch.cat([r.step(x, y, autocast), torch.tensor([len(y)], device=device,
                                                                                      dtype=torch.float64)])
                                     for r in replicas])
                stats = _all_reduce(stats, dist).cpu()  # [replica] x [loss sum, correct, count], all ranks
                sums += stats
                record = {"type": "step", "epoch": epoch + 1, "step": step + 1,
                          "loss": stats[0, 0].item() / stats[0, 2].item(),
                          "accuracy": stats[0, 1].item() / stats[0, 2].item(), "lr": lr}
                if len(replicas) > 1:
                    record["torch_loss"] = stats[1, 0].item() / stats[1, 2].item()
                history.append(record)
                seen = sums[0, 2].item()
                bar.update()
                bar.set_postfix(loss=f"{sums[0, 0].item() / seen:.4f}", acc=f"{sums[0, 1].item() / seen:.2%}",
                                img_s=f"{seen / (time.perf_counter() - epoch_start):.0f}")
        train_seconds = time.perf_counter() - epoch_start
        tests = torch.stack([r.evaluate(test_x, test_y, autocast, 4 * args.batch_size) for r in replicas])
        tests = _all_reduce(tests, dist).cpu()
        n_test = len(data.test_labels)
        record = {"type": "epoch", "epoch": epoch + 1,
                  "train_loss": sums[0, 0].item() / sums[0, 2].item(),
                  "train_accuracy": sums[0, 1].item() / sums[0, 2].item(),
                  "test_loss": tests[0, 0].item() / n_test, "test_accuracy": tests[0, 1].item() / n_test,
                  "images_per_s": sums[0, 2].item() / train_seconds, "seconds": train_seconds}
        if len(replicas) > 1:
            record["torch_max_abs_loss_diff"] = max(abs(r["loss"] - r["torch_loss"]) for r in history
                                                    if r["type"] == "step" and r["epoch"] == epoch + 1)
            record["torch_test_accuracy"] = tests[1, 1].item() / n_test
            record["torch_test_loss"] = tests[1, 0].item() / n_test
        history.append(record)
        if dist.main:
            epochs_bar.update()
            epochs_bar.write(f"epoch {epoch + 1}/{args.epochs}: train loss {record['train_loss']:.4f} "
                             f"acc {record['train_accuracy']:.2%} | test loss {record['test_loss']:.4f} "
                             f"acc {record['test_accuracy']:.2%} | {record['images_per_s']:.0f} img/s")
            _write_metrics(files["metrics.jsonl"], history)
            if save_path:
                checkpoint = {"format": CHECKPOINT_FORMAT, "config": config, "epoch": epoch + 1,
                              "trajectory": _trajectory_args(args, dist),
                              "history": history, "rng": torch.get_rng_state(),
                              "replicas": {r.name: r.state() for r in replicas}}
                atomic_write(save_path, lambda tmp: torch.save(checkpoint, tmp))
    epochs_bar.close()
    wall = time.perf_counter() - started

    summary = _summary(args, dist, config, history, replicas, wall, len(data.test_labels), device)
    if dist.main:
        _write_metrics(files["metrics.jsonl"], history)
        atomic_write(files["summary.json"], lambda tmp: _write_json(tmp, summary))
        if args.plot:
            _plot(history, files["curves.png"], f"{args.model} on {args.dataset}")
        _print_summary(summary, files if args.plot else {k: v for k, v in files.items() if k != "curves.png"},
                       save_path)
    return summary


def _summary(args, dist, config, history, replicas, wall, n_test, device) -> Dict:
    epochs = [r for r in history if r["type"] == "epoch"]
    steps = [r for r in history if r["type"] == "step"]
    last = epochs[-1] if epochs else {}
    summary = {"model": args.model, "dataset": args.dataset, "epochs": len(epochs), "steps": len(steps),
               "test_accuracy": last.get("test_accuracy"), "test_loss": last.get("test_loss"),
               "test_images": n_test, "wall_seconds": wall, "threads": torch.get_num_threads(),
               "device": str(device), "world_size": dist.world, "config": config}
    ours = [p.detach().double().flatten() for p in replicas[0].raw.parameters()]
    if dist.world > 1:
        # Ranks in sync: every rank's weights against rank 0's, the largest difference anywhere.
        flat = torch.cat(ours).to(device)
        reference = flat.clone()
        torch.distributed.broadcast(reference, src=0)
        diff = (flat - reference).abs().max().reshape(1)
        summary["rank_weight_max_abs_diff"] = _all_reduce(diff, dist, torch.distributed.ReduceOp.MAX).item()
    if len(replicas) > 1:
        theirs = [p.detach().double().flatten() for p in replicas[1].raw.parameters()]
        loss_diffs = [abs(r["loss"] - r["torch_loss"]) for r in steps]
        first_epoch = [d for d, r in zip(loss_diffs, steps) if r["epoch"] == steps[0]["epoch"]]
        summary["torch_parity"] = {
            "steps": len(steps),
            # The first step starts from identical weights: the difference is the convs' rounding
            # alone. Later the two trajectories drift apart as rounding differences compound.
            "first_step_loss_diff": loss_diffs[0] if loss_diffs else 0.0,
            "first_epoch_max_loss_diff": max(first_epoch, default=0.0),
            "max_abs_loss_diff": max(loss_diffs, default=0.0),
            "final_loss_diff": loss_diffs[-1] if loss_diffs else 0.0,
            "max_abs_weight_diff": max((a - b).abs().max().item() for a, b in zip(ours, theirs)),
            "test_accuracy": last.get("torch_test_accuracy"),
        }
    return summary


def _print_summary(summary: Dict, files: Dict, save_path: Optional[str]) -> None:
    acc = summary["test_accuracy"]
    acc_text = "n/a" if acc is None else f"{acc:.2%} ({round(acc * summary['test_images'])}/{summary['test_images']})"
    print(f"{summary['model']} on {summary['dataset']}: test accuracy {acc_text} after {summary['epochs']} "
          f"epochs, {summary['wall_seconds']:.1f} s ({summary['device']}, {summary['threads']} threads"
          f"{', %d processes' % summary['world_size'] if summary['world_size'] > 1 else ''})")
    if "rank_weight_max_abs_diff" in summary:
        print(f"ranks in sync: max |weight difference| across ranks {summary['rank_weight_max_abs_diff']:.1e}")
    parity = summary.get("torch_parity")
    if parity:
        torch_acc = parity["test_accuracy"]
        print(f"parity with torch convs (same init, same batches): |loss diff| {parity['first_step_loss_diff']:.1e} "
              f"at step 1, max {parity['first_epoch_max_loss_diff']:.1e} in the first epoch, max "
              f"{parity['max_abs_loss_diff']:.1e} over all {parity['steps']} steps (float rounding compounds "
              f"along two independent trajectories); final max |weight diff| {parity['max_abs_weight_diff']:.1e}; "
              f"test accuracy with torch convs {'n/a' if torch_acc is None else f'{torch_acc:.2%}'}")
    written = list(files.values()) + ([save_path] if save_path else [])
    print("wrote " + ", ".join(written))


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def _write_metrics(path: str, history: List[Dict]) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in history)
    atomic_write(path, write)


def _plot(history: List[Dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in history if r["type"] == "step"]
    epochs = [r for r in history if r["type"] == "epoch"]
    compared = bool(steps) and "torch_loss" in steps[0]
    # Step records of epoch e sit at e - 1 + k / n on the epoch axis.
    per_epoch: Dict[int, int] = {}
    for r in steps:
        per_epoch[r["epoch"]] = max(per_epoch.get(r["epoch"], 0), r["step"])
    xs = [r["epoch"] - 1 + r["step"] / per_epoch[r["epoch"]] for r in steps]
    ex = [r["epoch"] for r in epochs]
    fig, axes = plt.subplots(1, 3 if compared else 2, figsize=(16 if compared else 11, 4))
    ax_loss, ax_acc = axes[0], axes[1]
    ax_loss.plot(xs, [r["loss"] for r in steps], lw=0.5, alpha=0.35, color="C0", label="train, per batch")
    ax_loss.plot(ex, [r["train_loss"] for r in epochs], "o-", color="C0", label="train, epoch mean")
    ax_loss.plot(ex, [r["test_loss"] for r in epochs], "o-", color="C2", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title=f"{title}: loss")
    ax_acc.plot(ex, [100 * r["train_accuracy"] for r in epochs], "o-", color="C0", label="train")
    ax_acc.plot(ex, [100 * r["test_accuracy"] for r in epochs], "o-", color="C2", label="test")
    if compared:
        ax_acc.plot(ex, [100 * r["torch_test_accuracy"] for r in epochs], "x--", color="C3",
                    label="test, torch convs")
        ax_par = axes[2]
        ax_par.plot(xs, [max(abs(r["loss"] - r["torch_loss"]), 1e-12) for r in steps], lw=0.6, color="C3")
        ax_par.set(xlabel="epoch", ylabel="|loss(convops) - loss(torch convs)|", yscale="log",
                   title="parity with torch convs (same init, same batches)")
        ax_par.grid(alpha=0.3)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title}: accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    try:
        train(argv)
    except CLIError as e:
        if Dist.from_env().main:
            print(f"convops.train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
