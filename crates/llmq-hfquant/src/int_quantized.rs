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
        // each row's scales and zero points as f32 once, not once per value
        let mut s = vec![0.0f32; ng];
        let mut z = vec![0.0f32; ng];
        for o in 0..self.out_features {
            for g in 0..ng {
                s[g] = self.scales[o * ng + g].to_f32();
                z[g] = self.zeros[o * ng + g] as f32;
            }
            let row = o * self.in_features..(o + 1) * self.in_features;
            for ((d, &q), &g) in w[row.clone()].iter_mut().zip(&self.q[row]).zip(&groups) {
                *d = s[g] * (q as f32 - z[g]);
            }
        }
        w
    }
}

impl IntQuantized {
    /// Largest code, `2^bits - 1`.
    pub fn maxq(&self) -> u8 {
        ((1u16 << self.bits) - 1) as u8
    }

    /// `true` when there is no act-order permutation to store: `g_idx` is absent or
    /// equals the default `i / group_size` (all zeros per-channel).
    pub fn has_default_g_idx(&self) -> bool {
        match &self.g_idx {
            None => true,
            Some(g) => g
                .iter()
                .enumerate()
                .all(|(i, &gi)| gi as usize == self.default_group_of(i)),
        }
    }

    /// Group of column `i` without act-order.
    pub fn default_group_of(&self, i: usize) -> usize {
        match self.group_size {
            Some(gs) => i / gs,
            None => 0,
        }
    }

    /// Group of every input column (`g_idx` as the files store it).
    pub fn g_idx_or_default(&self) -> Vec<u32> {
        (0..self.in_features)
            .map(|i| self.group_of(i) as u32)
            .collect()
    }

    /// The output rows `rows` (in that order) as a weight of their own: a row
    /// permutation or a slice, exact since every group lies within one row.
    pub fn select_rows(&self, rows: &[usize]) -> IntQuantized {
        let (i, ng) = (self.in_features, self.n_groups());
        let mut r = IntQuantized {
            out_features: rows.len(),
            q: Vec::with_capacity(rows.len() * i),
            scales: Vec::with_capacity(rows.len() * ng),
            zeros: Vec::with_capacity(rows.len() * ng),
            ..self.clone_header()
        };
        for &o in rows {
            r.q.extend_from_slice(&self.q[o * i..(o + 1) * i]);
            r.scales
                .extend_from_slice(&self.scales[o * ng..(o + 1) * ng]);
            r.zeros.extend_from_slice(&self.zeros[o * ng..(o + 1) * ng]);
        }
        r
    }

    /// Everything but the per-row arrays.
    fn clone_header(&self) -> IntQuantized {
        IntQuantized {
            bits: self.bits,
            group_size: self.group_size,
            symmetric: self.symmetric,
            out_features: 0,
            in_features: self.in_features,
            q: Vec::new(),
            scales: Vec::new(),
            zeros: Vec::new(),
            g_idx: self.g_idx.clone(),
        }
    }

    /// Checks sizes and value ranges; every layout calls this before packing.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Invalid(m));
        if !(1..=8).contains(&self.bits) {
            return bad(format!("bits {} not in 1..=8", self.bits));
        }
        if self.group_size == Some(0) {
            return bad("group_size 0".into());
        }
        let (o, i, ng) = (self.out_features, self.in_features, self.n_groups());
        if self.q.len() != o * i {
            return bad(format!("q has {} values, want {o}x{i}", self.q.len()));
        }
        if self.scales.len() != o * ng || self.zeros.len() != o * ng {
            return bad(format!(
                "scales/zeros have {}/{} values, want {o}x{ng}",
                self.scales.len(),
                self.zeros.len()
            ));
        }
        let maxq = self.maxq();
        if let Some(p) = self.q.iter().position(|&v| v > maxq) {
            return bad(format!("q[{p}] = {} exceeds {maxq}", self.q[p]));
        }
        if let Some(p) = self.zeros.iter().position(|&v| v > maxq) {
            return bad(format!("zeros[{p}] = {} exceeds {maxq}", self.zeros[p]));
        }
        if self.symmetric {
            let mid = 1u8 << (self.bits - 1);
            if let Some(p) = self.zeros.iter().position(|&v| v != mid) {
                return bad(format!(
                    "symmetric but zeros[{p}] = {} != {mid}",
                    self.zeros[p]
                ));
            }
        }
        if let Some(s) = self.scales.iter().find(|s| !s.is_finite()) {
            return bad(format!("non-finite scale {s}"));
        }
        if let Some(g) = &self.g_idx {
            if g.len() != i {
                return bad(format!("g_idx has {} entries, want {i}", g.len()));
            }
            if let Some(p) = g.iter().position(|&x| x as usize >= ng) {
                return bad(format!("g_idx[{p}] = {} >= n_groups {ng}", g[p]));
            }
        }
        Ok(())
    }
}
