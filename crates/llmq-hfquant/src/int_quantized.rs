//! A linear layer's weight after group-wise integer quantization, independent of any
//! file layout: `w[o][i] = scale[o][g] * (q[o][i] - zero[o][g])` with `g = g_idx[i]`
//! (or `i / group_size` without act-order), the GPTQ paper's convention.

use half::f16;

/// Integer-quantized `[out_features, in_features]` weight (PyTorch orientation).
#[derive(Clone, Debug, PartialEq)]
pub struct IntQuantized {
    /// 2, 3, 4 or 8
    pub bits: u8,
    /// columns per group; `None` = one group per output row (per-channel)
    pub group_size: Option<usize>,
    /// symmetric: every zero point is `2^(bits-1)`
    pub symmetric: bool,
    pub out_features: usize,
    pub in_features: usize,
    /// `[out, in]`, each in `0..2^bits`
    pub q: Vec<u8>,
    /// `[out, n_groups]`, already representable in f16 (files store f16)
    pub scales: Vec<f16>,
    /// `[out, n_groups]`, each in `0..2^bits`
    pub zeros: Vec<u8>,
    /// group of each input column (act-order / desc_act); `None` = `i / group_size`
    pub g_idx: Option<Vec<u32>>,
}

impl IntQuantized {
    /// Number of groups per output row.
    pub fn n_groups(&self) -> usize {
        match self.group_size {
            Some(g) => self.in_features.div_ceil(g),
            None => 1,
        }
    }

    /// Group of input column `i`.
    pub fn group_of(&self, i: usize) -> usize {
        match (&self.g_idx, self.group_size) {
            (Some(g), _) => g[i] as usize,
            (None, Some(gs)) => i / gs,
            (None, None) => 0,
        }
    }

    /// The weight this represents, `[out, in]` f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let ng = self.n_groups();
        let groups: Vec<usize> = (0..self.in_features).map(|i| self.group_of(i)).collect();
        let mut w = vec![0.0f32; self.out_features * self.in_features];
        for o in 0..self.out_features {
            for (i, &g) in groups.iter().enumerate() {
                let s = self.scales[o * ng + g].to_f32();
                let z = self.zeros[o * ng + g] as f32;
                w[o * self.in_features + i] = s * (self.q[o * self.in_features + i] as f32 - z);
            }
        }
        w
    }
}
