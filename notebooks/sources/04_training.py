# %% [markdown]
# # 04 · Training the zoo on the digits
#
# The convops model zoo (`convops.models`) trained with `convops.train` on scikit-learn's
# handwritten digits (1797 8×8 images, upscaled and framed to 32×32 like MNIST; bundled with
# scikit-learn, nothing is downloaded). With `--compare-torch` the trainer steps an identical
# copy of the model whose convolutions are torch's own, on the same batches, so the loss curves
# of convops and torch can be laid on top of each other.
#
# Sizes are small so the notebook runs in about a minute on 2 CPU cores: LeNet-5 for a few
# epochs, ResNet-18 and MobileNetV2 for a few dozen steps.

# %%
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import convops
from convops import models, train

torch.manual_seed(0)
torch.set_num_threads(2)
print("models:", ", ".join(models.list_models()))

# %% [markdown]
# ## The zoo at a glance
#
# `convops.utils.summary` on a 32×32 single-channel input with 10 classes: parameters (textbook
# count), forward FLOPs (as `FlopCounterMode` counts them) and the receptive field of the last
# spatial layer.

# %%
print(f"{'model':16s} {'params':>12s} {'MFLOPs':>10s} {'receptive field':>16s}")
for name in ("lenet5", "resnet18", "mobilenet_v2"):
    model = models.get_model(name, num_classes=10, in_channels=1)
    s = convops.utils.summary(model, (1, 1, 32, 32))
    spatial = [r for r in s.rows if r.geometry is not None]
    print(f"{name:16s} {s.total_params:12,d} {s.total_flops / 1e6:10.1f} {spatial[-1].field.rf[0]:>16}")


# %% [markdown]
# ## LeNet-5, convops vs torch
#
# `python -m convops.train --model lenet5 --dataset digits --compare-torch`, called from Python.
# `metrics.jsonl` holds one record per step (convops loss and the torch twin's loss) and per
# epoch (test accuracy of both).

# %%
def run(*argv):
    out_dir = tempfile.mkdtemp(prefix="convops-train-")
    summary = train.train(list(argv) + ["--dataset", "digits", "--compare-torch", "--no-progress",
                                        "--no-plot", "--out-dir", out_dir, "--threads", "2"])
    history = [json.loads(line) for line in Path(out_dir, "metrics.jsonl").read_text().splitlines()]
    return summary, history


lenet_summary, lenet_history = run("--model", "lenet5", "--epochs", "6", "--batch-size", "32")
print(json.dumps(lenet_summary["torch_parity"], indent=1))


def plot_run(history, title, ax_loss, ax_acc):
    steps = [r for r in history if r["type"] == "step"]
    epochs = [r for r in history if r["type"] == "epoch"]
    x = range(1, len(steps) + 1)
    ax_loss.plot(x, [r["loss"] for r in steps], label="convops", lw=2)
    ax_loss.plot(x, [r["torch_loss"] for r in steps], "--", label="torch", lw=1.2)
    ax_loss.set(title=f"{title}: training loss per step", xlabel="step", yscale="log")
    ax_loss.legend()
    if ax_acc is not None and epochs:
        e = [r["epoch"] for r in epochs]
        ax_acc.plot(e, [r["test_accuracy"] for r in epochs], "o-", label="convops", lw=2)
        ax_acc.plot(e, [r["torch_test_accuracy"] for r in epochs], "x--", label="torch")
        ax_acc.set(title=f"{title}: test accuracy", xlabel="epoch", ylim=(0, 1))
        ax_acc.legend()


fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
plot_run(lenet_history, "LeNet-5", *axes)
plt.tight_layout()
plt.show()

# %% [markdown]
# The two curves coincide: the convops model and its torch twin start from the same weights,
# see the same batches and their losses differ only by float32 rounding (the maximal
# difference is printed above).
#
# ## Deeper models, a few steps
#
# ResNet-18 (dense 3×3 convolutions) and MobileNetV2 (depthwise-separable blocks), 2 short
# epochs each, again against their torch twins.

# %%
deep = {}
for name in ("resnet18", "mobilenet_v2"):
    summary, history = run("--model", name, "--epochs", "2", "--steps-per-epoch", "12", "--batch-size", "32",
                           "--lr", "2e-3")
    deep[name] = (summary, history)
    parity = summary["torch_parity"]
    print(f"{name:14s} steps {parity['steps']:3d}  max |loss - torch loss| {parity['max_abs_loss_diff']:.2e}  "
          f"max |weight - torch weight| {parity['max_abs_weight_diff']:.2e}  "
          f"test acc {summary['test_accuracy']:.1%} (torch {parity['test_accuracy']:.1%})")

fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
for ax, (name, (summary, history)) in zip(axes, deep.items()):
    plot_run(history, name, ax, None)
plt.tight_layout()
plt.show()
