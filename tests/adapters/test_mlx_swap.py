from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from adapters.mlx_swap import SubclassSwap


def _replaced(self: nn.Linear, x: object) -> str:
    return "replaced"


def test_swapped_modules_keep_their_class_and_weights_and_share_one_subclass_per_class() -> None:
    first, second, other = nn.Linear(4, 4), nn.Linear(4, 4), nn.Embedding(8, 4)
    weight = first.weight
    swap = SubclassSwap("Test", {"__call__": _replaced, "as_linear": _replaced})
    for module in (first, second, other):
        swap(module)
    assert type(first) is type(second) and type(first).__name__ == "TestLinear"
    assert type(other).__name__ == "TestEmbedding" and isinstance(other, nn.Embedding)
    assert isinstance(first, nn.Linear) and first.weight is weight
    assert first(None) == "replaced" and other.as_linear(None) == "replaced"
    assert nn.Linear(4, 4)(mx.zeros((1, 4))).shape == (1, 4)  # the original class is untouched
