"""ResNet-8: a small residual CNN (the MLPerf Tiny image-classification shape).

A 3×3 stem, then one basic block per stage (conv-BN-ReLU-conv-BN plus an identity or a 1×1
conv-BN shortcut, then ReLU), global average pooling and a linear classifier: seven 3×3
convolutions and one linear layer (the eight of the name), plus two 1×1 shortcut convolutions.
ReLUs are ``nn.ReLU`` modules so that ``attach`` can quantize them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from qaprune.models import MODELS, _image_shape, _norm


class BasicBlock(nn.Module):
    """conv3×3(stride)-BN-ReLU-conv3×3-BN, plus a shortcut, then ReLU.
    x (N, c_in, H, W) -> (N, c_out, H/stride, W/stride).

    Example:
        >>> import torch
        >>> BasicBlock(8, 16, stride=2)(torch.zeros(1, 8, 8, 8)).shape
        torch.Size([1, 16, 4, 4])
    """

    def __init__(self, c_in: int, c_out: int, *, stride: int = 1, batchnorm: str = "affine") -> None:
        super().__init__()
        bias = batchnorm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm(c_out, batchnorm, dims=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.bn2 = _norm(c_out, batchnorm, dims=2)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    [
                        ("conv", nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias)),
                        ("bn", _norm(c_out, batchnorm, dims=2)),
                    ]
                )
            )
        self.act2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(y + self.shortcut(x))


@MODELS.register("resnet8")
def resnet8(
    *, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (16, 32, 64), batchnorm: str = "affine"
) -> nn.Module:
    """ResNet-8: stem conv(widths[0]) → one basic block per width (stride 2 after the first)
    → global average pool → linear. x (N, C, H, W) -> logits (N, num_classes).

    Example:
        >>> import torch
        >>> m = resnet8(input_shape=(3, 32, 32), num_classes=10)
        >>> m(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> sorted({l.kernel_size for l in m.modules() if isinstance(l, nn.Conv2d)})
        [(1, 1), (3, 3)]
        >>> sum(isinstance(l, nn.Conv2d) and l.kernel_size == (3, 3) for l in m.modules())
        7
    """
    c, _, _ = _image_shape(input_shape)
    layers: list[tuple[str, nn.Module]] = [
        ("input_quant", nn.Identity()),
        ("conv1", nn.Conv2d(c, widths[0], 3, padding=1, bias=batchnorm == "none")),
        ("bn1", _norm(widths[0], batchnorm, dims=2)),
        ("act1", nn.ReLU()),
    ]
    c_in = widths[0]
    for i, width in enumerate(widths, start=1):
        block = BasicBlock(c_in, width, stride=1 if i == 1 else 2, batchnorm=batchnorm)
        layers.append((f"layer{i}", block))
        c_in = width
    layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(c_in, num_classes))]
    return nn.Sequential(OrderedDict(layers))
