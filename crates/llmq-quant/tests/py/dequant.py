"""Dequantize raw GGML block bytes with gguf-py, for the cross-checks in
tests/gguf_py_dequant.rs.

usage: dequant.py TYPE IN.bin OUT.f32 [TYPE IN.bin OUT.f32 ...]

TYPE is a GGMLQuantizationType name (Q4_0, Q6_K, IQ4_XS, BF16, ...). IN.bin holds whole
blocks; OUT.f32 receives gguf.quants.dequantize's output as little-endian float32.
Several triples may be given so one Python start-up serves many checks.
"""

import sys

try:
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
except ImportError as e:  # the Rust test turns this into its own message
    sys.exit(f"install gguf: pip install gguf numpy ({e})")


def main(args: list[str]) -> None:
    if not args or len(args) % 3 != 0:
        sys.exit(__doc__)
    for i in range(0, len(args), 3):
        type_name, src, dst = args[i : i + 3]
        qtype = GGMLQuantizationType[type_name]
        with open(src, "rb") as f:
            data = np.frombuffer(f.read(), dtype=np.uint8)
        values = np.asarray(dequantize(data, qtype), dtype=np.float32).reshape(-1)
        values.astype("<f4").tofile(dst)


if __name__ == "__main__":
    main(sys.argv[1:])
