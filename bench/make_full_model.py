#!/usr/bin/env python3
"""Write a full-size, BGE-M3-shaped snapshot with random weights, for benchmarks and soaks
(or, with --kind reranker, one shaped like BAAI/bge-reranker-v2-m3).

The real BAAI/bge-m3 weights cannot be downloaded here, and speed and memory do not depend
on the weight values: this writes the same shapes (XLM-R large: hidden 1024, 24 layers,
16 heads, FFN 4096, vocab 250002, 8194 positions, fp32, pooler included) with the real
transformers `XLMRobertaModel`, a fixed seed and transformers' own initialisation, plus
fp16 `colbert_linear.pt` / `sparse_linear.pt` heads as the official repo stores them.
`--layers N` writes a shallower variant (same width, vocab and positions) for quick runs.

`--kind reranker` writes bge-reranker-v2-m3's shapes instead (the same XLM-R large encoder, no
pooler, `XLMRobertaForSequenceClassification` with num_labels 1: classifier.dense 1024 -> 1024,
tanh, classifier.out_proj 1024 -> 1), transformers' own init under the same seed, except that
out_proj is rescaled and its bias set so that the logits of 32 calibration pairs have standard
deviation 3 and median 0 (as tests/fixtures' tiny-reranker): scores of a real reranker's scale,
so that differences between engines read as they would on real logits.

The tokenizer is the 1200-piece fixture tokenizer from tests/fixtures/tiny-st (the
250000-piece SentencePiece model cannot be downloaded): token ids stay < 1202, which
indexes the first rows of the 250002-row embedding table; for a random model that is fine.

    .venv/bin/python bench/make_full_model.py                # 24 layers, ~2.27 GB
    .venv/bin/python bench/make_full_model.py --layers 2     # ~1.1 GB, for quick soaks
    .venv/bin/python bench/make_full_model.py --kind reranker   # ~/.cache/m3embed/bench/bge-reranker-v2-m3-random

Built once: a complete snapshot (manifest present, files of the recorded sizes) is left
alone unless --force. The last line printed is the snapshot's path.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_SRC = REPO / "tests" / "fixtures" / "tiny-st"
TOKENIZER_FILES = ("sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")
MANIFEST = "m3embed-bench.json"
FULL_LAYERS = 24
DEFAULT_SEED = 20240601
MAX_TOKENS = 8192  # 8194 positions - pad_token_id - 1


KINDS = {"m3": "bge-m3-random", "reranker": "bge-reranker-v2-m3-random"}
LOGIT_STD = 3.0  # the reranker's calibrated logit spread


def default_dir(layers: int, kind: str = "m3") -> Path:
    suffix = "" if layers == FULL_LAYERS else f"-L{layers}"
    return Path.home() / ".cache" / "m3embed" / "bench" / f"{KINDS[kind]}{suffix}"


def make_config(layers: int, kind: str = "m3"):
    from transformers import XLMRobertaConfig

    config = XLMRobertaConfig(
        vocab_size=250002, hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=8194, type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_act="gelu",
    )
    if kind == "reranker":
        config.num_labels = 1  # id2label {0: "LABEL_0"}, as bge-reranker-v2-m3's config.json
        config.architectures = ["XLMRobertaForSequenceClassification"]
    else:
        config.architectures = ["XLMRobertaModel"]
    return config


def is_complete(out: Path, layers: int, seed: int, kind: str = "m3") -> bool:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("layers") != layers or manifest.get("seed") != seed or manifest.get("kind", "m3") != kind:
        return False
    for name, size in manifest.get("files", {}).items():
        path = out / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return bool(manifest.get("files"))


def write_tokenizer(tmp: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_SRC / name, tmp / name)
    # The fixture says model_max_length 128 (its model's limit); this model takes 8192.
    tc_path = tmp / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    tc["model_max_length"] = MAX_TOKENS
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def calibrate_head(model, tmp: Path) -> dict:
    """Rescale classifier.out_proj and set its bias so that the logits of 32 calibration pairs
    (queries of 8..32 pieces, passages of 32..256, bench/workloads.py texts) have standard
    deviation LOGIT_STD and median 0. One pair per forward (no padding)."""
    import torch
    from transformers import AutoTokenizer

    if str(REPO / "bench") not in sys.path:
        sys.path.insert(0, str(REPO / "bench"))
    import workloads

    rng = random.Random("reranker-calibration")
    w = workloads.PairWorkload("calibration", tuple(rng.randint(8, 32) for _ in range(32)),
                               tuple((rng.randint(32, 256),) for _ in range(32)))
    tok = AutoTokenizer.from_pretrained(str(tmp))
    head = model.classifier.out_proj
    raw = []
    with torch.no_grad():
        for q, (p,) in workloads.pair_texts(w):
            enc = tok(q, p, return_tensors="pt")
            raw.append(float(model(**enc).logits[0, 0]) - float(head.bias[0]))
        t = torch.tensor(raw)
        scale = LOGIT_STD / float(t.std())
        head.weight.mul_(scale)
        head.bias.fill_(-scale * float(t.median()))
    return {"pairs": len(raw), "logit_std": LOGIT_STD, "raw_logit_std": round(float(t.std()), 6),
            "out_proj_scale": round(scale, 4)}


def build(tmp: Path, layers: int, seed: int, kind: str = "m3") -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaForSequenceClassification, XLMRobertaModel

    torch.manual_seed(seed)
    config = make_config(layers, kind)
    t0 = time.perf_counter()
    if kind == "reranker":
        model = XLMRobertaForSequenceClassification(config)  # no pooler, as bge-reranker-v2-m3
    else:
        model = XLMRobertaModel(config, add_pooling_layer=True)  # the official file has a pooler
    model.eval()
    t_init = time.perf_counter() - t0
    calibration = None
    if kind == "reranker":
        write_tokenizer(tmp)
        t0 = time.perf_counter()
        calibration = calibrate_head(model, tmp)
        calibration["seconds"] = round(time.perf_counter() - t0, 1)

    config.save_pretrained(str(tmp))
    gen_cfg = tmp / "generation_config.json"
    if gen_cfg.exists():
        gen_cfg.unlink()

    # save_file writes straight from the tensors' memory (no serialized copy), so the peak
    # stays near one copy of the weights. Non-persistent buffers (position_ids) are not in
    # the state dict.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    n_params = sum(v.numel() for v in state.values())
    t0 = time.perf_counter()
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(tmp / "model.safetensors", 0o644)  # safetensors creates it 0600
    t_save = time.perf_counter() - t0
    del state, model

    if kind == "m3":
        # Heads: default nn.Linear init, stored as fp16 state dicts like the official repo.
        torch.manual_seed(seed + 1)
        colbert = torch.nn.Linear(1024, 1024)
        sparse = torch.nn.Linear(1024, 1)
        torch.save(colbert.half().state_dict(), tmp / "colbert_linear.pt")
        torch.save(sparse.half().state_dict(), tmp / "sparse_linear.pt")
        write_tokenizer(tmp)

    import transformers
    shape = "bge-reranker-v2-m3-shaped reranker" if kind == "reranker" else "BGE-M3-shaped snapshot"
    return {
        "what": f"random-weight {shape} for m3embed benchmarks (NOT the real model)",
        "generator": "bench/make_full_model.py",
        "kind": kind,
        "layers": layers,
        "seed": seed,
        "parameters": n_params,
        "tokenizer": "tests/fixtures/tiny-st (1200 pieces, ids < 1202)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "timings_s": {"init": round(t_init, 1), "save_safetensors": round(t_save, 1)},
        **({"head_calibration": calibration} if calibration else {}),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=sorted(KINDS), default="m3",
                    help="m3: BGE-M3 (default); reranker: bge-reranker-v2-m3's shapes")
    ap.add_argument("--layers", type=int, default=FULL_LAYERS, help="encoder layers (default 24)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--out", type=Path, default=None,
                    help="output dir (default ~/.cache/m3embed/bench/bge-m3-random[-LN], or "
                         "bge-reranker-v2-m3-random[-LN] with --kind reranker)")
    ap.add_argument("--force", action="store_true", help="rebuild even if complete")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.layers < 1:
        ap.error("--layers must be >= 1")

    out = (args.out or default_dir(args.layers, args.kind)).expanduser().resolve()
    if not args.force and is_complete(out, args.layers, args.seed, args.kind):
        print(f"complete, not rebuilt (use --force): {out}", file=sys.stderr)
        print(out)
        return 0

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)

    per_layer = 4 * (1024 * 1024 + 1024) + 2 * 1024 * 4096 + 4096 + 1024 + 4 * 1024
    params = (250002 + 8194 + 1 + 2) * 1024 + args.layers * per_layer + 1024 * 1024 + 1024
    need = int(1.05 * 4 * params)
    free = shutil.disk_usage(out.parent if out.parent.exists() else Path.home()).free
    if free < need:
        print(f"not enough disk: need ~{need / 2**30:.2f} GiB, {free / 2**30:.2f} GiB free", file=sys.stderr)
        return 1

    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    manifest = build(tmp, args.layers, args.seed, args.kind)
    manifest["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest["timings_s"]["total"] = round(time.perf_counter() - t0, 1)
    manifest["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)

    size = sum(manifest["files"].values())
    print(f"wrote {args.layers}-layer {args.kind} model ({manifest['parameters'] / 1e6:.1f} M params, "
          f"{size / 1e9:.2f} GB) in {manifest['timings_s']['total']} s, "
          f"peak RSS {manifest['peak_rss_mb']} MB", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
