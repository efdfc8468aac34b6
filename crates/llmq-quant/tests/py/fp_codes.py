"""Reference small-float encodings for tests/fp_codes_torch.rs, computed by code nobody
in this project wrote: torch's casts to float8_e4m3fn and float8_e8m0fnu, and
compressed-tensors' `cast_to_fp4` (its CPU path: round to the nearest E2M1 value).

usage: fp_codes.py IN.f32 OUT_DIR
writes OUT_DIR/e2m1.f32 (E2M1 values), e4m3.u8 and e8m0.u8 (codes), one per input.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from compressed_tensors.quantization.utils.fp4_utils import cast_to_fp4


def main(src: str, out: str) -> None:
    x = torch.from_numpy(np.fromfile(src, dtype="<f4").copy())
    out = Path(out)
    e2m1 = cast_to_fp4(x.clone())
    e2m1.numpy().astype("<f4").tofile(out / "e2m1.f32")
    x.to(torch.float8_e4m3fn).view(torch.uint8).numpy().tofile(out / "e4m3.u8")
    x.abs().to(torch.float8_e8m0fnu).view(torch.uint8).numpy().tofile(out / "e8m0.u8")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
