"""Build convops: the CPU extension always; CUDA kernels when a GPU is visible or
CONVOPS_CUDA=1 (CONVOPS_CUDA=0 skips them). Pins nothing: builds against the installed torch."""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda(torch):
    flag = os.environ.get("CONVOPS_CUDA", "").strip()
    if flag == "0":
        return False
    if flag == "1":
        return True
    return torch.cuda.is_available()


def _prepare_cuda_env(torch):
    """nvcc needs CUDA_HOME, the cu13 headers shipped in the torch wheel's nvidia packages,
    and an arch list when no GPU is visible to derive one from."""
    from torch.utils import cpp_extension

    # cpp_extension guesses CUDA_HOME at import from the nvcc on PATH, which can be a symlink
    # outside the toolkit (/usr/local/bin/nvcc -> CUDA_HOME=/usr/local, no lib64 there).
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not cuda_home and os.path.exists("/usr/local/cuda/bin/nvcc"):
        cuda_home = "/usr/local/cuda"
    cuda_home = cuda_home or cpp_extension.CUDA_HOME
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
    include_dirs = []
    try:
        import nvidia  # namespace package of the CUDA wheels torch depends on

        for base in nvidia.__path__:
            include_dirs += sorted(glob.glob(os.path.join(base, "cu*", "include")))
            include_dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    except ImportError:
        pass
    include_dirs = [d for d in dict.fromkeys(include_dirs) if os.path.isdir(d)]
    if include_dirs:
        os.environ["CPATH"] = os.pathsep.join(
            include_dirs + [p for p in os.environ.get("CPATH", "").split(os.pathsep) if p])
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    return include_dirs


def _extensions():
    import torch
    from torch.utils import cpp_extension

    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -std comes from torch. -fopenmp: at::parallel_for is inlined from ATen's headers and is a
    # serial loop unless the extension itself is compiled with OpenMP (torch's backend).
    cxx_flags = ["-O3", "-fvisibility=hidden", "-fopenmp"]
    link_flags = ["-fopenmp"]
    use_cuda = _want_cuda(torch)
    if use_cuda:
        include_dirs = _prepare_cuda_env(torch)
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        return [cpp_extension.CUDAExtension(
            "convops._C", sources, include_dirs=include_dirs,
            extra_link_args=link_flags,
            extra_compile_args={"cxx": cxx_flags + ["-DCONVOPS_WITH_CUDA"],
                                "nvcc": ["-O3", "-DCONVOPS_WITH_CUDA",
                                         "--expt-relaxed-constexpr"]})]
    return [cpp_extension.CppExtension("convops._C", sources, extra_link_args=link_flags,
                                       extra_compile_args={"cxx": cxx_flags})]


def main():
    from torch.utils.cpp_extension import BuildExtension

    setup(
        name="convops",
        version="0.1.0",
        description="Convolution operators for PyTorch written from scratch in C++ and CUDA",
        packages=find_packages(include=["convops", "convops.*"]),
        ext_modules=_extensions(),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        python_requires=">=3.9",
        zip_safe=False,
    )


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
