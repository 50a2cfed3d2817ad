"""python -m convops.train: CLI smoke run, exact resume, 2-process DDP equivalence, datasets read
from fake files in torchvision's on-disk format, and the bad-input errors."""
import json
import os
import pickle
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

import convops.functional as cF
from convops import train
from convops.datasets import load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Quick runs: a few batches per epoch, one thread, no plot unless the test looks at it.
QUICK = ["--threads", "1", "--steps-per-epoch", "3", "--batch-size", "8"]


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


def run_cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "convops.train", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def records(path, kind):
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["type"] == kind]


def checkpoint_weights(path, replica="convops"):
    return torch.load(path, weights_only=True)["replicas"][replica]["model"]


# ----------------------------------------------------------------------------- the CLI

def test_cli_smoke_run_writes_metrics_plot_summary_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = run_cli("--epochs", "1", "--compare-torch", "--save", "--out-dir", str(out), *QUICK)
    assert result.returncode == 0, result.stderr
    assert "lenet5 on digits: test accuracy" in result.stdout
    assert "parity with torch convs" in result.stdout
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "curves.png", "metrics.jsonl", "summary.json"]
    steps = records(out / "metrics.jsonl", "step")
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["torch_loss"] == pytest.approx(r["loss"], abs=1e-4) for r in steps)
    (epoch,) = records(out / "metrics.jsonl", "epoch")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] == epoch["test_accuracy"] and summary["test_images"] == 360
    assert summary["torch_parity"]["max_abs_loss_diff"] < 1e-4
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ours, theirs = checkpoint_weights(out / "checkpoint.pt"), checkpoint_weights(out / "checkpoint.pt", "torch")
    assert ours.keys() == theirs.keys() and len(ours) == 10


def test_resume_continues_exactly(tmp_path):
    common = ["--epochs", "3", "--no-plot", *QUICK]
    train.train([*common, "--out-dir", str(tmp_path / "straight"), "--save"])
    # Interrupted after the first epoch, resumed from its checkpoint in another directory.
    train.train([*common, "--out-dir", str(tmp_path / "first"), "--save", "--stop-after", "1"])
    assert len(records(tmp_path / "first" / "metrics.jsonl", "epoch")) == 1
    train.train([*common, "--out-dir", str(tmp_path / "resumed"), "--save",
                 "--resume", str(tmp_path / "first" / "checkpoint.pt")])

    def trajectory(run):
        return [(r["epoch"], r["step"], r["loss"], r["lr"]) for r in records(tmp_path / run / "metrics.jsonl", "step")]
    straight, resumed = trajectory("straight"), trajectory("resumed")
    assert len(straight) == 9 and resumed == straight  # bitwise: same floats
    a, b = (checkpoint_weights(tmp_path / run / "checkpoint.pt") for run in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_other_trajectory_warns(tmp_path, capsys):
    train.train(["--epochs", "1", "--no-plot", *QUICK, "--out-dir", str(tmp_path / "a"), "--save"])
    capsys.readouterr()
    train.train(["--epochs", "2", "--no-plot", *QUICK, "--out-dir", str(tmp_path / "b"),
                 "--resume", str(tmp_path / "a" / "checkpoint.pt")])
    assert "resuming with epochs=2 (checkpoint: 1)" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_with_the_summed_batch(tmp_path):
    """2 ranks x batch 8 (gloo, one thread each) against 1 process x batch 16, float64."""
    common = ["--dtype", "float64", "--epochs", "2", "--steps-per-epoch", "3", "--threads", "1", "--no-plot",
              "--save"]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
         "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
         "-m", "convops.train", *common, "--batch-size", "8", "--out-dir", str(tmp_path / "ddp")],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = train.train([*common, "--batch-size", "16", "--out-dir", str(tmp_path / "single")])

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["rank_weight_max_abs_diff"] == 0.0  # the ranks hold identical weights
    assert ddp.stdout.count("test accuracy") == 1  # only rank 0 reports
    a = checkpoint_weights(tmp_path / "ddp" / "checkpoint.pt")
    b = checkpoint_weights(tmp_path / "single" / "checkpoint.pt")
    max_diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"DDP (2 x 8) vs one process (16), float64, 6 Adam steps: max |weight diff| {max_diff:.2e}")
    assert max_diff < 1e-12
    losses = [r["loss"] for r in records(tmp_path / "ddp" / "metrics.jsonl", "step")]
    expected = [r["loss"] for r in records(tmp_path / "single" / "metrics.jsonl", "step")]
    assert len(losses) == 6
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-13, atol=1e-13)
    assert summary["test_accuracy"] == single["test_accuracy"]


def test_amp_bf16_and_channels_last(tmp_path):
    summary = train.train(["--epochs", "1", "--amp", "bf16", "--channels-last", "--no-plot", *QUICK,
                           "--out-dir", str(tmp_path)])
    assert summary["steps"] == 3 and 0 <= summary["test_accuracy"] <= 1
    # Under autocast a convops conv runs in bfloat16 like torch's and gives float32 weight grads.
    x = torch.randn(2, 3, 9, 9)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ref = cF.conv2d(x, w, padding=1), torch.nn.functional.conv2d(x, w, padding=1)
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), atol=2e-2, rtol=2e-2)
    ours.float().sum().backward()
    assert w.grad.dtype == torch.float32


# ----------------------------------------------------------------------------- datasets from files

def _write_idx(path, array):
    """torchvision's MNIST raw format: big-endian magic (0x08 = ubyte, ndim) and dims."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 | array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def _fake_mnist(root, folder, n_train=40, n_test=12):
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[prefix] = (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n))
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", arrays[prefix][0])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", arrays[prefix][1])
    return arrays


def _fake_cifar10(root, per_batch=8):
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), rng.integers(0, 10, per_batch)
        arrays[name] = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels.tolist()}, f)
    return arrays


def _unnormalise_check(images, raw):
    """The loader normalises per channel; undoing it with raw's statistics gives raw back."""
    raw = torch.from_numpy(raw).float() / 255.0
    assert images.shape == raw.shape
    mean = raw.mean(dim=(0, 2, 3), keepdim=True)
    std = raw.std(dim=(0, 2, 3), keepdim=True)
    torch.testing.assert_close(images * std + mean, raw, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_format_files(tmp_path, name, folder):
    arrays = _fake_mnist(tmp_path, folder)
    data = load_dataset(name, str(tmp_path))
    _unnormalise_check(data.train_images, arrays["train"][0][:, None])
    assert data.train_labels.tolist() == arrays["train"][1].tolist()
    assert data.test_labels.tolist() == arrays["t10k"][1].tolist()
    summary = train.train(["--dataset", name, "--data-dir", str(tmp_path), "--epochs", "1", "--no-plot",
                           *QUICK, "--out-dir", str(tmp_path / "out")])
    assert summary["test_images"] == 12 and summary["config"]["kwargs"]["input_size"] == 28


def test_cifar10_format_files(tmp_path):
    arrays = _fake_cifar10(tmp_path)
    data = load_dataset("cifar10", str(tmp_path))
    train_raw = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    _unnormalise_check(data.train_images, train_raw)
    assert data.test_labels.tolist() == arrays["test_batch"][1].tolist()
    summary = train.train(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1", "--no-plot",
                           *QUICK, "--out-dir", str(tmp_path / "out")])
    assert summary["config"]["kwargs"]["in_channels"] == 3 and summary["test_images"] == 8


def test_digits_split_is_stratified_and_seeded():
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.train_images, b.train_images) and not torch.equal(a.train_labels, c.train_labels)
    assert a.train_images.shape == (1437, 1, 32, 32) and a.test_images.shape == (360, 1, 32, 32)
    counts = torch.bincount(a.test_labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # ~10% per class, as in the full set
    assert load_dataset("digits", image_size=28).train_images.shape[-1] == 28


# ----------------------------------------------------------------------------- bad input

def _error(argv, capsys):
    """main(argv) for an input that must fail: exit code 2 and a one-line message."""
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("convops.train: error: "), err
    return err


def test_unknown_model_cli_one_line_no_traceback(tmp_path):
    result = run_cli("--model", "resnet19", "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("convops.train: error: unknown model 'resnet19'; available: dcn_resnet50, "
                                     "lenet5, mobilenet_v2, resnet18, resnet34, resnet50, resnext50_32x4d")
    assert not (tmp_path / "out").exists()


def test_unknown_dataset(tmp_path, capsys):
    err = _error(["--dataset", "imagenet", "--out-dir", str(tmp_path / "out")], capsys)
    assert "unknown dataset 'imagenet'; available: digits, mnist, fashion-mnist, cifar10" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, expected", [
    ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
    ("fashion-mnist", "FashionMNIST/raw/t10k-labels-idx1-ubyte"),
    ("cifar10", "cifar-10-batches-py/data_batch_1"),
])
def test_missing_data_files(tmp_path, capsys, name, expected):
    err = _error(["--dataset", name, "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")], capsys)
    assert "files not found (never downloaded)" in err and expected in err
    assert not (tmp_path / "out").exists()
    err = _error(["--dataset", name, "--out-dir", str(tmp_path / "out")], capsys)
    assert "pass --data-dir" in err


def test_truncated_data_file(tmp_path, capsys):
    _fake_mnist(tmp_path, "MNIST")
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:6])
    err = _error(["--dataset", "mnist", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")], capsys)
    assert "cannot read MNIST files" in err


def test_checkpoint_of_another_model(tmp_path, capsys):
    train.train(["--epochs", "1", "--no-plot", *QUICK, "--out-dir", str(tmp_path / "a"), "--save"])
    capsys.readouterr()
    err = _error(["--model", "resnet18", "--resume", str(tmp_path / "a" / "checkpoint.pt"),
                  "--out-dir", str(tmp_path / "b")], capsys)
    assert "was written for model lenet5 on digits" in err and "not resnet18 on digits" in err
    assert not (tmp_path / "b").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    err = _error(["--resume", str(tmp_path / "junk.pt"), "--out-dir", str(tmp_path / "b")], capsys)
    assert "cannot read" in err and "junk.pt" in err
    err = _error(["--resume", str(tmp_path / "missing.pt"), "--out-dir", str(tmp_path / "b")], capsys)
    assert "no checkpoint file" in err
    err = _error(["--resume", str(tmp_path / "a" / "checkpoint.pt"), "--compare-torch", *QUICK,
                  "--out-dir", str(tmp_path / "b")], capsys)
    assert "saved without --compare-torch" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--epochs", "0"), ("--batch-size", "-3"),
                                         ("--lr", "0"), ("--batch-size", "two")])
def test_bad_numbers(tmp_path, capsys, flag, value):
    err = _error([flag, value, "--out-dir", str(tmp_path / "out")], capsys)
    assert flag in err or "invalid int value" in err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # A directory below a regular file cannot be created, not even by root.
    err = _error(["--out-dir", str(blocker / "run" / "deeper"), "--epochs", "1"], capsys)
    assert "cannot write to" in err and "a-file" in err
    err = _error(["--out-dir", str(tmp_path / "ok"), "--save", str(blocker / "ck.pt")], capsys)
    assert "cannot write to" in err
    assert sorted(os.listdir(tmp_path)) == ["a-file"]  # nothing created, not even the good out-dir


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")

    def failing(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        train.atomic_write(str(target), failing)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint.pt"]
    train.atomic_write(str(target), lambda tmp: open(tmp, "wb").write(b"new"))
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_conv_type_option(tmp_path, capsys):
    summary = train.train(["--conv-type", "separable", "--epochs", "1", "--no-plot", *QUICK,
                           "--out-dir", str(tmp_path / "sep")])
    assert summary["config"]["kwargs"]["conv_type"] == "separable" and summary["steps"] == 3
    err = _error(["--conv-type", "separable", "--compare-torch", "--out-dir", str(tmp_path / "b")], capsys)
    assert "has no torch equivalent" in err and not (tmp_path / "b").exists()
    err = _error(["--conv-type", "sparse", "--out-dir", str(tmp_path / "b")], capsys)
    assert "unknown conv type 'sparse'; available: dense, separable, deformable, modulated" in err
