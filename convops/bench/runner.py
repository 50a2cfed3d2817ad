"""Runner: for each case, convops and the reference are timed alternately (interleaved rounds,
torch.utils.benchmark), each round's median kept, and the median over rounds reported. Parity
of the outputs (and of the gradients in the fwd+bwd pass) is checked on the same tensors.

Approximate cases (Case.approximate, e.g. a low-rank separable pair standing in for a dense
conv): convops runs the approximation on prepared operands, the exact convops op is timed in the
same rounds too (row fields convops_exact_ms and ratio_vs_convops = approximation / exact
convops), and max_rel_err (output and input gradient) is the approximation error, reported
with approximate=True and never counted as a parity failure."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch.utils import benchmark

import convops

from .cases import OPS, SUITES, Case

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "137438953472"}


def _ensure_malloc_env():
    """glibc reads these at start-up only: re-exec once with them set, or every large freed
    buffer goes back to the OS and its reuse page-faults, which then dominates the timings."""
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()) or os.environ.get("CONVOPS_BENCH_NO_REEXEC"):
        return
    env = dict(os.environ, **MALLOC_ENV)
    os.execve(sys.executable, [sys.executable, "-m", "convops.bench"] + sys.argv[1:], env)


def machine_info() -> dict:
    cpu = {"model": platform.processor()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        first = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
        first = {k.strip(): v.strip() for k, v in first.items()}
        flags = set(first.get("flags", "").split())
        cpu = {"model": first.get("model name", ""), "family": first.get("cpu family", ""),
               "model_id": first.get("model", ""),
               "isa": "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "baseline")}
    except OSError:
        pass
    build = convops.ops.build_info()
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "convops": convops.__version__, "cpu_kernel_selected": build.get("cpu_selected_isa"),
            "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV}}


def _make_inputs(case: Case, device, dtype, requires_grad):
    g = torch.Generator().manual_seed(0)
    made = []
    for name, shape, init in case.tensor_specs():
        if init == "none":
            made.append(None)
            continue
        if callable(init):
            t = init(shape, g)
        else:
            kind, _, scale = init.partition("*")  # "randn*0.5": a scaled init
            t = torch.rand(shape, generator=g) if kind == "uniform" else torch.randn(shape, generator=g)
            if kind == "weight":
                t = t * 0.05
            if scale:
                t = t * float(scale)
        t = t.to(device, dtype)
        if case.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        made.append(t.requires_grad_(requires_grad))
    return made


def _callable(fn, case, tensors, backward):
    if not backward:
        def run():
            with torch.no_grad():
                return fn(*tensors, **case.kwargs)
        return run
    grad = None

    def run():
        nonlocal grad
        out = fn(*tensors, **case.kwargs)
        if grad is None:
            grad = torch.ones_like(out)
        for t in tensors:
            if t is not None:
                t.grad = None
        out.backward(grad)
    return run


def _parity(case, ours, ref, tensors, backward) -> float:
    """Largest |ours - ref| relative to max|ref|, over the output and (fwd+bwd) the gradients
    (of an approximate case: the input's only, the other operands differ)."""
    approx = case.approximate

    def run(fn, prepare=None):
        xs = [None if t is None else t.detach().clone().requires_grad_(backward) for t in tensors]
        out = fn(*(prepare(*xs) if prepare else xs), **case.kwargs)
        if not backward:
            return [out.detach()]
        gy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
        wrt = xs[:1] if approx else [t for t in xs if t is not None]
        return [out.detach()] + list(torch.autograd.grad(out, wrt, gy))
    worst = 0.0
    for a, r in zip(run(ours, approx.prepare if approx else None), run(ref)):
        scale = r.abs().max().item() or 1.0
        worst = max(worst, (a.double() - r.double()).abs().max().item() / scale)
    return worst


def peak_alloc_bytes(fn) -> int:
    """Peak of the bytes allocated and live at once during one call of fn (its outputs and
    gradients included), from the profiler's allocation events; comparable across ops."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return peak


def measure(case: Case, backward: bool, rounds: int, min_run_time: float, device="cpu", dtype=torch.float32,
            memory=False):
    exact_fn, ref_name, ref_fn, *extra = OPS[case.op]
    # optional 4th item: {label: fn} further references (e.g. the dense conv of the same shape),
    # timed in the same rounds and reported as ratio_vs_<label>
    extra = extra[0] if extra else {}
    tensors = _make_inputs(case, device, dtype, backward)
    fns = {"ref": _callable(ref_fn, case, tensors, backward)}
    if case.approximate:
        prepared = [None if t is None else t.detach().requires_grad_(backward)
                    for t in case.approximate.prepare(*tensors)]
        fns["ours"] = _callable(case.approximate.fn, case, prepared, backward)
        fns["exact"] = _callable(exact_fn, case, tensors, backward)
    else:
        fns["ours"] = _callable(exact_fn, case, tensors, backward)
    fns.update({label: _callable(fn, case, tensors, backward) for label, fn in extra.items()})
    ours, ref = fns["ours"], fns["ref"]
    for fn in fns.values():
        fn()  # warm-up (allocator, oneDNN primitive cache)
    torch.ops.convops._workspace_peak_bytes(True)
    ours()
    workspace = torch.ops.convops._workspace_peak_bytes(True)
    times = {key: [] for key in fns}
    keys = list(fns)
    for i in range(rounds):
        # Rotate which goes first, and pair each round's medians: the VM's speed drifts over
        # seconds, so only measurements taken back to back are compared.
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:
            t = benchmark.Timer(stmt="fn()", globals={"fn": fns[key]}, num_threads=torch.get_num_threads())
            times[key].append(t.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    ratio = statistics.median(o / r for o, r in zip(times["ours"], times["ref"]))
    ours_ms, ref_ms = statistics.median(times["ours"]), statistics.median(times["ref"])
    row = {
        "suite": case.suite, "case": case.name, "op": case.op, "shapes": case.shapes,
        "dtype": str(dtype).replace("torch.", ""), "device": device,
        "pass": "fwd+bwd" if backward else "fwd",
        "convops_ms": round(ours_ms, 4), "reference": ref_name, "reference_ms": round(ref_ms, 4),
        "ratio": round(ratio, 3),
        "max_rel_err": _parity(case, case.approximate.fn if case.approximate else exact_fn, ref_fn, tensors,
                               backward),
        "workspace_peak_mb": round(workspace / 2**20, 2),
        "rounds": rounds,
    }
    if case.approximate:
        row["approximate"] = True
        row["convops_exact_ms"] = round(statistics.median(times["exact"]), 4)
        row["ratio_vs_convops"] = round(statistics.median(o / e for o, e in zip(times["ours"], times["exact"])), 3)
    for label in extra:
        row[f"ratio_vs_{label}"] = round(statistics.median(o / r for o, r in zip(times["ours"], times[label])), 3)
    if memory:
        row["peak_mb"] = round(peak_alloc_bytes(ours) / 2**20, 2)
        row["reference_peak_mb"] = round(peak_alloc_bytes(ref) / 2**20, 2)
    if case.bytes_moved and not backward:
        row["convops_gbps"] = round(case.bytes_moved / (ours_ms * 1e-3) / 1e9, 1)
    return row


def run_suites(names, quick=False, passes=("fwd", "fwd+bwd"), log=print, memory=False):
    rounds, min_time = (3, 0.05) if quick else (11, 0.1)
    rows = []
    for name in names:
        for case in SUITES[name]():
            for p in passes:
                row = measure(case, p == "fwd+bwd", rounds, min_time, memory=memory)
                rows.append(row)
                log(f"  {row['suite']:<10} {row['case']:<34} {row['pass']:<8} convops {row['convops_ms']:9.3f} ms"
                    f"  ref {row['reference_ms']:9.3f} ms  ratio {row['ratio']:5.2f}  err {row['max_rel_err']:.1e}"
                    + "".join(f"  {k} {v}" for k, v in row.items() if k.startswith("ratio_vs_") or k.endswith("peak_mb"))
                    + (" (approximate)" if case.approximate else ""))
    return rows


def markdown(rows, info) -> str:
    cpu = info["cpu"]
    lines = [f"CPU: {cpu.get('model')} (family {cpu.get('family')} model {cpu.get('model_id')}, {cpu.get('isa')}), "
             f"{info['threads']} threads, torch {info['torch']}, fp32, NCHW. Ratio = convops / reference time "
             f"(lower is better): median over {rows[0]['rounds'] if rows else 0} interleaved rounds of the "
             f"per-round ratio; times are medians.", "",
             "| suite | case | pass | convops ms | reference ms | ratio | max rel err | workspace MiB |"
             + (" convops GB/s |" if any("convops_gbps" in r for r in rows) else ""),
             "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|" if any("convops_gbps" in r for r in rows) else "")]
    approx = any(r.get("approximate") for r in rows)
    if approx:
        lines[0] += (" Approximate rows (≈ before the error): convops runs an approximation of the reference; "
                     "the error is the approximation's, and 'ratio vs convops' = its time / the exact convops op's.")
    # optional columns: ratios to further references, measured peak memory (--memory)
    extra = [k for k in dict.fromkeys(k for r in rows for k in r)
             if k.startswith("ratio_vs_") or k in ("peak_mb", "reference_peak_mb")]
    if extra:
        lines[-2] += "".join(f" {k.replace('_', ' ')} |" for k in extra)
        lines[-1] += "---:|" * len(extra)
    for r in rows:
        gbps = (f" {r['convops_gbps']:.1f} |" if "convops_gbps" in r else " |") \
            if any("convops_gbps" in x for x in rows) else ""
        err = ("≈ " if r.get("approximate") else "") + f"{r['max_rel_err']:.1e}"
        lines.append(f"| {r['suite']} | {r['case']} | {r['pass']} | {r['convops_ms']:.2f} | {r['reference_ms']:.2f} | "
                     f"{r['ratio']:.2f} | {err} | {r['workspace_peak_mb']:.1f} |" + gbps
                     + "".join(f" {r[k]} |" if k in r else " |" for k in extra))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m convops.bench", description=__doc__)
    parser.add_argument("--suite", action="append", choices=sorted(SUITES) + ["all", "compile"],
                        help="suite to run (repeatable; default: all). 'compile' (whole models, eager vs "
                             "torch.compile; minutes) is not part of 'all'")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--pass", dest="passes", action="append", choices=["fwd", "fwd+bwd"])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads before running")
    parser.add_argument("--memory", action="store_true",
                        help="also measure the peak allocated MiB of one call of each (torch profiler)")
    parser.add_argument("--json", help="write the rows and machine info to this path")
    parser.add_argument("--markdown", help="write the Markdown table to this path")
    args = parser.parse_args(argv)
    _ensure_malloc_env()
    if args.threads:
        torch.set_num_threads(args.threads)
    suites = args.suite or ["all"]
    names = sorted(SUITES) if "all" in suites else [s for s in suites if s != "compile"]
    info = machine_info()
    print(f"convops bench: {info['cpu']}, {info['threads']} threads, torch {info['torch']}")
    start = time.time()
    rows = run_suites(names, quick=args.quick, passes=tuple(args.passes or ("fwd", "fwd+bwd")), memory=args.memory)
    tables = [markdown(rows, info)] if rows else []
    compile_rows = []
    if "compile" in suites:  # whole models: its own runner and table (see compile_suite.py)
        from . import compile_suite
        compile_rows = compile_suite.run(quick=args.quick)
        tables.append(compile_suite.markdown(compile_rows, info))
    table = "\n\n".join(tables)
    print("\n" + table)
    print(f"\n({time.time() - start:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows, "compile_rows": compile_rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    bad = [r for r in rows + compile_rows if r["max_rel_err"] > 1e-3 and not r.get("approximate")]
    if bad:
        print(f"PARITY FAILURE in {len(bad)} rows", file=sys.stderr)
        return 1
    return 0
