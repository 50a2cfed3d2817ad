"""Shared fixtures and oracles. torch.nn.functional / torchvision are the references."""
import contextlib
import os

import pytest
import torch

import convops  # noqa: F401  (registers the ops)

torch.manual_seed(0)

# Output/gradient tolerances per dtype: float64 tight, float32 loose, 16-bit looser
# (our low-precision path accumulates in fp32, torch's oneDNN path may not).
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
HAS_CUDA_KERNELS = bool(convops.ops.build_info().get("cuda_archs"))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not HAS_CUDA_KERNELS:
        pytest.skip("convops was built without CUDA kernels")
    return request.param


def tolerance(dtype, scale=1.0):
    """Tolerance for an output whose reduction length makes rounding grow (scale ~ sqrt(K))."""
    t = TOLERANCES[dtype]
    return dict(rtol=t["rtol"] * scale, atol=t["atol"] * scale)


def assert_close(actual, expected, dtype=None, scale=1.0, **kw):
    dtype = dtype or expected.dtype
    tol = tolerance(dtype, scale)
    tol.update(kw)
    torch.testing.assert_close(actual, expected, **tol)


def make(shape, dtype=torch.float32, device="cpu", layout="contiguous", requires_grad=False):
    """A random tensor in the requested memory layout: 'contiguous', 'channels_last' or
    'strided' (a non-contiguous view with the same values)."""
    if layout == "strided":
        # cast before slicing: .to(dtype) of a view would return a fresh contiguous copy
        big = torch.randn(*shape[:-1], shape[-1] * 2, dtype=torch.float64, device=device).to(dtype)
        t = big[..., ::2]  # a view: stays non-contiguous
        assert not t.is_contiguous() or t.numel() <= 1
    else:
        t = torch.randn(*shape, dtype=torch.float64, device=device).to(dtype)
        if layout == "channels_last" and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


@contextlib.contextmanager
def num_threads(threads):
    """torch's intra-op thread count set to `threads` inside the block, restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def grads_of(out, inputs, grad_out):
    """Gradients of <out, grad_out> w.r.t. the inputs that require grad (None elsewhere)."""
    needed = [t for t in inputs if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(out, needed, grad_out, allow_unused=True))
    return [next(got) if (t is not None and t.requires_grad) else None for t in inputs]


def compare_compiled_with_eager(fn, compiled, inputs, wrt=(), **tol):
    """Runs fn eagerly and compiled on the same inputs; compares the outputs and the gradients
    of the inputs (and of the extra tensors wrt, e.g. parameters). Returns the compiled output."""
    wrt = list(inputs) + list(wrt)
    out_e = fn(*inputs)
    go = torch.randn_like(out_e)
    g_e = grads_of(out_e, wrt, go)
    out_c = compiled(*inputs)
    g_c = grads_of(out_c, wrt, go)
    assert_close(out_c, out_e, **tol)
    for a, b in zip(g_c, g_e):
        assert_close(a, b, **tol)
    return out_c


def compare_with_reference(ours, reference, inputs, dtype, scale=1.0):
    """Runs both callables on the same inputs; compares outputs and every input gradient.
    Low-precision references are computed in float64 (a tighter oracle than torch's bf16 path)."""
    out = ours(*inputs)
    low = dtype in (torch.bfloat16, torch.float16)
    ref_inputs = [None if t is None else t.detach().double().requires_grad_(t.requires_grad)
                  for t in inputs] if low else [None if t is None else t.detach().requires_grad_(t.requires_grad)
                                                for t in inputs]
    ref = reference(*ref_inputs)
    assert out.shape == ref.shape
    assert out.dtype == dtype
    assert_close(out, ref.to(dtype), dtype, scale)
    if not any(t is not None and t.requires_grad for t in inputs):
        return out
    grad_out = torch.randn(out.shape, dtype=torch.float64, device=out.device)
    g_ours = grads_of(out, inputs, grad_out.to(dtype))
    g_ref = grads_of(ref, ref_inputs, grad_out.to(ref.dtype) if not low else grad_out.to(dtype).double())
    for a, b in zip(g_ours, g_ref):
        if a is None and b is None:
            continue
        assert a is not None and b is not None
        assert a.shape == b.shape
        assert_close(a, b.to(dtype), dtype, scale)
    return out
