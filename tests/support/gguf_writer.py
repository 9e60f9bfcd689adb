"""A minimal GGUF v3 writer for tests: metadata plus F32 or Q4_1 tensors, laid out as llama.cpp does.

MLX can save GGUF but only unquantized; tests that check how Q4_1 blocks
become MLX 4-bit weights need real Q4_1 bytes, so they are packed here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

GGML_F32 = 0
GGML_Q4_1 = 3
ALIGNMENT = 32
_Q4_1_BLOCK = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (16,))])
_KV_UINT32, _KV_INT32, _KV_FLOAT32, _KV_BOOL, _KV_STRING, _KV_ARRAY = 4, 5, 6, 7, 8, 9

MetadataValue = str | int | float | bool | list[str] | list[int]


def quantize_q4_1(weight: np.ndarray) -> bytes:
    """Pack rows into Q4_1 blocks: per 32 values an fp16 scale d and minimum m, value = d * q + m."""
    blocks = weight.astype(np.float32).reshape(-1, 32)
    low = blocks.min(axis=1)
    scale = (blocks.max(axis=1) - low) / 15.0
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.clip(np.rint((blocks - low[:, None]) * inverse[:, None]), 0, 15).astype(np.uint8)
    packed = np.zeros(len(blocks), dtype=_Q4_1_BLOCK)
    packed["d"], packed["m"] = scale, low
    packed["qs"] = q[:, :16] | (q[:, 16:] << 4)  # element j in the low nibble, element j + 16 in the high one
    return packed.tobytes()


def dequantize_q4_1(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """What a reader of the Q4_1 bytes must reconstruct."""
    packed = np.frombuffer(data, dtype=_Q4_1_BLOCK)
    q = np.concatenate([packed["qs"] & 0x0F, packed["qs"] >> 4], axis=1).astype(np.float32)
    values = packed["d"].astype(np.float32)[:, None] * q + packed["m"].astype(np.float32)[:, None]
    return values.reshape(shape)


def write_gguf(path: Path, metadata: dict[str, MetadataValue], tensors: dict[str, tuple[np.ndarray, int]]) -> None:
    """Write `tensors` (name -> (array, GGML_F32 | GGML_Q4_1)) and `metadata` to a GGUF file."""
    payloads = [(name, array.shape, kind, _tensor_bytes(array, kind)) for name, (array, kind) in tensors.items()]
    header = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(payloads), len(metadata)))
    for key, value in metadata.items():
        header += _string(key) + _value(value)
    offset = 0
    for name, shape, kind, data in payloads:
        dims = tuple(reversed(shape))  # GGUF lists the fastest-varying dimension first
        header += _string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset)
        offset += _padded(len(data))
    with path.open("wb") as out:
        out.write(header + b"\0" * (_padded(len(header)) - len(header)))
        for _, _, _, data in payloads:
            out.write(data + b"\0" * (_padded(len(data)) - len(data)))


def _tensor_bytes(array: np.ndarray, kind: int) -> bytes:
    if kind == GGML_Q4_1:
        return quantize_q4_1(array)
    return np.ascontiguousarray(array, dtype=np.float32).tobytes()


def _padded(size: int) -> int:
    return (size + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(value: MetadataValue) -> bytes:
    if isinstance(value, bool):
        return struct.pack("<IB", _KV_BOOL, value)
    if isinstance(value, int):
        return struct.pack("<II", _KV_UINT32, value)
    if isinstance(value, float):
        return struct.pack("<If", _KV_FLOAT32, value)
    if isinstance(value, str):
        return struct.pack("<I", _KV_STRING) + _string(value)
    if all(isinstance(item, str) for item in value):
        items = b"".join(_string(str(item)) for item in value)
        return struct.pack("<IIQ", _KV_ARRAY, _KV_STRING, len(value)) + items
    return struct.pack(f"<IIQ{len(value)}i", _KV_ARRAY, _KV_INT32, len(value), *value)
