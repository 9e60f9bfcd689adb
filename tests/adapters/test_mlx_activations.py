from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from adapters.errors import ModelLoadError
from adapters.mlx_activations import activation, biased, gelu_exact, residual


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_a_biased_activation_equals_the_activation_of_the_biased_input(hidden_act: str) -> None:
    act = activation(hidden_act, fast_gelu=True)
    y = mx.random.normal((3, 5, 64), key=mx.random.key(1)) * 3
    bias = mx.random.normal((64,), key=mx.random.key(2))
    assert mx.allclose(biased(act)(y, bias), act(y + bias), atol=1e-6)


def test_the_fast_gelu_with_its_bias_fused_stays_within_a_hundred_thousandth_of_exact_gelu() -> None:
    y = mx.random.normal((4, 1536), key=mx.random.key(3)) * 4
    bias = mx.random.normal((1536,), key=mx.random.key(4))
    fused = biased(activation("gelu", fast_gelu=True))(y, bias)
    assert float(mx.abs(fused - gelu_exact(y + bias)).max()) < 1e-5


def test_a_residual_adds_the_bias_and_the_skipped_input() -> None:
    y, x = mx.ones((2, 3, 4)), mx.full((2, 3, 4), 2.0)
    out = residual()(y, mx.arange(4, dtype=mx.float32), x)
    assert out.tolist()[1][2] == [3.0, 4.0, 5.0, 6.0]


def test_an_unknown_activation_is_refused_by_name() -> None:
    with pytest.raises(ModelLoadError, match="unsupported hidden_act 'swish'"):
        activation("swish", fast_gelu=True)


def test_relu_is_mlx_relu() -> None:
    assert activation("relu", fast_gelu=False) is nn.relu
