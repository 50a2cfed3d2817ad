"""In-memory image classification datasets for `python -m convops.train`.

Nothing is ever downloaded. "digits" is scikit-learn's bundled 8x8 handwritten digits; "mnist",
"fashion-mnist" and "cifar10" read torchvision's on-disk format under --data-dir (the `root`
torchvision would use): <root>/MNIST/raw/*-idx?-ubyte, <root>/FashionMNIST/raw/*-idx?-ubyte,
<root>/cifar-10-batches-py/{data_batch_1..5,test_batch} (python pickles).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class DatasetError(Exception):
    """A dataset that cannot be found or read; the message names the expected files."""


@dataclass
class ImageDataset:
    """Images (N, C, H, W) float32, normalised with the training set's per-channel statistics,
    and labels (N,) int64, for both splits."""
    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_images.shape[-1]


def _normalise(train: Tensor, test: Tensor):
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def _digits(data_dir: Optional[str], seed: int, image_size: int) -> ImageDataset:
    """scikit-learn's 1797 8x8 digits (values 0..16), stratified 80/20 split with `seed`, each
    digit resized to image_size - 8 and padded by 4 (MNIST's framing: a 20x20 digit in 28x28)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    images = F.pad(F.interpolate(images, size=(image_size - 8,) * 2, mode="bilinear", align_corners=False),
                   (4, 4, 4, 4))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=seed,
                                           stratify=digits.target)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    train_x, test_x = _normalise(images[train_idx], images[test_idx])
    return ImageDataset("digits", train_x, labels[train_idx], test_x, labels[test_idx], 10)


def _idx_dataset(name: str, torchvision_class: str) -> Callable[..., ImageDataset]:
    def load(data_dir: Optional[str], seed: int, image_size: int) -> ImageDataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, torchvision_class)
        root = _require_dir(data_dir)
        raw = os.path.join(root, torchvision_class, "raw")
        expected = [os.path.join(raw, os.path.splitext(os.path.basename(url))[0]) for url, _ in cls.resources]
        _require_files(expected, torchvision_class)
        try:
            splits = [cls(root, train=train, download=False) for train in (True, False)]
        except Exception as e:  # a truncated or foreign file: torchvision asserts / raises
            raise DatasetError(f"cannot read {torchvision_class} files under {raw}: {type(e).__name__}: {e}")
        (train_x, train_y), (test_x, test_y) = [(s.data.unsqueeze(1).float() / 255.0, s.targets.long())
                                                for s in splits]
        train_x, test_x = _normalise(train_x, test_x)
        return ImageDataset(name, train_x, train_y, test_x, test_y, len(cls.classes))
    return load


def _cifar10(data_dir: Optional[str], seed: int, image_size: int) -> ImageDataset:
    # torchvision's CIFAR10 insists on the published md5 sums; the pickles are read here instead.
    import torchvision.datasets as tvd

    folder = os.path.join(_require_dir(data_dir), tvd.CIFAR10.base_folder)
    train_files = [os.path.join(folder, name) for name, _ in tvd.CIFAR10.train_list]
    test_files = [os.path.join(folder, name) for name, _ in tvd.CIFAR10.test_list]
    _require_files(train_files + test_files, "CIFAR-10")

    def read(paths: List[str]):
        images, labels = [], []
        for path in paths:
            try:
                with open(path, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(entry["labels"])
            except Exception as e:
                raise DatasetError(f"cannot read CIFAR-10 batch {path}: {type(e).__name__}: {e}")
        return (torch.from_numpy(np.concatenate(images)).float() / 255.0,
                torch.tensor(labels, dtype=torch.int64))

    (train_x, train_y), (test_x, test_y) = read(train_files), read(test_files)
    train_x, test_x = _normalise(train_x, test_x)
    return ImageDataset("cifar10", train_x, train_y, test_x, test_y, 10)


def _require_dir(data_dir: Optional[str]) -> str:
    if not data_dir:
        raise DatasetError("this dataset is read from local files: pass --data-dir (torchvision's root folder)")
    return data_dir


def _require_files(paths: List[str], what: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"{what} files not found (never downloaded): missing {', '.join(missing)}")


DATASETS: Dict[str, Callable[..., ImageDataset]] = {
    "digits": _digits,
    "mnist": _idx_dataset("mnist", "MNIST"),
    "fashion-mnist": _idx_dataset("fashion-mnist", "FashionMNIST"),
    "cifar10": _cifar10,
}


def load_dataset(name: str, data_dir: Optional[str] = None, seed: int = 0, image_size: int = 32) -> ImageDataset:
    """The named dataset in memory. `image_size` only shapes "digits" (the others keep their
    native 28x28 / 32x32); `seed` only drives the digits train/test split."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name](data_dir, seed, image_size)
