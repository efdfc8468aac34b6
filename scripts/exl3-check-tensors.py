#!/usr/bin/env python3
"""Checks our EXL3 tensors against exllamav3's own code.

Input: the file written by `cargo run --release -p llmq-trellis --example exl3_check_tensors F`.
Every linear `lN` there has trellis/suh/svh/(mcg|mul1) as exllamav3 stores them, plus our own
decoding: `inner_ref` (decoded tiles, fp16, (in, out)) and `weight_ref` (full weight, f32).

  --cpu   no GPU: exllamav3's CUDA extension is stubbed; runs exllamav3's Python reconstruction
          chain (128-Hadamards from util/hadamard.py, suh/svh) on our inner_ref and its
          tensor_core_perm, and compares with weight_ref. Checks Hadamard/scale order, not the
          bitstream or codebooks.
  --min-ext=DIR  (GPU) as below, with only exllamav3's reconstruction kernels built from its own
          sources (scripts/exl3-min-ext.py DIR, ~30 s) instead of its whole extension.
  (GPU)   builds exllamav3's LinearEXL3 from the stored tensors on cuda:0 and compares
          get_inner_weight_tensor() with inner_ref (bit for bit: bitstream, tile order and
          codebooks) and get_weight_tensor() with weight_ref (within fp16 rounding).
  --model EXL3_DIR DEQUANT_DIR TEXT   (GPU) loads our EXL3 folder with exllamav3 (Config, Model,
          Tokenizer) and the folder of our own reconstructed weights with transformers (f32), runs
          both on the first 256 tokens of TEXT and compares the next-token distributions (mean KL,
          top-1 agreement). Written from exllamav3's sources, not yet run.
Exit status 0 only if every check passes.
"""
import sys, types, importlib

def model_check(exl3_dir, deq_dir, text_file):
    import torch
    from exllamav3 import Config, Model, Tokenizer
    from transformers import AutoModelForCausalLM
    config = Config.from_directory(exl3_dir)
    model = Model.from_config(config)
    model.load("cuda:0")
    tok = Tokenizer.from_config(config)
    ids = tok.encode(open(text_file).read())[:, :256]
    with torch.inference_mode():
        ours = model.forward(ids, {"attn_mode": "flash_attn_nc"}).float().cpu()
        hf = AutoModelForCausalLM.from_pretrained(deq_dir, torch_dtype=torch.float32).to("cuda:0")
        ref = hf(ids.to("cuda:0")).logits.float().cpu()
    v = min(ours.shape[-1], ref.shape[-1])
    p = torch.log_softmax(ref[..., :v], -1)
    q = torch.log_softmax(ours[..., :v], -1)
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    top1 = (p.argmax(-1) == q.argmax(-1)).float().mean().item()
    print(f"exllamav3 on our EXL3 folder vs transformers on our reconstruction: mean KL {kl:.2e}, top-1 agreement {top1:.4f}")
    sys.exit(0 if kl < 1e-3 and top1 > 0.98 else 1)

def main():
    if "--model" in sys.argv:
        i = sys.argv.index("--model")
        model_check(*sys.argv[i + 1:i + 4])
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    cpu = "--cpu" in sys.argv
    if len(args) != 1:
        print(__doc__)
        sys.exit(2)
    import torch
    from safetensors.torch import load_file
    min_ext = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--min-ext=")), None)
    if cpu or min_ext:
        # exllamav3 imports its compiled extension at module import; stub it for the pure-Python
        # parts. With --min-ext=DIR, the stub forwards reconstruct/reconstruct_slice to exllamav3's
        # own reconstruction kernels, built alone from its sources (scripts/exl3-min-ext.py).
        class Stub(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                return lambda *a, **k: None
        ext = Stub("exllamav3.ext")
        ext.exllamav3_ext = Stub("exllamav3_ext")
        if min_ext:
            sys.path.insert(0, min_ext)
            import exl3_min as real
            ext.exllamav3_ext.reconstruct = real.reconstruct
            ext.exllamav3_ext.reconstruct_slice = real.reconstruct_slice
        sys.modules["exllamav3.ext"] = ext
    t = load_file(args[0])
    keys = sorted({k.split(".")[0] for k in t})
    ok = True
    if cpu:
        q = importlib.import_module("exllamav3.modules.quant.exl3_lib.quantize")
        perm = q.tensor_core_perm("cpu").tolist()
        expect = [0, 16, 128, 144, 8, 24, 136, 152]
        print("tensor_core_perm[:8]", perm[:8], "OK" if perm[:8] == expect else "MISMATCH")
        ok &= perm[:8] == expect
    else:
        from exllamav3.modules.quant.exl3 import LinearEXL3
    for key in keys:
        g = lambda s: t.get(f"{key}.{s}")
        trellis, suh, svh = g("trellis"), g("suh"), g("svh")
        in_f, out_f = suh.shape[0], svh.shape[0]
        cb = "mcg" if g("mcg") is not None else "mul1" if g("mul1") is not None else "3inst"
        ref_w = g("weight_ref").float()
        if cpu:
            w = g("inner_ref").float()
            w = q.preapply_had_l(w, q.had_k) * suh.float().unsqueeze(1)
            w = q.preapply_had_r(w, q.had_n) * svh.float().unsqueeze(0)
            inner_ok = True
            inner_msg = "(inner not checked on CPU)"
        else:
            dev = "cuda:0"
            lin = LinearEXL3(None, in_f, out_f, suh=suh.to(dev), svh=svh.to(dev), trellis=trellis.to(dev),
                             mcg=None if g("mcg") is None else g("mcg").to(dev),
                             mul1=None if g("mul1") is None else g("mul1").to(dev))
            inner = lin.get_inner_weight_tensor().cpu()
            diff = (inner.view(torch.int16) != g("inner_ref").view(torch.int16)).sum().item()
            inner_ok = diff == 0
            inner_msg = f"inner: {diff} of {inner.numel()} fp16 values differ"
            w = lin.get_weight_tensor().float().cpu()
        rel = ((w - ref_w).square().mean() / ref_w.square().mean()).sqrt().item()
        w_ok = rel < 2e-3
        ok &= inner_ok and w_ok
        K = trellis.shape[-1] // 16
        print(f"{key}: K={K} {cb} {in_f}x{out_f}  {inner_msg}; weight rel RMS diff {rel:.2e}  "
              f"{'OK' if inner_ok and w_ok else 'FAIL'}")
    sys.exit(0 if ok else 1)

main()
