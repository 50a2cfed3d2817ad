"""torch.compile / torch.export: every convops op is one opaque node under Dynamo (fullgraph, no
graph break), AOTAutograd traces it with the fake kernels and the registered backward, shapes
can be dynamic, the inductor modes work, and an exported program runs and equals eager."""
import io

import pytest
import torch
import torch.nn.functional as F
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.testing import CompileCounterWithBackend

import convops
import convops.functional as cF

from conftest import assert_close, compare_compiled_with_eager, requires_cuda

ops = torch.ops.convops
CONV2D, CONVT2D, WGRAD = "convops::conv2d", "convops::conv_transpose2d", "convops::conv2d_weight_grad"
WBGRAD = "convops::conv2d_weight_bias_grad"  # conv2d's backward with a bias: one op for both
# what must never appear: torch's own convolutions (the op path is ours)
TORCH_CONVS = {torch.ops.aten.convolution.default, torch.ops.aten._convolution.default,
               torch.ops.aten.convolution_backward.default, F.conv1d, F.conv2d, F.conv_transpose1d,
               F.conv_transpose2d, torch.conv2d, torch.conv1d, torch.conv_transpose2d}


def _randn(*shape):
    return torch.randn(*shape, requires_grad=True)


# name: (fn, input factory, convops ops in the forward graph, convops ops in the backward graph).
# The backward formulas are convops ops too (conv2d <-> conv_transpose2d <-> conv2d_weight_grad).
CASES = {
    "conv2d": (lambda x, w, b: cF.conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
               lambda: [_randn(2, 4, 9, 8), _randn(6, 2, 3, 3), _randn(6)],
               {CONV2D: 1}, {CONVT2D: 1, WBGRAD: 1}),
    "conv2d_same": (lambda x, w: cF.conv2d(x, w, padding="same"),
                    lambda: [_randn(2, 3, 7, 6), _randn(4, 3, 4, 2)],
                    {CONV2D: 1}, {CONVT2D: 1, WGRAD: 1}),
    "conv1d": (lambda x, w, b: cF.conv1d(x, w, b, stride=2, padding=1),
               lambda: [_randn(2, 3, 11), _randn(5, 3, 3), _randn(5)],
               {CONV2D: 1}, {CONVT2D: 1, WBGRAD: 1}),
    "conv_transpose2d": (lambda x, w, b: cF.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1,
                                                              groups=2, dilation=1),
                         lambda: [_randn(2, 4, 5, 6), _randn(4, 3, 3, 3), _randn(6)],
                         {CONVT2D: 1}, {CONV2D: 1, WGRAD: 1}),
    "conv_transpose1d": (lambda x, w: cF.conv_transpose1d(x, w, stride=3, dilation=2),
                         lambda: [_randn(2, 3, 7), _randn(3, 2, 3)],
                         {CONVT2D: 1}, {CONV2D: 1, WGRAD: 1}),
    "conv2d_weight_grad": (lambda g, x: ops.conv2d_weight_grad(g, x, [3, 3], [1, 1], [1, 1], [1, 1], 1),
                           lambda: [_randn(2, 5, 6, 6), _randn(2, 3, 6, 6)],
                           {WGRAD: 1}, {CONV2D: 1, CONVT2D: 1}),
    "raw_conv2d_op": (lambda x, w: ops.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1),
                      lambda: [_randn(1, 2, 5, 5), _randn(3, 2, 2, 2)],
                      {CONV2D: 1}, {CONVT2D: 1, WGRAD: 1}),
}

# the other op families: their op is one forward node; the backward is made of convops ops only
# (which ones is the family's choice, e.g. a fused op recomputes its intermediate)
CASES.update({
    "depthwise_conv2d": (lambda x, w, b: cF.depthwise_conv2d(x, w, b, stride=2, padding=1),
                         lambda: [_randn(2, 4, 9, 8), _randn(8, 1, 3, 3), _randn(8)],
                         {"convops::depthwise_conv2d": 1}, None),
    "depthwise_separable_conv2d": (lambda x, dw, pw: cF.depthwise_separable_conv2d(x, dw, pw, padding=1),
                                   lambda: [_randn(2, 4, 9, 8), _randn(4, 1, 3, 3), _randn(6, 4, 1, 1)],
                                   {"convops::depthwise_separable_conv2d": 1}, None),
    "spatially_separable_conv2d": (lambda x, wv, wh: cF.spatially_separable_conv2d(x, wv, wh, padding=1),
                                   lambda: [_randn(2, 4, 9, 8), _randn(5, 4, 3, 1), _randn(6, 5, 1, 3)],
                                   {"convops::spatially_separable_conv2d": 1}, None),
    "deform_conv2d": (lambda x, off, w, m: cF.deform_conv2d(x, off, w, padding=(1, 1), mask=m),
                      lambda: [_randn(2, 4, 7, 6), _randn(2, 18, 7, 6), _randn(6, 4, 3, 3),
                               torch.rand(2, 9, 7, 6, requires_grad=True)],
                      {"convops::deform_conv2d": 1}, None),
})
CASES = {name: case for name, case in CASES.items()
         if all(hasattr(ops, op.split("::")[1]) for op in case[2])}


class SmallNet(torch.nn.Module):
    """Every convops module kind, a padding mode that is not zeros and output_size=."""

    def __init__(self):
        super().__init__()
        self.c1 = convops.nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.c2 = convops.nn.Conv2d(8, 8, 3, stride=2, groups=4)
        self.up = convops.nn.ConvTranspose2d(8, 4, 3, stride=2)
        self.c3 = convops.nn.Conv1d(4, 2, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.c2(torch.relu(self.c1(x))))
        y = self.up(y, output_size=[x.shape[2], x.shape[3]])
        return self.c3(y.flatten(2))


def _node_counts(gm: torch.fx.GraphModule) -> dict:
    """call_function targets -> count, through the subgraphs of higher-order ops too, except
    the backward bodies Dynamo traces for an autograd.Function (they run only in backward)."""
    counts = {}
    for name, mod in gm.named_modules():
        if isinstance(mod, torch.fx.GraphModule) and not name.startswith("bwd_body"):
            for node in mod.graph.nodes:
                if node.op == "call_function":
                    counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def _op_name(target) -> str:
    """'convops::conv2d' for an OpOverload (AOT graphs) and an OpOverloadPacket (Dynamo graphs)."""
    if isinstance(target, torch._ops.OpOverload):
        return target._overloadpacket._qualified_op_name
    return getattr(target, "_qualified_op_name", "")


def _convops_counts(gm) -> dict:
    return {_op_name(t): n for t, n in _node_counts(gm).items() if _op_name(t).startswith("convops::")}


def _assert_no_torch_conv(gm):
    assert not (set(_node_counts(gm)) & TORCH_CONVS), _node_counts(gm)


class RecordingBackend:
    """A Dynamo backend that keeps every FX graph Dynamo hands it and runs it as is."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward


def _aot_graphs(fn, inputs):
    """Forward and backward graphs after AOTAutograd (fake kernels + registered backward)."""
    graphs = {"fw": [], "bw": []}

    def keep(kind):
        def compiler(gm, example_inputs):
            graphs[kind].append(gm)
            return make_boxed_func(gm.forward)
        return compiler

    backend = aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw"))
    return torch.compile(fn, backend=backend, fullgraph=True), graphs


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch.manual_seed(0)
    yield
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- Dynamo

@pytest.mark.parametrize("name", sorted(CASES))
def test_dynamo_one_graph_no_break(name):
    fn, make_inputs, fw_ops, _ = CASES[name]
    inputs = make_inputs()
    explained = torch._dynamo.explain(fn)(*inputs)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    torch._dynamo.reset()
    backend = RecordingBackend()
    out = torch.compile(fn, backend=backend, fullgraph=True)(*inputs)
    assert_close(out, fn(*inputs))
    assert len(backend.graphs) == 1
    # the op is in the graph as itself (an opaque call), not inlined into torch ops
    assert _convops_counts(backend.graphs[0]) == fw_ops
    _assert_no_torch_conv(backend.graphs[0])


def test_dynamo_module_one_graph():
    net = SmallNet()
    x = torch.randn(2, 3, 10, 9)
    explained = torch._dynamo.explain(net)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    torch._dynamo.reset()
    backend = RecordingBackend()
    torch.compile(net, backend=backend, fullgraph=True)(x)
    assert _convops_counts(backend.graphs[0]) == {CONV2D: 3, CONVT2D: 1}


# ----------------------------------------------------------------------------- AOTAutograd

@pytest.mark.parametrize("name", sorted(CASES))
def test_aot_autograd_forward_and_backward_graphs(name):
    fn, make_inputs, fw_ops, bw_ops = CASES[name]
    inputs = make_inputs()
    compiled, graphs = _aot_graphs(fn, inputs)
    compare_compiled_with_eager(fn, compiled, inputs)
    assert len(graphs["fw"]) == 1 and len(graphs["bw"]) == 1
    assert _convops_counts(graphs["fw"][0]) == fw_ops
    if bw_ops is None:
        assert sum(_convops_counts(graphs["bw"][0]).values()) > 0
    else:
        assert _convops_counts(graphs["bw"][0]) == bw_ops
    _assert_no_torch_conv(graphs["fw"][0])
    _assert_no_torch_conv(graphs["bw"][0])


# ----------------------------------------------------------------------------- inductor

def test_inductor_fullgraph_module_matches_eager():
    net = SmallNet()
    x = torch.randn(2, 3, 10, 9, requires_grad=True)
    compiled = torch.compile(net, fullgraph=True)
    compare_compiled_with_eager(net, compiled, [x], net.parameters())


def test_dynamic_shapes_compile_once():
    net = SmallNet()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(net, backend=counter, fullgraph=True, dynamic=True)
    for shape in [(2, 3, 10, 9), (5, 3, 12, 11), (4, 3, 9, 14)]:
        x = torch.randn(*shape, requires_grad=True)
        compare_compiled_with_eager(net, compiled, [x], net.parameters())
    # symbolic batch and spatial sizes: no recompile (sizes 0 and 1 would be specialised, as usual)
    assert counter.frame_count == 1


def test_automatic_dynamic_recompiles_once():
    # default dynamic=None: static first, one recompile with a symbolic batch, then no more
    fn = CASES["conv2d"][0]
    w, b = _randn(6, 2, 3, 3), _randn(6)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    for batch in (2, 3, 4, 7):
        x = torch.randn(batch, 4, 9, 8)
        assert_close(compiled(x, w, b), fn(x, w, b))
    assert counter.frame_count == 2


def test_inductor_max_autotune_no_cudagraphs():
    net = torch.nn.Sequential(convops.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              convops.nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    compiled = torch.compile(net, mode="max-autotune-no-cudagraphs", fullgraph=True)
    compare_compiled_with_eager(net, compiled, [x], net.parameters())


@requires_cuda
def test_cuda_reduce_overhead_cudagraphs():
    net = SmallNet().cuda()
    compiled = torch.compile(net, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, record, replay
        x = torch.randn(2, 3, 10, 9, device="cuda")
        assert_close(compiled(x).clone(), net(x))
    x = torch.randn(2, 3, 10, 9, device="cuda", requires_grad=True)
    compare_compiled_with_eager(net, compiled, [x], net.parameters())


# ----------------------------------------------------------------------------- torch.export

def test_export_runs_and_equals_eager():
    net = SmallNet().eval()
    x = torch.randn(2, 3, 10, 9)
    program = torch.export.export(net, (x,))
    assert _convops_counts(program.graph_module) == {CONV2D: 3, CONVT2D: 1}
    _assert_no_torch_conv(program.graph_module)
    assert_close(program.module()(x), net(x))
    # a decomposition pass keeps the custom ops opaque
    decomposed = program.run_decompositions()
    assert _convops_counts(decomposed.graph_module) == {CONV2D: 3, CONVT2D: 1}
    assert_close(decomposed.module()(x), net(x))


def test_export_dynamic_batch_and_save_load():
    net = torch.nn.Sequential(convops.nn.Conv2d(3, 6, 3, stride=2, padding=1), torch.nn.ReLU(),
                              convops.nn.ConvTranspose2d(6, 3, 2, stride=2)).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(net, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    for n in (1, 5):
        x = torch.randn(n, 3, 8, 8)
        assert_close(loaded.module()(x), net(x))
        assert_close(program.module()(x), net(x))


def test_export_converted_model_trains():
    # export keeps autograd (training IR): the exported module backpropagates like eager
    torch_net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                    torch.nn.Conv2d(4, 2, 3, dilation=2))
    net = convops.convert(torch_net)
    x = torch.randn(3, 3, 12, 12)
    program = torch.export.export(net, (x,))
    exported = program.module()
    y_e, y_x = net(x), exported(x)
    assert_close(y_x, y_e)
    g_e = torch.autograd.grad(y_e.square().sum(), list(net.parameters()))
    g_x = torch.autograd.grad(y_x.square().sum(), list(exported.parameters()))
    for a, b in zip(g_x, g_e):
        assert_close(a, b)
