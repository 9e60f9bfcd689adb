"""The encoder's CPU forward passes side by side: numpy in halves on both cores (the default), numpy whole, MLX.

`python -m benchmarks.encoder_forward [ROUNDS]` (needs `model-gateway models pull all-minilm-l6-v2`) loads the
MiniLM pack three times in one process, with OpenBLAS in front of MLX as the adapter does: the numpy forward
pass as shipped (a batch of 256 tokens or more in two halves, adapters/numpy_halves.py), the numpy forward
pass with its halves' worker closed (every batch whole on the calling thread, OpenBLAS on both cores), and
the MLX forward pass. It embeds 1 / 8 / 32 / 128 short texts with each in turn, ROUNDS times (8): a block of
one untimed and five timed calls per path, after a pause long enough for a pool worker that spun after the
previous path to sleep, so each path is timed as it runs call after call. Prints one JSON object: per batch
size the median and the fastest call of each path, in ms, and the numpy paths' medians over MLX's.
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
TIMED, PAUSE_S = 5, 0.15


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    out: dict[str, Any] = {"blas": load_openblas()}
    from adapters.mlx_bert import SentenceEncoder  # imports MLX: after OpenBLAS is in place

    pack = default_models_dir(os.environ) / "all-minilm-l6-v2"
    encoders = {
        "numpy": SentenceEncoder.load(pack, forward="numpy"),
        "numpy whole": SentenceEncoder.load(pack, forward="numpy"),
        "mlx": SentenceEncoder.load(pack, forward="mlx"),
    }
    encoders["numpy whole"].close()  # no halves' worker: every batch whole on the calling thread
    out["layouts"] = {name: enc.layout for name, enc in encoders.items()}
    try:
        for n in (1, 8, 32, 128):
            samples: dict[str, list[float]] = {name: [] for name in encoders}
            for _ in range(rounds):
                for name, enc in encoders.items():
                    enc.encode(TEXTS[:n])
                    time.sleep(PAUSE_S)
                    for _ in range(TIMED):
                        started = time.perf_counter()
                        enc.encode(TEXTS[:n])
                        samples[name].append((time.perf_counter() - started) * 1000)
            p50 = {name: statistics.median(s) for name, s in samples.items()}
            row: dict[str, Any] = {k: {"p50": round(p50[k], 1), "min": round(min(s), 1)} for k, s in samples.items()}
            row["numpy/mlx p50"] = round(p50["numpy"] / p50["mlx"], 2)
            row["numpy whole/mlx p50"] = round(p50["numpy whole"] / p50["mlx"], 2)
            out[f"embed_{n}"] = row
    finally:
        encoders["numpy"].close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
