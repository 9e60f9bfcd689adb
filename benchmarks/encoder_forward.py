"""The encoder's two CPU forward passes side by side: numpy (the default on a CPU) against MLX.

`python -m benchmarks.encoder_forward [ROUNDS]` (needs `model-gateway models pull all-minilm-l6-v2`) loads the
MiniLM pack twice in one process, with OpenBLAS in front of MLX as the adapter does, and embeds 1 / 8 / 32 /
128 short texts with each in alternation, ROUNDS times (20), so both see the same machine. Prints one JSON
object: per batch size the median and the fastest call of each path, in ms, and numpy/MLX of the medians.
Both paths put their products into the same OpenBLAS pool, so alternating them does not slow either.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

from adapters._blas import load_openblas
from server.paths import default_models_dir

TEXTS = tuple(f"sentence number {i} about a cat that sat on a mat" for i in range(128))


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    out: dict[str, Any] = {"blas": load_openblas()}
    from adapters.mlx_bert import SentenceEncoder  # imports MLX: after OpenBLAS is in place

    pack = default_models_dir(os.environ) / "all-minilm-l6-v2"
    encoders = {"numpy": SentenceEncoder.load(pack, forward="numpy"), "mlx": SentenceEncoder.load(pack, forward="mlx")}
    out["layouts"] = {name: enc.layout for name, enc in encoders.items()}
    for n in (1, 8, 32, 128):
        samples: dict[str, list[float]] = {name: [] for name in encoders}
        for _ in range(rounds + 2):
            for name, enc in encoders.items():
                started = time.perf_counter()
                enc.encode(TEXTS[:n])
                samples[name].append((time.perf_counter() - started) * 1000)
        p50 = {name: statistics.median(s[2:]) for name, s in samples.items()}
        row: dict[str, Any] = {k: {"p50": round(p50[k], 1), "min": round(min(s), 1)} for k, s in samples.items()}
        row["numpy/mlx p50"] = round(p50["numpy"] / p50["mlx"], 2)
        out[f"embed_{n}"] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
