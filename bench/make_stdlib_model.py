#!/usr/bin/env python3
"""Write a BGE-M3-shaped snapshot with random weights using the Python standard library only.

For machines without torch or transformers (the GPU machine scripts/gpu-check.sh runs on
cannot reach PyPI). Same shapes and tensor names as bench/make_full_model.py (XLM-R large:
hidden 1024, 16 heads, FFN 4096, vocab 250002, 8194 positions, pooler; fp32 safetensors;
fp16 colbert_linear.pt / sparse_linear.pt in torch's zip format) and the same fixture
tokenizer; the names are taken from tests/fixtures/tiny-h64, a checkpoint transformers wrote.

The values are not transformers' initialisation: one block of 1,000,003 normal values
(std 0.02, fixed seed) is tiled through every tensor from a per-tensor offset (the block
length is prime to the row widths, so no two rows repeat), biases included, and the
LayerNorm weights are 1 + that. Good for speed, memory and CUDA-vs-CPU agreement; not a
model of anything.

    python3 bench/make_stdlib_model.py --layers 2 --out /tmp/bge-m3-random-L2
"""
from __future__ import annotations

import argparse
import array
import io
import json
import pickle
import random
import shutil
import struct
import sys
import types
import zipfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NAMES_FROM = REPO / "tests" / "fixtures" / "tiny-h64"
TOKENIZER_SRC = REPO / "tests" / "fixtures" / "tiny-st"
TOKENIZER_FILES = ("sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
HIDDEN, HEADS, FFN, VOCAB, POSITIONS = 1024, 16, 4096, 250002, 8194
BLOCK = 1_000_003


def normal_block(seed: int) -> bytes:
    rng = random.Random(seed)
    return array.array("f", (rng.gauss(0.0, 0.02) for _ in range(BLOCK))).tobytes()


def tiled(block: bytes, floats: int, offset: int) -> bytes:
    """floats values from the block, starting at offset, wrapping around."""
    start = (offset % BLOCK) * 4
    out = bytearray()
    need = floats * 4
    out += block[start:start + need]
    while len(out) < need:
        out += block[: need - len(out)]
    return bytes(out)


def tensor_list(layers: int) -> list[tuple[str, list[int]]]:
    """(name, shape) in the fixture's order, its dims mapped to BGE-M3's, for `layers` layers."""
    path = NAMES_FROM / "model.safetensors"
    with path.open("rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    tiny = json.loads((NAMES_FROM / "config.json").read_text())
    dims = {tiny["hidden_size"]: HIDDEN, tiny["intermediate_size"]: FFN, tiny["vocab_size"]: VOCAB,
            tiny["max_position_embeddings"]: POSITIONS, 1: 1}
    if len(dims) != 5:
        sys.exit(f"make_stdlib_model: {NAMES_FROM}'s sizes are ambiguous: {sorted(dims)}")
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = [dims[d] for d in info["shape"]]
        if name.startswith("encoder.layer."):
            if not name.startswith("encoder.layer.0."):
                continue
            rest = name[len("encoder.layer.0."):]
            out += [(f"encoder.layer.{l}.{rest}", shape) for l in range(layers)]
        else:
            out.append((name, shape))
    return sorted(out)


def write_safetensors(path: Path, tensors: list[tuple[str, list[int]]], block: bytes) -> int:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]}
        offset += 4 * n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in tensors:
            n = header[name]["data_offsets"][1] // 4 - header[name]["data_offsets"][0] // 4
            values = tiled(block, n, zlib.crc32(name.encode()))
            if name.endswith("LayerNorm.weight"):  # 1 + noise, as a trained norm is near 1
                a = array.array("f", values)
                values = array.array("f", (1.0 + x for x in a)).tobytes()
            f.write(values)
    return offset // 4


# --- torch.save's zip format without torch: a pickle naming torch's rebuild function and
# storage class (stand-ins registered under torch's module names, so pickle writes the same
# GLOBAL opcodes), with each storage in archive/data/<key>.
def _fake_torch() -> tuple[object, object]:
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise NotImplementedError

    class HalfStorage:  # noqa: D401  (a name for pickle, nothing more)
        pass

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    HalfStorage.__module__, HalfStorage.__qualname__ = "torch", "HalfStorage"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch.HalfStorage = HalfStorage
    torch._utils = utils
    sys.modules.setdefault("torch", torch)
    sys.modules.setdefault("torch._utils", utils)
    return sys.modules["torch._utils"]._rebuild_tensor_v2, sys.modules["torch"].HalfStorage


class _Storage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage: _Storage, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        rebuild, _ = _fake_torch()
        stride = (self.shape[1], 1) if len(self.shape) == 2 else (1,)
        from collections import OrderedDict
        return (rebuild, (self.storage, 0, self.shape, stride, False, OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            _, half_storage = _fake_torch()
            return ("storage", half_storage, obj.key, "cpu", obj.numel)
        return None


def write_torch_linear(path: Path, out_features: int, in_features: int, block: bytes, seed: int) -> None:
    """A torch.save'd fp16 state dict {weight [out, in], bias [out]}, as the official heads."""
    from collections import OrderedDict
    arch = path.stem
    weight, bias = _Storage("0", out_features * in_features), _Storage("1", out_features)
    state = OrderedDict([("weight", _Tensor(weight, (out_features, in_features))), ("bias", _Tensor(bias, (out_features,)))])
    pkl = io.BytesIO()
    _Pickler(pkl, protocol=2).dump(state)

    def half_bytes(n: int, offset: int) -> bytes:
        floats = array.array("f", tiled(block, n, offset))
        return b"".join(struct.pack("<e", x) for x in floats)

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{arch}/data.pkl", pkl.getvalue())
        z.writestr(f"{arch}/byteorder", "little")
        z.writestr(f"{arch}/data/0", half_bytes(weight.numel, seed))
        z.writestr(f"{arch}/data/1", half_bytes(bias.numel, seed + 7))
        z.writestr(f"{arch}/version", "3\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=2, help="encoder layers (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=20240601, help="seed of the value block (default: %(default)s)")
    ap.add_argument("--out", type=Path, required=True, help="snapshot directory to write")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    block = normal_block(args.seed)
    params = write_safetensors(args.out / "model.safetensors", tensor_list(args.layers), block)
    write_torch_linear(args.out / "colbert_linear.pt", HIDDEN, HIDDEN, block, 11)
    write_torch_linear(args.out / "sparse_linear.pt", 1, HIDDEN, block, 13)
    config = json.loads((NAMES_FROM / "config.json").read_text())
    config.update(hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN, vocab_size=VOCAB,
                  max_position_embeddings=POSITIONS, num_hidden_layers=args.layers)
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_SRC / name, args.out / name)
    tc_path = args.out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    tc["model_max_length"] = POSITIONS - 2
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"make_stdlib_model: {params:,} parameters, {args.layers} layers")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
