"""Quantize float32 rows with gguf-py's own (numpy) quantizers, for the byte comparison
in tests/gguf_py_quantize.rs. gguf-py implements the unweighted reference algorithms
of the legacy formats and MXFP4 only (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4, besides BF16).

usage: quantize.py N_PER_ROW TYPE IN.f32 OUT.bin [TYPE IN.f32 OUT.bin ...]
"""

import sys

try:
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize
except ImportError as e:
    sys.exit(f"install gguf: pip install gguf numpy ({e})")


def main(args: list[str]) -> None:
    if len(args) < 4 or (len(args) - 1) % 3 != 0:
        sys.exit(__doc__)
    n_per_row = int(args[0])
    for i in range(1, len(args), 3):
        type_name, src, dst = args[i : i + 3]
        qtype = GGMLQuantizationType[type_name]
        x = np.fromfile(src, dtype="<f4").reshape(-1, n_per_row)
        np.ascontiguousarray(quantize(x, qtype)).view(np.uint8).tofile(dst)


if __name__ == "__main__":
    main(sys.argv[1:])
