//! Prompt processing through the AVX-512 register tiles (8 tokens × a few weight rows,
//! [`super::tile_avx512`] for the signed 32-value types, [`super::tile_wide`] for Q2_K
//! and Q3_K, [`super::tile_vnni`] (16 rows) for Q4_K, Q5_K, Q6_K and IQ4_XS): the
//! activations are packed once per call, each task takes a chunk of up to 64 weight
//! rows (fewer where their decoded form would not stay in L2) and walks token panels
//! (kept in L2) × row tiles × 8-token groups; the tokens past the last full group go
//! through the 4-row and 1-row kernels.

use super::dispatch::{Kernel, Tile};
use super::{act_quant, tail, tile_avx512 as lg, tile_vnni as tv, tile_wide as wd, OutPtr};
use crate::tensor::WeightMatrix;
use rayon::prelude::*;

/// Tokens per tile (both tile families).
pub const GROUP: usize = 8;
const _: () = assert!(lg::GROUP == GROUP && wd::GROUP == GROUP && tv::GROUP == GROUP);

/// Activation bytes of one token panel: the panel stays in L2 while every row tile of a
/// chunk passes over it.
const PANEL_BYTES: usize = 512 << 10;

/// Most bytes of decoded weights (`tile_wide`) per chunk of rows.
const DECODED_BYTES: usize = 512 << 10;

/// A chunk's weight rows, decoded for its tile family.
enum Decoded {
    Legacy(lg::Decoded),
    Wide(wd::Decoded, wd::Extra),
    Vnni(tv::Decoded, tv::VnniType),
}

/// `y` for `n ≥ 8` tokens of packed activations `acts` (`rb` bytes a row).
pub fn run(
    w: &WeightMatrix,
    k: &Kernel,
    tile: Tile,
    acts: &[u8],
    rb: usize,
    n: usize,
    y: &mut [f32],
) {
    let rows = w.rows;
    let (packed, gbytes, rows_per) = match tile {
        Tile::Legacy(_) => {
            let nb = rb / act_quant::Q8_0_BYTES;
            (lg::pack(acts, rb, n), lg::group_bytes(nb), lg::ROWS)
        }
        Tile::Wide(t) => {
            let nb = rb / act_quant::Q8_K_BYTES;
            let x = t.extra;
            (wd::pack(acts, rb, n, x), wd::group_bytes(nb, x), wd::ROWS)
        }
        Tile::Vnni(_) => {
            let nb = rb / act_quant::Q8_K_BYTES;
            (tv::pack(acts, rb, n), tv::group_bytes(nb), tv::ROWS)
        }
    };
    let threads = rayon::current_num_threads().max(1);
    let most = match tile {
        Tile::Wide(_) => DECODED_BYTES / (rb / act_quant::Q8_K_BYTES * wd::DEC_BLOCK).max(1),
        Tile::Vnni(_) => DECODED_BYTES / tv::decoded_row_bytes(rb / act_quant::Q8_K_BYTES).max(1),
        _ => 64,
    };
    let chunk = rows
        .div_ceil(threads * 4)
        .clamp(rows_per, most.clamp(rows_per, 64))
        .next_multiple_of(rows_per);
    let n_chunks = rows.div_ceil(chunk);
    let groups = n / GROUP;
    let panel = (PANEL_BYTES / gbytes.max(1)).clamp(1, groups.max(1));
    let out = OutPtr(y.as_mut_ptr());
    let body = |ci: usize| {
        let (r0, r1) = (ci * chunk, ((ci + 1) * chunk).min(rows));
        let rows_of = (r0..r1).map(|r| w.row(r));
        let decoded = match tile {
            Tile::Legacy(dec) => {
                Decoded::Legacy(lg::Decoded::new(dec, rb / act_quant::Q8_0_BYTES, rows_of))
            }
            Tile::Wide(t) => Decoded::Wide(
                wd::Decoded::new(t.decode, rb / act_quant::Q8_K_BYTES, rows_of),
                t.extra,
            ),
            Tile::Vnni(t) => {
                Decoded::Vnni(tv::Decoded::new(t, rb / act_quant::Q8_K_BYTES, rows_of), t)
            }
        };
        let mut res = [[0.0f32; GROUP]; 4];
        for g0 in (0..groups).step_by(panel) {
            for q0 in (r0..r1).step_by(rows_per) {
                let rr = rows_per.min(r1 - q0);
                for g in g0..(g0 + panel).min(groups) {
                    let a = &packed[g * gbytes..(g + 1) * gbytes];
                    // SAFETY: the dispatcher hands out tiles only where AVX-512
                    // F/BW/VNNI and AVX2/FMA/F16C were detected.
                    unsafe {
                        match &decoded {
                            Decoded::Legacy(d) => lg::tile(d, q0 - r0, rr, a, &mut res),
                            Decoded::Wide(d, x) => wd::tile(d, *x, q0 - r0, rr, a, &mut res),
                            Decoded::Vnni(d, m) => {
                                // SAFETY: tokens g·8.. of rows q0..q0 + rr: this
                                // chunk's, in bounds.
                                let y0 = out.0.add(g * GROUP * rows + q0);
                                tv::tile(d, *m, (q0 - r0) / tv::ROWS, a, y0, rows, rr);
                                continue;
                            }
                        }
                    }
                    // token by token: the tile's rows are adjacent in `y`
                    for i in 0..GROUP {
                        let at = (g * GROUP + i) * rows + q0;
                        for (r, vals) in res.iter().take(rr).enumerate() {
                            // SAFETY: (token, row) in bounds; the row is this chunk's.
                            unsafe { out.write(at + r, vals[i]) };
                        }
                    }
                }
            }
        }
        tail(w, k, acts, rb, groups * GROUP, n, r0, r1, out);
    };
    if threads == 1 || n_chunks == 1 {
        (0..n_chunks).for_each(body);
    } else {
        (0..n_chunks).into_par_iter().for_each(body);
    }
    if packed.capacity() <= SPARE_MOST {
        SPARE.with(|s| s.set(packed));
    }
}

/// Most bytes of packed activations kept for this thread's next call.
const SPARE_MOST: usize = 16 << 20;

thread_local! {
    /// The packed activations' buffer of this thread's last call, for the next one (a
    /// fresh allocation of megabytes is an `mmap` whose page faults cost more than
    /// zeroing).
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Packs the full groups of `group` tokens of `n` activation rows (`rb` bytes each) into
/// `gbytes` bytes per group with `pack_group(first row of the group, out)`, in parallel
/// for long prompts (the rows past the last full group are left out).
pub(crate) fn pack_groups(
    acts: &[u8],
    rb: usize,
    n: usize,
    group: usize,
    gbytes: usize,
    pack_group: impl Fn(&[u8], &mut [u8]) + Sync,
) -> Vec<u8> {
    let mut out = SPARE.with(|s| s.take());
    out.clear();
    out.resize(n / group * gbytes, 0);
    let one = |(g, dst): (usize, &mut [u8])| pack_group(&acts[g * group * rb..], dst);
    if n >= 64 {
        out.par_chunks_exact_mut(gbytes).enumerate().for_each(one);
    } else {
        out.chunks_exact_mut(gbytes).enumerate().for_each(one);
    }
    out
}
