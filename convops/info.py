"""`python -m convops.info`: what this convops build holds and what it runs on."""
from __future__ import annotations

import os
import platform

import torch

import convops


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def collect() -> dict:
    build = convops.ops.build_info()
    devices = [f"cpu ({_cpu_model()}, {os.cpu_count()} logical cores)"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    ops = sorted(name for name in dir(torch.ops.convops) if not name.startswith("__")
                 and isinstance(getattr(torch.ops.convops, name), torch._ops.OpOverloadPacket))
    return {
        "convops": convops.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu kernels compiled for": build.get("cpu_kernel_isas", ""),
        "cpu kernel selected (CPUID)": build.get("cpu_selected_isa", ""),
        "cuda kernels": f"yes (sm {build['cuda_archs']})" if build.get("cuda_archs") else "no (CPU-only build)",
        "torch CUDA runtime": torch.version.cuda or "none",
        "devices": ", ".join(devices),
        "threads": torch.get_num_threads(),
        "ops": ", ".join(f"convops::{name}" for name in ops),
    }


def main() -> None:
    for key, value in collect().items():
        print(f"{key:>28}: {value}")


if __name__ == "__main__":
    main()
