# %% [markdown]
# # 02 · The operator zoo
#
# The convolution variants convops implements, each checked against its torch/torchvision
# twin in the notebook and compared on cost (parameters and FLOPs as `FlopCounterMode` counts
# them): grouped, depthwise-separable, spatially separable (low-rank SVD), dilated, transposed
# and deformable convolutions.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from matplotlib import cbook
from torch.utils.flop_counter import FlopCounterMode

import convops
import convops.functional as cF
from convops import decompose

torch.manual_seed(0)
torch.set_num_threads(1)


def flops(fn, *args, **kwargs):
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def max_rel_err(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


x = torch.randn(2, 64, 28, 28)

# %% [markdown]
# ## Grouped convolution
#
# `groups=g` splits the channels into g independent convolutions: parameters and FLOPs divide
# by g. `groups = channels` is the depthwise convolution (one filter per channel).

# %%
rows = []
for g in (1, 2, 4, 8, 16, 64):
    w = torch.randn(64, 64 // g, 3, 3)
    ours = cF.conv2d(x, w, padding=1, groups=g)
    err = max_rel_err(ours, F.conv2d(x, w, padding=1, groups=g))
    rows.append((g, w.numel(), flops(cF.conv2d, x, w, padding=1, groups=g), err))
    print(f"groups {g:3d}: params {w.numel():6d}  MFLOPs {rows[-1][2] / 1e6:7.2f}  max rel err vs F.conv2d {err:.1e}")
depthwise = cF.depthwise_conv2d(x, torch.randn(64, 1, 3, 3), padding=1)
print("depthwise_conv2d shape", tuple(depthwise.shape))

fig, ax = plt.subplots(figsize=(6, 3))
ax.bar([str(r[0]) for r in rows], [r[2] / 1e6 for r in rows])
ax.set(xlabel="groups", ylabel="MFLOPs", yscale="log", title="3×3 conv 64→64 on 28×28, batch 2")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Depthwise-separable convolution
#
# MobileNet's factorisation: a depthwise k×k conv (spatial filtering per channel) followed by
# a 1×1 conv (mixing channels). Cost relative to a dense k×k conv: 1/C_out + 1/k². convops has
# a fused op for the pair.

# %%
dw, pw = torch.randn(64, 1, 3, 3), torch.randn(128, 64, 1, 1)
ours = cF.depthwise_separable_conv2d(x, dw, pw, padding=1)
ref = F.conv2d(F.conv2d(x, dw, padding=1, groups=64), pw)
dense_w = torch.randn(128, 64, 3, 3)
sep_flops = flops(cF.depthwise_separable_conv2d, x, dw, pw, padding=1)
dense_flops = flops(cF.conv2d, x, dense_w, padding=1)
print(f"max rel err vs torch {max_rel_err(ours, ref):.1e}")
print(f"FLOPs: separable {sep_flops / 1e6:.1f} M vs dense {dense_flops / 1e6:.1f} M -> "
      f"{sep_flops / dense_flops:.3f} (theory 1/128 + 1/9 = {1 / 128 + 1 / 9:.3f})")

# %% [markdown]
# ## Spatially separable convolution (low-rank SVD)
#
# A k×k kernel that is an outer product (rank 1) is a k×1 conv followed by a 1×k conv: the
# Sobel kernel is $[1, 2, 1]^T [-1, 0, 1]$. For a whole layer, `convops.decompose` factors the
# weight through an SVD (Jaderberg et al.'s / Tai et al.'s "scheme 2"): a vertical conv to
# `rank` intermediate channels, then a horizontal conv. Full rank is exact; lower ranks trade
# accuracy for FLOPs.

# %%
sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])[None, None]
wv, wh = decompose.spatially_separable(sobel, rank=1)
print("Sobel = vertical", wv.flatten().numpy().round(3), "x horizontal", wh.flatten().numpy().round(3),
      f"| reconstruction error {decompose.reconstruction_error(sobel, 1):.1e}")

with cbook.get_sample_data("grace_hopper.jpg") as f:
    gray = torch.tensor(plt.imread(f), dtype=torch.float32).mean(-1)[None, None] / 255.0
print("on the photo, max rel err vs the dense Sobel conv:",
      f"{max_rel_err(cF.spatially_separable_conv2d(gray, wv, wh, padding=1), F.conv2d(gray, sobel, padding=1)):.1e}")

# a trained-like layer: a smooth 5x5 kernel bank with a decaying spectrum
torch.manual_seed(0)
w = F.avg_pool2d(torch.randn(64, 64, 7, 7), 3, 1)          # (64, 64, 5, 5), spatially smooth
x5 = torch.randn(1, 64, 32, 32)
dense_out = F.conv2d(x5, w, padding=2)
dense_flops = flops(cF.conv2d, x5, w, padding=2)
ranks = [1, 2, 4, 8, 16, 32, 64, 128, 192, decompose.full_rank(w)]
errors, output_errors, cost = [], [], []
for r in ranks:
    wv, wh = decompose.spatially_separable(w, rank=r)
    out = cF.spatially_separable_conv2d(x5, wv, wh, padding=2)
    errors.append(decompose.reconstruction_error(w, r))
    output_errors.append(max_rel_err(out, dense_out))
    cost.append(flops(cF.spatially_separable_conv2d, x5, wv, wh, padding=2) / dense_flops)
print(f"full rank {ranks[-1]}: output max rel err {output_errors[-1]:.1e} (exact up to rounding)")

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.semilogy(ranks, [max(e, 1e-8) for e in errors], "o-", label="weight reconstruction error")
ax.semilogy(ranks, [max(e, 1e-8) for e in output_errors], "x--", label="output max rel error")
ax.set(xlabel="rank", ylabel="relative error", title="spatially separable 5×5, 64→64")
ax2 = ax.twinx()
ax2.plot(ranks, cost, "s:", color="C2", label="FLOPs / dense FLOPs")
ax2.axhline(1.0, color="C2", lw=0.5)
ax2.set_ylabel("FLOPs relative to dense", color="C2")
fig.legend(loc="upper center", bbox_to_anchor=(0.45, 0.88), fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Dilated convolution
#
# Dilation d spaces the kernel taps d pixels apart: a k×k kernel covers d(k−1)+1 pixels with
# the same k² weights, so stacked dilated convs grow the receptive field exponentially.

# %%
for d in (1, 2, 4):
    w3 = torch.randn(8, 64, 3, 3)
    ours = cF.conv2d(x, w3, padding=d, dilation=d)
    err = max_rel_err(ours, F.conv2d(x, w3, padding=d, dilation=d))
    field = convops.utils.receptive_field([dict(kernel=3, dilation=d)])[0].rf[0]
    print(f"dilation {d}: effective kernel {d * 2 + 1}, receptive field {field}, max rel err {err:.1e}")
stack = convops.utils.receptive_field([dict(kernel=3, dilation=2 ** i) for i in range(5)])
print("stack of 3x3 with dilations 1, 2, 4, 8, 16: receptive fields", [f.rf[0] for f in stack])

fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, d in zip(axes, (1, 2, 4)):
    footprint = np.zeros((9, 9))
    for i in range(3):
        for j in range(3):
            footprint[4 + (i - 1) * d, 4 + (j - 1) * d] = 1
    ax.imshow(footprint, cmap="Blues", vmin=0, vmax=1.3)
    ax.set_title(f"dilation {d}: covers {2 * d + 1}×{2 * d + 1}")
    ax.set_xticks([]), ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Transposed convolution
#
# The adjoint of a strided conv: each input pixel scatters a copy of the kernel into the
# output, n_out = (n − 1)s − 2p + d(k − 1) + output_padding + 1. A 4×4 stride-2 kernel
# upsamples by two (the DCGAN/U-Net upsampling layer).

# %%
small = F.avg_pool2d(gray, 8)                                # (1, 1, 75, 64)
bilinear_kernel = torch.tensor([0.25, 0.75, 0.75, 0.25])
up_w = (bilinear_kernel[:, None] * bilinear_kernel[None, :])[None, None]
up = cF.conv_transpose2d(small, up_w, stride=2, padding=1)
print(f"{tuple(small.shape)} -> {tuple(up.shape)}, max rel err vs F.conv_transpose2d "
      f"{max_rel_err(up, F.conv_transpose2d(small, up_w, stride=2, padding=1)):.1e}")
wt = torch.randn(64, 32, 3, 3)
print("3x3 s2 p1 op1 64->32:", tuple(cF.conv_transpose2d(x, wt, stride=2, padding=1, output_padding=1).shape),
      f"max rel err {max_rel_err(cF.conv_transpose2d(x, wt, stride=2, padding=1, output_padding=1), F.conv_transpose2d(x, wt, stride=2, padding=1, output_padding=1)):.1e}")
fig, axes = plt.subplots(1, 2, figsize=(7, 4))
axes[0].imshow(small[0, 0], cmap="gray")
axes[0].set_title(f"input {tuple(small.shape[2:])}")
axes[1].imshow(up[0, 0], cmap="gray")
axes[1].set_title(f"transposed conv, stride 2: {tuple(up.shape[2:])}")
for ax in axes:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Deformable convolution
#
# Deformable convolution (v1; v2 adds a per-tap mask) learns an offset for each kernel tap at
# each output position and samples the input there by bilinear interpolation. Below, a smooth
# random offset field (what a trained offset branch produces looks similar: smooth, a few
# pixels) deforms the 3×3 grid; the plot shows where the taps of a few output positions land on
# the photograph. convops equals `torchvision.ops.deform_conv2d`, with and without a mask.

# %%
img = F.avg_pool2d(gray, 4)                                   # (1, 1, 150, 128)
k, dil = 3, 6
out_h, out_w = img.shape[2] - dil * (k - 1), img.shape[3] - dil * (k - 1)
torch.manual_seed(3)
field = F.interpolate(torch.randn(1, 2 * k * k, 4, 4), size=(out_h, out_w), mode="bicubic", align_corners=False)
offset = 4.0 * field                                          # a few pixels, smooth over the image
weight = torch.randn(4, 1, k, k)
mask = torch.sigmoid(torch.randn(1, k * k, out_h, out_w))
for m in (None, mask):
    ours = cF.deform_conv2d(img, offset, weight, dilation=(dil, dil), mask=m)
    ref = torchvision.ops.deform_conv2d(img, offset, weight, dilation=(dil, dil), mask=m)
    print(f"deform_conv2d {'v2 (mask)' if m is not None else 'v1'}: max rel err vs torchvision {max_rel_err(ours, ref):.1e}")
print(f"FLOPs (GEMM + bilinear sampling, see convops.utils.flops): "
      f"{flops(cF.deform_conv2d, img, offset, weight, dilation=(dil, dil)) / 1e6:.2f} M vs dense "
      f"{flops(cF.conv2d, img, weight, dilation=dil) / 1e6:.2f} M")

fig, ax = plt.subplots(figsize=(6, 7))
ax.imshow(img[0, 0], cmap="gray")
for n, (oy, ox) in enumerate([(30, 40), (60, 60), (95, 30), (110, 90), (40, 95)]):
    taps = [(oy + dil * i, ox + dil * j) for i in range(k) for j in range(k)]   # the regular grid
    dy = offset[0, 0::2, oy, ox].numpy()                      # offsets are (dy, dx) per tap
    dx = offset[0, 1::2, oy, ox].numpy()
    ty, tx = np.array([t[0] for t in taps]), np.array([t[1] for t in taps])
    ax.scatter(tx, ty, s=18, facecolors="none", edgecolors="yellow", label="regular grid" if n == 0 else None)
    ax.scatter(tx + dx, ty + dy, s=18, c="red", label="deformed taps" if n == 0 else None)
    for a, b, c, d in zip(tx, ty, tx + dx, ty + dy):
        ax.plot([a, c], [b, d], color="red", lw=0.6)
ax.set_title("deformable 3×3 (dilation 6): where the taps sample")
ax.legend(loc="lower right")
ax.axis("off")
plt.tight_layout()
plt.show()
