"""The FID network: InceptionV3 as the standard Fréchet Inception Distance uses it.

The paper scores regenerations with FID. The network here is the one FID is defined with (the
TensorFlow 2015-12-05 Inception graph, as ported to PyTorch for FID): InceptionV3 whose
Mixed_5b-5d, 6b-6e and 7b average-pool without counting padding, and whose last block's pool
branch max-pools. Features are the 2048-d global average pool before the classifier, of images
resized to 299 x 299 (bilinear) and scaled to [-1, 1].

Weights come from one local safetensors file (``evaluate.inception``) whose tensor names are
torchvision's Inception3 names (``Conv2d_1a_3x3.conv.weight``, ``Mixed_7c.branch_pool.bn.running_var``,
...), the names of the usual FID weights file; ``scripts/convert_inception.py`` turns that
``.pth`` into safetensors once. Nothing is downloaded; no pickle is read at evaluation time.
The classifier (``fc``) and auxiliary head are not used, so their tensors may be absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import VLVError

FEATURES = 2048
RESOLUTION = 299
IGNORED = ("fc.", "AuxLogits.")  # classifier heads: not part of the feature network
NO_PAD_COUNT = dict(kernel_size=3, stride=1, padding=1, count_include_pad=False)


class Conv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: Inception's unit."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _row(cin, cout, n):  # 1 x n convolution, same size
    return Conv(cin, cout, (1, n), padding=(0, n // 2))


def _col(cin, cout, n):  # n x 1 convolution, same size
    return Conv(cin, cout, (n, 1), padding=(n // 2, 0))


class BlockA(nn.Module):  # 35 x 35
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(cin, 64, 1), Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(F.avg_pool2d(x, **NO_PAD_COUNT)),
        ], 1)


class BlockB(nn.Module):  # 35 -> 17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(cin, 64, 1), Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class BlockC(nn.Module):  # 17 x 17, factorised 7 x 7
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = Conv(cin, c7, 1), _row(c7, c7, 7), _col(c7, 192, 7)
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = _col(c7, c7, 7), _row(c7, c7, 7)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = _col(c7, c7, 7), _row(c7, 192, 7)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(F.avg_pool2d(x, **NO_PAD_COUNT)),
        ], 1)


class BlockD(nn.Module):  # 17 -> 8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = Conv(cin, 192, 1), _row(192, 192, 7)
        self.branch7x7x3_3, self.branch7x7x3_4 = _col(192, 192, 7), Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class BlockE(nn.Module):  # 8 x 8, expanded 3 x 3; FID's last block max-pools its pool branch
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1, self.branch3x3_2a, self.branch3x3_2b = Conv(cin, 384, 1), _row(384, 384, 3), _col(384, 384, 3)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a, self.branch3x3dbl_3b = _row(384, 384, 3), _col(384, 384, 3)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else F.avg_pool2d(x, **NO_PAD_COUNT)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], 1)


class FIDInception(nn.Module):
    """InceptionV3 up to its 2048-d pool features, with FID's block variants (module docstring)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = BlockC(768, 128), BlockC(768, 160), BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: N x 3 x 299 x 299 in [-1, 1] -> N x 2048."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor, batch_size: int = 32) -> np.ndarray:
        """2048-d features (float64) of N x S x S x 3 uint8 images or N x 3 x S x S tensors in [-1, 1]."""
        self.eval()
        out = []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            x = torch.from_numpy(np.asarray(chunk)).permute(0, 3, 1, 2).float() / 127.5 - 1 if isinstance(chunk, np.ndarray) else chunk.float()
            x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False)
            out.append(self(x).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, FEATURES))


def load(path: str | Path, param: str = "evaluate.inception") -> FIDInception:
    """The FID network with the weights of the safetensors file ``path``; one line on any problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise VLVError(f"{param}: {path} is not a file; name a local safetensors file of FID Inception weights "
                       "(convert the usual .pth once with scripts/convert_inception.py)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise VLVError(f"{param}: {path} is not a safetensors file ({err}); convert it with scripts/convert_inception.py") from None
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED) and not k.endswith("num_batches_tracked")}
    model = FIDInception()
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise VLVError(f"{param}: {path} does not hold InceptionV3 weights under torchvision's names: "
                       f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    shapes = [k for k, v in model.state_dict().items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if shapes:
        raise VLVError(f"{param}: {path}: {len(shapes)} tensors have the wrong shape (e.g. {shapes[0]}: "
                       f"{tuple(state[shapes[0]].shape)}, expected {tuple(model.state_dict()[shapes[0]].shape)})")
    model.load_state_dict(state, strict=False)
    return model.eval()
