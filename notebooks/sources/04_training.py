# %% [markdown]
# # 04 · Training the zoo on the digits
#
# The convops model zoo (`convops.models`) trained with `convops.train` on scikit-learn's
# handwritten digits (1797 8×8 images, upscaled and framed to 32×32 like MNIST; bundled with
# scikit-learn, nothing is downloaded). With `--compare-torch` the trainer steps an identical
# copy of the model whose convolutions are torch's own, on the same batches, so the loss curves
# of convops and torch can be laid on top of each other.
#
# Sizes are small so the notebook runs in about a minute on a CPU: LeNet-5 for 80 steps,
# ResNet-18 for 10. Training runs on one thread: the notebook is executed on a shared 2-core VM,
# where OpenMP threads waiting for each other cost more than they gain at these sizes.

# %%
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import convops
from convops import models, train

torch.manual_seed(0)
torch.set_num_threads(1)
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
                                        "--no-plot", "--out-dir", out_dir, "--threads", "1"])
    history = [json.loads(line) for line in Path(out_dir, "metrics.jsonl").read_text().splitlines()]
    return summary, history


lenet_summary, lenet_history = run("--model", "lenet5", "--epochs", "4", "--steps-per-epoch", "20",
                                   "--batch-size", "32")
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
# ## A deeper model, a few steps
#
# ResNet-18 (dense 3×3 convolutions, batch norm, residual adds), 8 steps against its torch twin.

# %%
resnet_summary, resnet_history = run("--model", "resnet18", "--epochs", "2", "--steps-per-epoch", "4",
                                     "--batch-size", "16")
parity = resnet_summary["torch_parity"]
print(f"resnet18: steps {parity['steps']}, max |loss - torch loss| {parity['max_abs_loss_diff']:.2e}, "
      f"max |weight - torch weight| {parity['max_abs_weight_diff']:.2e}")

# %% [markdown]
# Here the two runs agree on the first step to float32 rounding, then drift apart by roughly
# an order of magnitude per step. That is the training dynamics, not the convolution: on a
# 32×32 input ResNet-18's last stage works on 1×1 maps, where BatchNorm normalises 16 numbers
# per channel, and Adam rescales every coordinate of the gradient to a unit step, so rounding
# differences of 1e-7 are amplified at every step. The control below trains the *torch* model
# twice, with the same batches, once in NCHW and once in channels-last memory layout (torch
# then picks other convolution kernels: same maths, different rounding). Its two runs drift
# apart the same way.

# %%
import copy

import torch.nn.functional as F
from convops.datasets import load_dataset

digits = load_dataset("digits")


def adam_losses(model, memory_format, steps=5, seed=0):
    model = copy.deepcopy(model).to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(digits.train_labels), (16,), generator=generator)
        loss = F.cross_entropy(model(digits.train_images[idx].contiguous(memory_format=memory_format)),
                               digits.train_labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


torch.manual_seed(0)
torch_resnet = models.torch_twin(models.get_model("resnet18", num_classes=10, in_channels=1))
nchw = adam_losses(torch_resnet, torch.contiguous_format)
channels_last = adam_losses(torch_resnet, torch.channels_last)
control = [abs(a - b) for a, b in zip(nchw, channels_last)]
steps = [r for r in resnet_history if r["type"] == "step"]
ours_vs_torch = [abs(r["loss"] - r["torch_loss"]) for r in steps]

fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
plot_run(resnet_history, "ResNet-18", axes[0], None)
axes[1].semilogy(range(1, len(ours_vs_torch) + 1), [max(d, 1e-9) for d in ours_vs_torch], "o-",
                 label="convops vs torch (trainer run above)")
axes[1].semilogy(range(1, len(control) + 1), [max(d, 1e-9) for d in control], "s--",
                 label="torch NCHW vs torch channels-last")
axes[1].set(title="|loss difference| per step (Adam, batch 16)", xlabel="step")
axes[1].legend()
plt.tight_layout()
plt.show()
