"""fold_batchnorm: batch norms folded into the layer before them, same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qaprune.export.fold import fold_batchnorm, max_fold_error
from qaprune.models import build_model


@pytest.mark.parametrize(
    "name,shape,n_bn", [("mlp", (16,), 3), ("vgg_small", (1, 16, 16), 6), ("resnet8", (1, 16, 16), 9)]
)
def test_folded_model_computes_the_same(name, shape, n_bn):
    torch.manual_seed(0)
    m = build_model(name, input_shape=shape, num_classes=5)
    m.train()
    m(torch.randn(32, *shape))  # running statistics that are not the identity
    f, folded = fold_batchnorm(m.eval())
    assert len(folded) == n_bn
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in f.modules())
    assert max_fold_error(m, f, torch.randn(8, *shape)) < 1e-5
    assert any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())  # a copy


def test_a_batch_norm_read_twice_is_not_folded():
    class Fork(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

        def forward(self, x):
            y = self.lin(x)
            return self.bn(y) + y

    m = Fork().eval()
    f, folded = fold_batchnorm(m)
    assert folded == [] and max_fold_error(m, f, torch.randn(3, 4)) == 0.0
