"""Check an MR-GPTQ compressed-tensors checkpoint (weights stored in the space of a
block-Hadamard input rotation, `transform_config` in `quantization_config`) against the
compressed-tensors package (tests/ct_fp_methods_cli.rs):

1. the package's compressor decompresses every module to exactly our rotated values;
2. the package's own transforms, built from the checkpoint's `transform_config`
   (`TransformConfig` -> `apply_transform_config`), applied online to a Linear holding
   the decompressed rotated weight, compute what our engine computes with its dense
   (rotation folded back) weight;
3. the transform weight the package registers on each module has the name and the
   values of the `<module>.<scheme>_input.weight` tensor we store;
4. the package's offline `weight_input` inverse, fused into our dense weight, gives the
   stored (rotated) weight back.

Argument: a folder of cases; each holds model.safetensors, config.json, case.json
{"prefixes": [...]} and expected.safetensors with, per prefix, `<prefix>` (our rotated
values) and `<prefix>.dense` (the engine's weight), both f32.
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import assert_equal, cases, fail, load_expected, load_json  # noqa: E402

from compressed_tensors.compressors import BaseCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationConfig  # noqa: E402
from compressed_tensors.transform import TransformConfig, apply_transform_config  # noqa: E402


class Holder(torch.nn.Module):
    def __init__(self, weights):
        super().__init__()
        for i, w in enumerate(weights):
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.float32)
            lin.weight.data.copy_(w)
            self.add_module(f"m{i}", lin)


def only(cfg, online):
    groups = {}
    for name, scheme in cfg.config_groups.items():
        apply = [a for a in scheme.apply if a.is_online() == online]
        groups[name] = scheme.model_copy(update={"apply": apply})
    return TransformConfig(config_groups=groups)


def close(name, got, want):
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        fail(f"{name}: max |diff| {float((got - want).abs().max())}")


def main(root):
    n = 0
    for case in cases(root):
        raw = load_json(case / "config.json")["quantization_config"]
        qc = QuantizationConfig.model_validate(raw)
        tc = TransformConfig.model_validate(raw["transform_config"])
        (tname, scheme), = tc.config_groups.items()
        compressor = BaseCompressor.load_from_registry(qc.format)
        tensors = load_file(str(case / "model.safetensors"))
        want = load_expected(case)
        prefixes = load_json(case / "case.json")["prefixes"]
        rotated = []
        for prefix in prefixes:
            local = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            got = compressor.decompress(local, qc.config_groups["group_0"])["weight"]
            assert_equal(f"{case.name} {prefix} ({qc.format})", got.to(torch.float32), want[prefix])
            rotated.append(got.to(torch.float32))
        # 2 and 3: the online input rotation on the stored weights
        holder = Holder(rotated)
        apply_transform_config(holder, only(tc, True))
        # one shared transform weight per size: list every module's reference to it
        params = dict(holder.named_parameters(remove_duplicate=False))
        g = torch.Generator().manual_seed(0)
        for i, prefix in enumerate(prefixes):
            key = f"m{i}.{tname}_input.weight"
            if key not in params:
                fail(f"{case.name}: the package registered no {key} ({sorted(params)[:4]} ...)")
            stored = tensors[f"{prefix}.{tname}_input.weight"]
            assert_equal(f"{case.name} {prefix} transform weight", params[key].detach().to(stored.dtype), stored)
            lin = getattr(holder, f"m{i}")
            x = torch.randn(5, lin.in_features, generator=g)
            with torch.no_grad():
                close(f"{case.name} {prefix} online rotation", lin(x), x @ want[prefix + ".dense"].T)
        # 4: the offline inverse fused into the dense weight gives the stored weight back
        dense = Holder([want[p + ".dense"] for p in prefixes])
        apply_transform_config(dense, only(tc, False))
        for i, prefix in enumerate(prefixes):
            close(f"{case.name} {prefix} fused weight_input", getattr(dense, f"m{i}").weight.data, rotated[i])
            n += 1
        print(f"{case.name}: scheme {tname} type {scheme.type} head_dim {scheme.head_dim}")
    print(f"{n} rotated modules checked against compressed-tensors' transforms")


if __name__ == "__main__":
    main(sys.argv[1])
