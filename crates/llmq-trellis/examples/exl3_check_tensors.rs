//! Writes EXL3 linears of every K (1…8) and codebook, with our own decoding of each, for
//! exllamav3 to check on a GPU (`scripts/exl3-check-tensors.py`): `<key>.trellis`, `.suh`, `.svh`,
//! the codebook marker, `.inner_ref` (our decoded tile matrix, fp16, (in, out)) and `.weight_ref`
//! (our full reconstruction, f32, (in, out)).
//! `cargo run --release -p llmq-trellis --example exl3_check_tensors OUT.safetensors`
use half::f16;
use llmq_trellis::decode::{decode_trellis, reconstruct};
use llmq_trellis::quantize::{quantize_linear, Exl3Config};
use llmq_trellis::Codebook;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;

fn bytes<T: Copy>(v: &[T]) -> Vec<u8> {
    let n = std::mem::size_of_val(v);
    // SAFETY: plain-old-data slices (i16, i32, f32, f16) viewed as bytes, little-endian host.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, n) }.to_vec()
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: exl3_check_tensors OUT.safetensors");
    let cases = [
        (1u32, Codebook::Mul1, 128usize, 128usize),
        (2, Codebook::Inst3, 256, 128),
        (3, Codebook::Mcg, 128, 384),
        (4, Codebook::Mul1, 384, 256),
        (5, Codebook::Mul1, 200, 96),
        (6, Codebook::Inst3, 128, 256),
        (7, Codebook::Mcg, 256, 128),
        (8, Codebook::Mul1, 128, 128),
    ];
    let mut store: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut s = 0x9e37_79b9u64;
    for (idx, &(k, cb, in_f, out_f)) in cases.iter().enumerate() {
        let w: Vec<f32> = (0..in_f * out_f)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.05
            })
            .collect();
        let q =
            quantize_linear(&w, out_f, in_f, None, &Exl3Config::new(k, cb, idx as u64)).unwrap();
        let (ip, op) = (q.in_features, q.out_features);
        let inner: Vec<f16> = decode_trellis(&q.trellis, ip, op, k, cb)
            .iter()
            .map(|&x| f16::from_f32(x))
            .collect();
        let full = reconstruct(&q.trellis, &q.suh, &q.svh, k, cb);
        let key = format!("l{idx}");
        store.insert(
            format!("{key}.trellis"),
            (
                Dtype::I16,
                vec![ip / 16, op / 16, 16 * k as usize],
                bytes(&q.trellis),
            ),
        );
        store.insert(format!("{key}.suh"), (Dtype::F16, vec![ip], bytes(&q.suh)));
        store.insert(format!("{key}.svh"), (Dtype::F16, vec![op], bytes(&q.svh)));
        if let Some((name, v)) = cb.marker() {
            store.insert(format!("{key}.{name}"), (Dtype::I32, vec![], bytes(&[v])));
        }
        store.insert(
            format!("{key}.inner_ref"),
            (Dtype::F16, vec![ip, op], bytes(&inner)),
        );
        store.insert(
            format!("{key}.weight_ref"),
            (Dtype::F32, vec![ip, op], bytes(&full)),
        );
        println!(
            "{key}: K={k} {} ({in_f}x{out_f} -> {ip}x{op}) g_scale {:.4}",
            cb.name(),
            q.g_scale
        );
    }
    let views: Vec<(String, TensorView<'_>)> = store
        .iter()
        .map(|(k, (d, sh, b))| (k.clone(), TensorView::new(*d, sh.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, std::path::Path::new(&out)).unwrap();
    println!("wrote {out}");
}
