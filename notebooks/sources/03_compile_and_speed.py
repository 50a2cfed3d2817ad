# %% [markdown]
# # 03 · torch.compile, export, FLOPs and speed
#
# convops operators are registered `torch.ops.convops.*` ops with fake (meta) kernels and a
# registered backward, so the PyTorch 2 stack treats each one as a single opaque node:
# Dynamo captures it without a graph break, AOTAutograd differentiates it with our backward
# formulas (themselves convops ops), inductor fuses the elementwise work *around* it, and
# `torch.export` serialises it. This notebook shows each step on small models, counts FLOPs,
# and plots the whole-model benchmark (`python -m convops.bench --suite compile`).

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch.utils.flop_counter import FlopCounterMode

import convops
import convops.functional as cF

torch.manual_seed(0)
torch.set_num_threads(2)


class Net(torch.nn.Module):
    """conv-BN-ReLU ×2, a residual add and a 1×1 head: the pattern of a ResNet block."""

    def __init__(self, c=32):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c)
        self.head = torch.nn.Conv2d(c, 10, 1)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + y)
        return self.head(y).mean((2, 3))


torch_net = Net().eval()
net = convops.convert(Net().eval())
net.load_state_dict(torch_net.state_dict())
x = torch.randn(8, 3, 32, 32)
print("convops == torch:", torch.allclose(net(x), torch_net(x), atol=1e-5))

# %% [markdown]
# ## Dynamo: one graph, each convops op one node
#
# A backend that only records the FX graph Dynamo hands it. `fullgraph=True` would raise on a
# graph break; `explain` counts them.

# %%
graphs = []


def recording_backend(gm, example_inputs):
    graphs.append(gm)
    return gm.forward


torch.compile(net, backend=recording_backend, fullgraph=True)(x)
explained = torch._dynamo.explain(net)(x)
print(f"graphs: {explained.graph_count}, graph breaks: {explained.graph_break_count}")
calls = [getattr(n.target, "__name__", str(n.target)) for n in graphs[0].graph.nodes if n.op == "call_function"]
print("call_function nodes:", len(calls))
for name in calls:
    print("  ", name)

# %% [markdown]
# Each functional call becomes an `autograd_function_apply` node (Dynamo traced our
# `torch.autograd.Function`: forward and backward bodies are subgraphs), and inside it the op
# itself appears once:

# %%
print(graphs[0].fwd_body_0.code)

# %% [markdown]
# ## AOTAutograd: forward and backward graphs
#
# AOTAutograd runs the fake kernels to learn output shapes and traces our backward formulas.
# The backward of `conv2d` is written with convops ops (input gradient = `conv_transpose2d`,
# weight gradient = `conv2d_weight_grad`), so no torch convolution appears anywhere.

# %%
aot = {"fw": [], "bw": []}


def keep(kind):
    def compiler(gm, example_inputs):
        aot[kind].append(gm)
        return make_boxed_func(gm.forward)
    return compiler


def one_conv(x, w):
    return torch.relu(cF.conv2d(x, w, padding=1)).sum()


xs = torch.randn(2, 3, 8, 8, requires_grad=True)
ws = torch.randn(4, 3, 3, 3, requires_grad=True)
torch.compile(one_conv, backend=aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw")))(xs, ws).backward()
for kind in ("fw", "bw"):
    ops_in_graph = [str(n.target) for n in aot[kind][0].graph.nodes if n.op == "call_function"]
    print(kind, "graph:", ops_in_graph)

# %% [markdown]
# ## Inductor: what compiling changes
#
# Inductor cannot look inside an opaque op, so the convolutions run exactly as in eager mode.
# What it changes is the code between them: BatchNorm (inference: a per-channel scale and
# shift), ReLU, the residual add and the mean become a few fused C++ loops instead of one
# pass over memory each, and Python/dispatcher overhead disappears. For torch's own
# `aten.convolution` inductor can additionally pick layouts and (with freezing) fold BN into
# the weights; for convops it keeps the op and the layout we return.
#
# A small timing on this machine (batch 8, 32×32, inference; the best of 15 runs, since the
# machine this notebook was executed on is a shared 2-core VM and its medians are noisy):

# %%
def best_ms(fn, reps=15):
    fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples) * 1e3


results = {}
with torch.no_grad():
    for label, model in (("torch", torch_net), ("convops", net)):
        torch._dynamo.reset()
        compiled = torch.compile(model)
        start = time.perf_counter()
        compiled(x)
        compile_s = time.perf_counter() - start
        assert torch.allclose(compiled(x), torch_net(x), atol=1e-4)
        results[label] = dict(eager=best_ms(lambda: model(x)), compiled=best_ms(lambda: compiled(x)),
                              compile_s=compile_s)
for label, r in results.items():
    print(f"{label:8s} eager {r['eager']:6.2f} ms   compiled {r['compiled']:6.2f} ms   "
          f"(compile {r['compile_s']:.1f} s)")

fig, ax = plt.subplots(figsize=(6, 3))
labels = list(results)
ax.bar(np.arange(2) - 0.2, [results[k]["eager"] for k in labels], 0.4, label="eager")
ax.bar(np.arange(2) + 0.2, [results[k]["compiled"] for k in labels], 0.4, label="torch.compile")
ax.set_xticks(range(2), labels)
ax.set_ylabel("ms per batch")
ax.set_title("small ResNet-style block, batch 8, 32×32")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## torch.export
#
# The exported program keeps the convops ops as nodes, runs without Python model code, and
# survives a save/load round trip (the ops are found by name once `convops` is imported).

# %%
import io

program = torch.export.export(net, (x,))
print([str(n.target) for n in program.graph.nodes if "convops" in str(n.target)])
buffer = io.BytesIO()
torch.export.save(program, buffer)
buffer.seek(0)
loaded = torch.export.load(buffer)
print("exported == eager:", torch.allclose(loaded.module()(x), net(x), atol=1e-6))

# %% [markdown]
# ## Counting FLOPs
#
# `import convops` registers a FLOP formula for every convops op with
# `torch.utils.flop_counter`, equal to what torch counts for its own convolution of the same
# shape, so `FlopCounterMode` gives the same totals for a converted model, forward and
# backward. `convops.utils.summary` adds per-layer receptive fields.

# %%
torch.manual_seed(0)
resnet = torchvision.models.resnet18(num_classes=10)
convops_resnet = convops.convert(torchvision.models.resnet18(num_classes=10))
convops_resnet.load_state_dict(resnet.state_dict())
image = torch.randn(2, 3, 64, 64)
counts = {}
for label, model in (("torchvision", resnet), ("convops", convops_resnet)):
    with FlopCounterMode(display=False) as counter:
        model(image).sum().backward()
    counts[label] = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    print(f"{label:12s} total {counter.get_total_flops() / 1e9:.3f} GFLOPs (fwd+bwd)  {counts[label]}")

# %%
s = convops.utils.summary(convops_resnet, (1, 3, 224, 224))
print("\n".join(str(s).splitlines()[:12] + ["..."] + str(s).splitlines()[-6:]))
spatial = [r for r in s.rows if r.geometry is not None]
fig, ax = plt.subplots(figsize=(8, 3))
ax.plot([r.field.rf[0] for r in spatial], "o-", label="receptive field (px)")
ax.plot([r.field.jump[0] for r in spatial], "s-", label="jump (px)")
ax.set_xticks(range(len(spatial)), [r.name for r in spatial], rotation=90, fontsize=7)
ax.set_yscale("log")
ax.set_title("ResNet-18: receptive field and jump per conv/pool layer (224×224 input)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Whole-model benchmark
#
# `python -m convops.bench --suite compile --json bench/results/compile-<cpu>.json` times
# resnet18 and mobilenet_v2 (batch 8, 224×224, fp32, CPU) in four variants, inference and a
# training step; the committed results are plotted here (regenerate them on your machine; the
# CPU is named in the file).

# %%
results_files = sorted(Path("../bench/results").glob("compile-*.json"))
if not results_files:
    print("no results yet: run python -m convops.bench --suite compile --json bench/results/compile-cpu.json")
else:
    data = json.loads(results_files[-1].read_text())
    cpu = data["machine"]["cpu"]
    print(f"{results_files[-1].name}: {cpu.get('model')} family {cpu.get('family')} model {cpu.get('model_id')}, "
          f"{data['machine']['threads']} threads, torch {data['machine']['torch']}")
    if data.get("note"):
        print("note:", data["note"])
    rows = data["compile_rows"]
    groups = sorted({(r["model"], r["pass"]) for r in rows}, key=lambda g: (g[0], g[1] != "inference"))
    variants = ["torch eager", "torch compiled", "convops eager", "convops compiled"]
    print(f"{'model':13s} {'pass':11s} " + " ".join(f"{v:>17s}" for v in variants) + "  compile s (torch/convops)")
    for g in groups:
        by = {r["variant"]: r for r in rows if (r["model"], r["pass"]) == g}
        print(f"{g[0]:13s} {g[1]:11s} " + " ".join(f"{by[v]['ms']:14.1f} ms" for v in variants)
              + f"  {by['torch compiled']['compile_s']:.0f} / {by['convops compiled']['compile_s']:.0f}")
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.4), sharey=False)
    for ax, g in zip(np.atleast_1d(axes), groups):
        by = {r["variant"]: r for r in rows if (r["model"], r["pass"]) == g}
        ax.bar(range(4), [by[v]["ms"] for v in variants], color=["C0", "C0", "C1", "C1"],
               hatch=["", "//", "", "//"], edgecolor="k")
        ax.set_xticks(range(4), [v.replace(" ", "\n") for v in variants], fontsize=8)
        ax.set_title(f"{g[0]} · {g[1]}", fontsize=10)
        ax.set_ylabel("ms")
    plt.suptitle("eager vs torch.compile, torch vs convops (hatched: compiled)")
    plt.tight_layout()
    plt.show()
