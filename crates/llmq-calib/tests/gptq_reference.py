"""NumPy transcription of AutoGPTQ's `GPTQ.fasterquant` + `Quantizer` (auto_gptq/
quantization/gptq.py, quantizer.py), line by line, used as an independent reference
for crates/llmq-calib/src/gptq.rs (torch is not installable here).

Two changes, both also made by the Rust code: scales are rounded to float16 before
the zero point and q are computed, and the Cholesky work is done in float64.

usage: gptq_reference.py DIR OUT IN BITS GROUP_SIZE(-1) SYM(0/1) ACTORDER(0/1) STATIC(0/1)
reads DIR/w.f32 ([OUT, IN]) and DIR/h.f64 ([IN, IN]); writes DIR/ref_q.u8 (integer
codes, original column order), ref_scale.f32, ref_zero.f32, ref_gidx.i32, ref_loss.f64
"""
import sys
import numpy as np


class Quantizer:
    def configure(self, bits, sym):
        self.maxq = 2**bits - 1
        self.sym = sym

    def find_params(self, x):
        xmin = np.minimum(x.min(axis=1), 0)
        xmax = np.maximum(x.max(axis=1), 0)
        if self.sym:
            xmax = np.maximum(np.abs(xmin), xmax)
            tmp = xmin < 0
            xmin = np.where(tmp, -xmax, xmin)
        tmp = (xmin == 0) & (xmax == 0)
        xmin = np.where(tmp, -1, xmin)
        xmax = np.where(tmp, 1, xmax)
        scale = ((xmax - xmin) / self.maxq).astype(np.float32)
        scale = scale.astype(np.float16).astype(np.float32)  # change 1
        if self.sym:
            zero = np.full_like(scale, (self.maxq + 1) / 2)
        else:
            zero = np.clip(np.round(-xmin / scale), 0, self.maxq)
        self.scale = scale.reshape(-1, 1).astype(np.float32)
        self.zero = zero.reshape(-1, 1).astype(np.float32)

    def codes(self, x):
        return np.clip(np.round(x / self.scale) + self.zero, 0, self.maxq)

    def quantize(self, x):
        return self.scale * (self.codes(x) - self.zero)


def main():
    d, rows, cols, bits, group_size, sym, actorder, static_groups = sys.argv[1:9]
    rows, cols, bits, group_size = int(rows), int(cols), int(bits), int(group_size)
    sym, actorder, static_groups = sym == "1", actorder == "1", static_groups == "1"
    W = np.fromfile(f"{d}/w.f32", dtype=np.float32).reshape(rows, cols).copy()
    H = np.fromfile(f"{d}/h.f64", dtype=np.float64).reshape(cols, cols).copy()
    blocksize, percdamp = 128, 0.01

    quantizer = Quantizer()
    quantizer.configure(bits, sym)
    quantizer.find_params(W)

    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    scale, zero = [], []
    now_idx = 1
    if static_groups:
        import copy
        groups = []
        for i in range(0, cols, group_size):
            q = copy.deepcopy(quantizer)
            q.find_params(W[:, i:i + group_size])
            scale.append(q.scale)
            zero.append(q.zero)
            groups.append(q)

    if actorder:
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = np.argsort(perm)

    Losses = np.zeros_like(W, dtype=np.float64)
    Q = np.zeros((rows, cols), dtype=np.float64)

    damp = percdamp * np.mean(np.diag(H))
    H[np.arange(cols), np.arange(cols)] += damp
    L = np.linalg.cholesky(H)
    Linv = np.linalg.inv(L)
    Hi = Linv.T @ Linv                      # cholesky_inverse
    Hinv = np.linalg.cholesky(Hi).T         # cholesky(., upper=True)
    Hinv = Hinv.astype(np.float32)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Losses1 = np.zeros_like(W1, dtype=np.float64)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            dd = Hinv1[i, i]
            if group_size != -1:
                if not static_groups:
                    if (i1 + i) % group_size == 0:
                        quantizer.find_params(W[:, (i1 + i):(i1 + i + group_size)])
                    if ((i1 + i) // group_size) - now_idx == -1:
                        scale.append(quantizer.scale)
                        zero.append(quantizer.zero)
                        now_idx += 1
                else:
                    idx = i1 + i
                    if actorder:
                        idx = perm[idx]
                    quantizer = groups[idx // group_size]
            codes = quantizer.codes(w.reshape(-1, 1)).flatten()
            q = quantizer.quantize(w.reshape(-1, 1)).flatten().astype(np.float32)
            Q1[:, i] = codes
            Losses1[:, i] = ((w - q).astype(np.float64) / np.float64(dd)) ** 2
            err1 = (w - q) / dd
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:]).astype(np.float32)
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= (Err1 @ Hinv[i1:i2, i2:]).astype(np.float32)

    gs = group_size if group_size != -1 else cols
    if static_groups and actorder:
        g_idx = np.array([perm[i] // gs for i in range(cols)], dtype=np.int32)
    else:
        g_idx = np.array([i // gs for i in range(cols)], dtype=np.int32)
    if actorder:
        Q = Q[:, invperm]
        g_idx = g_idx[invperm]
    if scale == []:
        scale.append(quantizer.scale)
        zero.append(quantizer.zero)
    scale = np.concatenate(scale, axis=1)
    zero = np.concatenate(zero, axis=1)

    Q.astype(np.uint8).tofile(f"{d}/ref_q.u8")
    scale.astype(np.float32).tofile(f"{d}/ref_scale.f32")
    zero.astype(np.float32).tofile(f"{d}/ref_zero.f32")
    g_idx.astype(np.int32).tofile(f"{d}/ref_gidx.i32")
    np.array([Losses.sum()], dtype=np.float64).tofile(f"{d}/ref_loss.f64")


if __name__ == "__main__":
    main()
