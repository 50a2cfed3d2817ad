# %% [markdown]
# # 01 · Convolution basics
#
# What a "convolution layer" computes, checked number by number: cross-correlation versus
# convolution, padding and stride and the output-size formula, the classic 5×5 example, Sobel
# edges on a real photograph, and learning an edge detector from input/output pairs by gradient
# descent. Every convolution below runs on `convops` (kernels written from scratch in C++);
# `torch.nn.functional` is only used as the oracle it must equal.

# %%
import io
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Image, display
from matplotlib import cbook

import convops
import convops.functional as cF

torch.manual_seed(0)
print("convops", convops.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## Cross-correlation versus convolution
#
# A deep-learning "convolution" slides the kernel over the input **without flipping it**:
#
# $$y[i, j] = \sum_{u, v} x[i + u,\ j + v]\, k[u, v] \qquad \text{(cross-correlation)}$$
#
# The convolution of signal processing flips the kernel first,
# $y[i, j] = \sum_{u,v} x[i - u, j - v]\,k[u, v]$, i.e. it is the cross-correlation with
# `k[::-1, ::-1]`. For a learned kernel the difference does not matter (the network learns the
# flipped kernel), but it matters when a known filter is applied. A direct loop makes the
# definition concrete:

# %%
def corr2d(x, k):
    """Textbook cross-correlation, no padding, stride 1 (slow loops, for illustration)."""
    kh, kw = k.shape
    out = torch.zeros(x.shape[0] - kh + 1, x.shape[1] - kw + 1, dtype=x.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = (x[i:i + kh, j:j + kw] * k).sum()
    return out


x = torch.arange(16.0).reshape(4, 4)
k = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
ours = cF.conv2d(x[None, None], k[None, None])[0, 0]
print("loop cross-correlation:\n", corr2d(x, k))
print("convops.functional.conv2d:\n", ours)
print("equal to the loop:", torch.equal(ours, corr2d(x, k)),
      "| equal to F.conv2d:", torch.equal(ours, F.conv2d(x[None, None], k[None, None])[0, 0]))

# %% [markdown]
# In 1-D, NumPy has both: `np.correlate` (no flip) and `np.convolve` (flip). conv1d matches the
# first, and the second once the kernel is reversed:

# %%
signal = np.array([0.0, 1, 2, 3, 2, 1, 0, 0])
kernel = np.array([1.0, 0, -1])
conv1d = cF.conv1d(torch.tensor(signal)[None, None], torch.tensor(kernel)[None, None])[0, 0].numpy()
flipped = cF.conv1d(torch.tensor(signal)[None, None], torch.tensor(kernel[::-1].copy())[None, None])[0, 0].numpy()
print("convops conv1d        ", conv1d, "  np.correlate", np.correlate(signal, kernel, "valid"))
print("conv1d, flipped kernel", flipped, "  np.convolve ", np.convolve(signal, kernel, "valid"))

# %% [markdown]
# ## Padding, stride and the output size
#
# With input size $n$, kernel $k$, padding $p$ on each side and stride $s$, the kernel fits
# $\lfloor (n - k + 2p) / s \rfloor + 1$ times:
#
# $$n_\text{out} = \left\lfloor \frac{n - k + 2p + s}{s} \right\rfloor .$$
#
# (With dilation $d$ replace $k$ by the effective kernel $d(k-1)+1$.) The table checks the
# formula against the shape convops returns:

# %%
def out_size(n, k, p, s, d=1):
    return math.floor((n - d * (k - 1) - 1 + 2 * p + s) / s)


print(f"{'n':>3} {'k':>3} {'p':>3} {'s':>3} {'d':>3} | formula  convops")
for n, k, p, s, d in [(5, 3, 0, 1, 1), (5, 3, 1, 1, 1), (5, 3, 1, 2, 1), (7, 3, 0, 2, 1), (224, 11, 2, 4, 1),
                      (56, 3, 1, 2, 1), (6, 4, 1, 3, 1), (32, 3, 2, 1, 2)]:
    y = cF.conv2d(torch.zeros(1, 1, n, n), torch.zeros(1, 1, k, k), stride=s, padding=p, dilation=d)
    print(f"{n:>3} {k:>3} {p:>3} {s:>3} {d:>3} | {out_size(n, k, p, s, d):>7}  {y.shape[-1]:>7}")
    assert y.shape[-1] == out_size(n, k, p, s, d)

# %% [markdown]
# ## The 5×5 textbook example
#
# The classic illustration: a 5×5 binary image, a 3×3 "X" kernel, a 3×3 feature map. Each output
# is the number of positions where image and kernel are both 1 inside the window.

# %%
image = torch.tensor([[1, 1, 1, 0, 0],
                      [0, 1, 1, 1, 0],
                      [0, 0, 1, 1, 1],
                      [0, 0, 1, 1, 0],
                      [0, 1, 1, 0, 0]], dtype=torch.float32)
x_kernel = torch.tensor([[1, 0, 1],
                         [0, 1, 0],
                         [1, 0, 1]], dtype=torch.float32)
variants = {
    "no padding, stride 1": dict(),
    "padding 1 ('same')": dict(padding=1),
    "padding 1, stride 2": dict(padding=1, stride=2),
}
feature_maps = {}
for title, kw in variants.items():
    y = cF.conv2d(image[None, None], x_kernel[None, None], **kw)[0, 0]
    assert torch.equal(y, F.conv2d(image[None, None], x_kernel[None, None], **kw)[0, 0])
    feature_maps[title] = y
    print(title, tuple(y.shape), "\n", y.int().numpy())


def show_grid(ax, values, title, cmap="Blues"):
    vmax = max(1, float(values.max()))
    ax.imshow(values, cmap=cmap, vmin=0, vmax=1.25 * vmax)
    for (i, j), v in np.ndenumerate(values.numpy()):
        ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=11,
                color="white" if v > 0.6 * vmax else "black")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])


fig, axes = plt.subplots(1, 2 + len(feature_maps), figsize=(14, 3.2))
show_grid(axes[0], image, "input 5×5", "Greys")
show_grid(axes[1], x_kernel, "kernel 3×3", "Oranges")
for ax, (title, y) in zip(axes[2:], feature_maps.items()):
    show_grid(ax, y, f"{title}\n→ {tuple(y.shape)}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Sobel edges on a real photograph
#
# The Sobel kernels estimate the horizontal and vertical derivatives; their magnitude
# highlights edges. Matplotlib ships a photograph of Grace Hopper, so nothing is downloaded.
# Both kernels go into one weight of shape (2, 1, 3, 3): one conv call, two output channels.

# %%
with cbook.get_sample_data("grace_hopper.jpg") as f:
    photo = plt.imread(f)
gray = torch.tensor(photo, dtype=torch.float32).mean(-1) / 255.0   # (H, W) in [0, 1]
sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
sobel = torch.stack([sobel_x, sobel_x.T])[:, None]               # (2, 1, 3, 3): d/dx, d/dy
grads = cF.conv2d(gray[None, None], sobel, padding=1)[0]          # (2, H, W)
magnitude = grads.pow(2).sum(0).sqrt()
print("image", tuple(gray.shape), "| max |convops - F.conv2d| =",
      (grads - F.conv2d(gray[None, None], sobel, padding=1)[0]).abs().max().item())


def half_resolution(img, signed):
    """2×2 max-pooling (by magnitude, sign kept) so thin edges survive the smaller picture."""
    if not signed:
        return F.max_pool2d(img[None], 2)[0]
    _, where = F.max_pool2d(img.abs()[None], 2, return_indices=True)
    return img.flatten()[where.flatten()].reshape(where.shape[1:])


fig, axes = plt.subplots(1, 4, figsize=(13, 4))
for ax, (img, title) in zip(axes, [(gray, "grayscale"), (grads[0], "Sobel x (vertical edges)"),
                                   (grads[1], "Sobel y (horizontal edges)"), (magnitude, "gradient magnitude")]):
    signed = title.startswith("Sobel")
    shown = half_resolution(img, signed)
    limit = float(shown.abs().max())
    ax.imshow(shown, cmap="RdBu" if signed else "gray", vmin=-limit if signed else None,
              vmax=limit if signed else None)
    ax.set_title(title)
    ax.axis("off")
plt.tight_layout()
# photographs compress badly as PNG: this one figure goes into the notebook as a JPEG
buffer = io.BytesIO()
fig.savefig(buffer, format="jpeg", dpi=80, bbox_inches="tight", pil_kwargs={"quality": 85})
plt.close(fig)
display(Image(buffer.getvalue()))

# %% [markdown]
# ## Learning a kernel from data
#
# Given only an input and the output of an unknown kernel, gradient descent on the squared
# error recovers the kernel. The classic example: an image that is 1 on the left and right and
# 0 in the middle, and the output of the edge detector $[1, -1]$, which is $+1$ at the
# 1→0 edge and $-1$ at the 0→1 edge. We start from a random 1×2 kernel.

# %%
X = torch.ones(6, 8)
X[:, 2:6] = 0
Y = cF.conv2d(X[None, None], torch.tensor([[[[1.0, -1.0]]]]))   # the target edge map, (1, 1, 6, 7)
print(X.int().numpy(), "\n\nedges to learn:\n", Y[0, 0].int().numpy())

torch.manual_seed(0)
layer = convops.nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)
losses = []
for step in range(15):                 # plain gradient descent, learning rate 0.03
    loss = (layer(X[None, None]) - Y).pow(2).sum()
    layer.zero_grad()
    loss.backward()
    with torch.no_grad():
        layer.weight -= 3e-2 * layer.weight.grad
    losses.append(loss.item())
    if step % 2 == 0:
        print(f"step {step + 1:2d}, loss {loss.item():.4f}")
print("learned kernel:", layer.weight.data.reshape(-1).numpy().round(3), " (true: [1, -1])")

# %% [markdown]
# The same on a real image and a 3×3 kernel: from (photo, Sobel-x response) pairs alone,
# gradient descent (Adam) finds the Sobel kernel.

# %%
patches = gray[None, None, 100:356:2, 150:406:2]                 # (1, 1, 128, 128)
target = cF.conv2d(patches, sobel[:1])
torch.manual_seed(0)
learner = convops.nn.Conv2d(1, 1, 3, bias=False)
optimizer = torch.optim.Adam(learner.parameters(), lr=0.05)
sobel_losses = []
for step in range(400):
    loss = F.mse_loss(learner(patches), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    sobel_losses.append(loss.item())
print(f"loss {sobel_losses[0]:.3g} -> {sobel_losses[-1]:.2g}")
print("learned:\n", learner.weight.data[0, 0].numpy().round(2))
print("max |learned - Sobel x| =", (learner.weight.data[0, 0] - sobel_x).abs().max().item())

fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
axes[0].semilogy(range(1, len(losses) + 1), losses, "o-")
axes[0].set(title="1×2 edge kernel: squared error", xlabel="step", ylabel="loss")
axes[1].semilogy(sobel_losses)
axes[1].set(title="3×3 Sobel from a photo: MSE", xlabel="Adam step")
axes[2].imshow(learner.weight.data[0, 0], cmap="RdBu", vmin=-2, vmax=2)
for (i, j), v in np.ndenumerate(learner.weight.data[0, 0].numpy()):
    axes[2].text(j, i, f"{v:.2f}", ha="center", va="center")
axes[2].set_title("learned 3×3 kernel")
axes[2].axis("off")
plt.tight_layout()
plt.show()
