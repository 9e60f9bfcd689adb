"""MLX modules given a subclass of their own class with some methods replaced (the CPU substitutions).

mlx-lm's modules are swapped in place (`module.__class__`), so the model keeps its structure, weights and
every other behaviour; one subclass is made per original class and reused for each of its modules.
"""

from __future__ import annotations

from typing import Any


class SubclassSwap:
    """Swaps a module's class for `<prefix><class name>`, a subclass with `methods` in place of the class's own."""

    def __init__(self, prefix: str, methods: dict[str, Any]) -> None:
        self._prefix, self._methods = prefix, methods
        self._made: dict[type, type] = {}

    def __call__(self, module: Any) -> None:
        cls = type(module)
        sub = self._made.get(cls)
        if sub is None:
            sub = self._made[cls] = type(f"{self._prefix}{cls.__name__}", (cls,), dict(self._methods))
        module.__class__ = sub
