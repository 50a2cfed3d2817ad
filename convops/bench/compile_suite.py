"""`python -m convops.bench --suite compile`: whole models, eager vs torch.compile, torch vs convops.

For each model (resnet18, mobilenet_v2; batch 8, fp32) four variants share one set of weights:
torch eager, torch compiled, convops eager, convops compiled (the convops model has every conv
replaced by its convops twin). Two passes: inference (eval, no_grad) and a training step
(train mode with dropout off, forward, cross-entropy, backward, SGD step; the model is compiled,
AOTAutograd compiles its backward). Compile time (the first call minus a steady-state call) is reported
apart from the step times. Variants run interleaved, one after the other in each round, and the
medians over rounds are reported, with ratios taken per round like the op benchmark.

Not part of `--suite all`: inductor compiles each model twice per variant, minutes on 2 cores.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
import torchvision

import convops

MODELS = ("resnet18", "mobilenet_v2")
VARIANTS = ("torch eager", "torch compiled", "convops eager", "convops compiled")


def build_models(arch: str, num_classes: int = 1000) -> Dict[str, torch.nn.Module]:
    """torchvision's model and its convops twin with the same weights (convops.models when it
    has the architecture, else convops.convert of a copy)."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)(num_classes=num_classes)
    zoo = getattr(convops, "models", None)
    if zoo is not None and hasattr(zoo, arch):
        ours = getattr(zoo, arch)(num_classes=num_classes)
        ours.load_state_dict(reference.state_dict())
    else:
        ours = convops.convert(copy.deepcopy(reference))
    return {"torch": reference, "convops": ours}


def _step_fns(models, training: bool, x, y) -> Dict[str, Callable]:
    """One callable per variant; compiled variants wrap the same module (same parameters)."""
    fns = {}
    for family, model in models.items():
        model.train(training)
        # dropout off (mobilenet_v2's classifier): its masks come from different random streams
        # in eager and compiled code, and the first losses could not be compared
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        # lr 0: the step does all its work but leaves the weights alone, so every variant's
        # first loss is computed from the same weights and can be compared
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0) if training else None
        for compiled in (False, True):
            net = torch.compile(model) if compiled else model
            if training:
                def step(net=net, model=model, optimizer=optimizer):
                    optimizer.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(net(x), y)
                    loss.backward()
                    optimizer.step()
                    return loss.detach()
            else:
                def step(net=net):
                    with torch.no_grad():
                        return net(x)
            fns[f"{family} {'compiled' if compiled else 'eager'}"] = step
    return fns


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def measure_model(arch: str, training: bool, batch: int, image: int, rounds: int, reps: int,
                  num_classes: int = 1000) -> List[dict]:
    torch._dynamo.reset()
    models = build_models(arch, num_classes)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image, image, generator=g)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    fns = _step_fns(models, training, x, y)
    # first calls: eager warm-up (allocator, oneDNN primitives) and compilation
    first_call, outputs = {}, {}
    for name in VARIANTS:
        start = time.perf_counter()
        outputs[name] = fns[name]()
        first_call[name] = time.perf_counter() - start
    reference = outputs["torch eager"]
    times = {name: [] for name in VARIANTS}
    for r in range(rounds):
        order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
        for name in order:
            samples = []
            for _ in range(reps):
                start = time.perf_counter()
                fns[name]()
                samples.append(time.perf_counter() - start)
            times[name].append(statistics.median(samples) * 1e3)
    rows = []
    for name in VARIANTS:
        ms = statistics.median(times[name])
        eager = name.replace("compiled", "eager")
        rows.append({
            "suite": "compile", "model": arch, "pass": "train step" if training else "inference",
            "variant": name, "batch": batch, "image": image, "ms": round(ms, 2),
            "vs_torch_eager": round(statistics.median(a / b for a, b in zip(times[name], times["torch eager"])), 3),
            "vs_own_eager": round(statistics.median(a / b for a, b in zip(times[name], times[eager])), 3),
            "compile_s": round(max(first_call[name] - ms * 1e-3, 0.0), 1) if "compiled" in name else None,
            # training: the first step's loss (same weights, same batch) ; inference: the logits
            "max_rel_err": _rel_err(outputs[name], reference),
            "rounds": rounds,
        })
    return rows


def run(quick: bool = False, log=print, models=MODELS) -> List[dict]:
    batch, image, rounds, reps = (8, 96, 3, 1) if quick else (8, 224, 5, 1)
    rows = []
    for arch in models:
        for training in (False, True):
            for row in measure_model(arch, training, batch, image, rounds, reps):
                rows.append(row)
                compile_s = f"  compile {row['compile_s']:5.1f} s" if row["compile_s"] is not None else ""
                log(f"  compile    {arch:<13} {row['pass']:<10} {row['variant']:<16} {row['ms']:9.2f} ms"
                    f"  vs torch eager {row['vs_torch_eager']:5.2f}  vs own eager {row['vs_own_eager']:5.2f}"
                    f"  err {row['max_rel_err']:.1e}{compile_s}")
    return rows


def markdown(rows: List[dict], info: dict) -> str:
    cpu = info["cpu"]
    first = rows[0] if rows else {"batch": 0, "image": 0, "rounds": 0}
    lines = [f"CPU: {cpu.get('model')} (family {cpu.get('family')} model {cpu.get('model_id')}, {cpu.get('isa')}), "
             f"{info['threads']} threads, torch {info['torch']}, fp32, batch {first['batch']}, "
             f"{first['image']}x{first['image']} images. Times are medians over {first['rounds']} interleaved "
             f"rounds; ratios are medians of per-round ratios (lower is better); compile time is the first "
             f"call minus a steady-state call.", "",
             "| model | pass | variant | ms | vs torch eager | vs own eager | compile s | max rel err |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        lines.append(f"| {r['model']} | {r['pass']} | {r['variant']} | {r['ms']:.1f} | {r['vs_torch_eager']:.2f} | "
                     f"{r['vs_own_eager']:.2f} | {compile_s} | {r['max_rel_err']:.1e} |")
    return "\n".join(lines)
