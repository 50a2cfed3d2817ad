"""The column workspace is bounded (csrc/common/conv_gemm.h, csrc/cpu/conv2d.cpp): tiles split
images, output rows and, when one output row alone is too wide, row segments. These shapes
force the row-segment tiles on both CPU schedules (the per-thread bands when every thread has
an image, the shared tiles otherwise) and check parity and the measured scratch peak. float64:
the reductions here run over 10^5 positions, and tiling must be exact, not merely close."""
import pytest
import torch
import torch.nn.functional as F

from convops import functional as cF
from conftest import compare_with_reference, make

ops = torch.ops.convops
D64 = torch.float64
BUDGET = 32 << 20  # kColumnBudgetBytes


@pytest.mark.parametrize("batch,length", [
    (2, 5000),     # per-thread bands: 64*3 rows * 5000 cols * 8 B = 7.3 MiB per row > band size
    (1, 200000),   # one image, shared tiles: 293 MiB for the single output row > budget
])
def test_conv1d_long_signal_tiles_row_segments(batch, length):
    torch.manual_seed(0)
    x = make((batch, 64, length), D64, requires_grad=True)
    w = make((32, 64, 3), D64, requires_grad=True)
    b = make((32,), D64, requires_grad=True)
    ops._workspace_peak_bytes(True)
    compare_with_reference(lambda x, w, b: cF.conv1d(x, w, b, padding=1, dilation=1),
                           lambda x, w, b: F.conv1d(x, w, b, padding=1, dilation=1),
                           [x, w, b], D64)
    peak = ops._workspace_peak_bytes(True)
    one_row = 64 * 3 * length * 8
    assert 0 < peak < one_row, "the workspace must not hold a whole output row"
    assert peak <= BUDGET


@pytest.mark.parametrize("batch,length,stride,dilation", [(2, 3001, 2, 1), (1, 40001, 3, 2)])
def test_conv1d_row_segments_strided_dilated(batch, length, stride, dilation):
    torch.manual_seed(0)
    x = make((batch, 96, length), D64, requires_grad=True)
    w = make((16, 48, 5), D64, requires_grad=True)
    kw = dict(stride=stride, padding=3, dilation=dilation, groups=2)
    compare_with_reference(lambda x, w: cF.conv1d(x, w, **kw), lambda x, w: F.conv1d(x, w, **kw),
                           [x, w], torch.float64)


@pytest.mark.parametrize("batch,length", [(2, 4000), (1, 150000)])
def test_conv_transpose1d_long_signal_tiles_row_segments(batch, length):
    torch.manual_seed(0)
    x = make((batch, 64, length), D64, requires_grad=True)
    w = make((64, 48, 4), D64, requires_grad=True)
    b = make((48,), D64, requires_grad=True)
    kw = dict(stride=2, padding=1)
    ops._workspace_peak_bytes(True)
    compare_with_reference(lambda x, w, b: cF.conv_transpose1d(x, w, b, **kw),
                           lambda x, w, b: F.conv_transpose1d(x, w, b, **kw),
                           [x, w, b], D64)
    peak = ops._workspace_peak_bytes(True)
    one_row = 48 * 4 * (2 * length) * 8  # column rows x output positions of the only row
    assert 0 < peak < one_row and peak <= BUDGET
