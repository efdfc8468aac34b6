"""Checks a sharded output folder with the `safetensors` Python package: every shard
opens with safe_open(framework="pt") and has metadata format "pt", the index's
weight_map names exactly the tensors in each shard and its total_size is their byte
sum, config.json parses and carries quantization_config, tokenizer files were copied,
and every tensor equals the copy listed in expected_tensors.safetensors."""
import json
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from _common import assert_equal, fail


def main():
    d = Path(sys.argv[1])
    index = json.loads((d / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    n = len(files)
    if n < 2:
        fail(f"expected several shards, got {files}")
    for i, f in enumerate(files, 1):
        if f != f"model-{i:05d}-of-{n:05d}.safetensors":
            fail(f"shard name {f}")
    seen = {}
    total = 0
    for f in files:
        with safe_open(str(d / f), framework="pt") as r:
            if r.metadata() != {"format": "pt"}:
                fail(f"{f}: metadata {r.metadata()}")
            for k in r.keys():
                t = r.get_tensor(k)
                total += t.numel() * t.element_size()
                if k in seen:
                    fail(f"{k} in two shards")
                seen[k] = t
                if index["weight_map"].get(k) != f:
                    fail(f"{k}: index says {index['weight_map'].get(k)}, found in {f}")
    if set(seen) != set(index["weight_map"]):
        fail("index and shards name different tensors")
    if index["metadata"]["total_size"] != total:
        fail(f"total_size {index['metadata']['total_size']} != {total}")
    cfg = json.loads((d / "config.json").read_text())
    if "quantization_config" not in cfg or cfg.get("model_type") != "llama":
        fail(f"config.json: {cfg}")
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        if not (d / f).exists():
            fail(f"{f} not copied")
    if list(d.glob(".*tmp")):
        fail("temporary files left behind")
    want = load_file(str(d.parent / "expected_tensors.safetensors"))
    if set(want) != set(seen):
        fail("tensor names differ from what was written")
    for k, t in want.items():
        assert_equal(k, seen[k], t)
    print(f"ok: {len(seen)} tensors in {n} shards")


if __name__ == "__main__":
    main()
