"""Builds only exllamav3's trellis reconstruction kernels (quant/reconstruct.cu) from the
installed exllamav3 package, as a torch extension, so the tensor check does not wait for the
whole 177-file extension. Prints the build time. Usage (with exllamav3 importable, e.g. its wheel installed with --no-deps):
    python3 scripts/exl3-min-ext.py BUILD_DIR
    python3 scripts/exl3-check-tensors.py --min-ext=BUILD_DIR exl3_check.safetensors"""
import os, sys, time
import torch
from torch.utils.cpp_extension import load
import importlib.util
spec = importlib.util.find_spec("exllamav3")
pkg = os.path.dirname(spec.origin)
src = os.path.join(pkg, "exllamav3_ext")
build = sys.argv[1]
os.makedirs(build, exist_ok=True)
bind = os.path.join(build, "bind_min.cpp")
open(bind, "w").write('''#include <torch/extension.h>
#include "quant/reconstruct.cuh"
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("reconstruct", &reconstruct, "reconstruct");
    m.def("reconstruct_slice", &reconstruct_slice, "reconstruct_slice");
}
''')
t0 = time.time()
mod = load(name="exl3_min", sources=[bind, os.path.join(src, "quant", "reconstruct.cu")],
           extra_include_paths=[src], build_directory=build, verbose=False,
           extra_cflags=["-O2"], extra_cuda_cflags=["-O3", "--use_fast_math", "-std=c++17"])
print(f"minimal exllamav3 extension built in {time.time() - t0:.0f} s")
