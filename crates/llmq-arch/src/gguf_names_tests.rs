//! Tests of `gguf_names`: the converter's Q/K permutation, MLA's kv_b split, unknown tensors.

use super::*;

#[test]
fn permute_undoes_rotate_half() {
    // A head of dim 8 in HF rotate-half order pairs element i with i + 4. After the
    // permutation, pairs must sit side by side: rows (2j, 2j+1) = HF rows (j, j + 4).
    let (n_head, hd, cols) = (3, 8, 2);
    let rows = n_head * hd;
    let src: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
    let out = permute_qk(&src, rows, cols, n_head);
    for h in 0..n_head {
        for j in 0..hd / 2 {
            for c in 0..cols {
                assert_eq!(
                    out[(h * hd + 2 * j) * cols + c],
                    src[(h * hd + j) * cols + c]
                );
                assert_eq!(
                    out[(h * hd + 2 * j + 1) * cols + c],
                    src[(h * hd + j + hd / 2) * cols + c]
                );
            }
        }
    }
    // Rotating an interleaved pair with angle t equals rotate-half on the HF layout.
    let q_hf = [1.0f32, 2.0, 3.0, 4.0];
    let q_gg = permute_qk(&q_hf, 4, 1, 1);
    assert_eq!(q_gg, vec![1.0, 3.0, 2.0, 4.0]);
}

#[test]
fn kv_b_split_matches_view_split_transpose() {
    let (n_head, nope, v_dim, lora) = (2, 2, 3, 4);
    let rows = n_head * (nope + v_dim);
    let src: Vec<f32> = (0..rows * lora).map(|x| x as f32).collect();
    let mk = |t: Transform, ne: Vec<usize>| GgufTensorSpec {
        gguf_name: "x".into(),
        role: TensorRole::AttnKB,
        layer: Some(0),
        sources: vec!["kv".into()],
        source_shapes: vec![vec![rows, lora]],
        shape_ne: ne,
        transform: t,
    };
    let k = apply_transform(
        &mk(
            Transform::KvBSplitK {
                n_head,
                nope,
                v_dim,
            },
            vec![nope, lora, n_head],
        ),
        std::slice::from_ref(&src),
    )
    .unwrap();
    let v = apply_transform(
        &mk(
            Transform::KvBSplitV {
                n_head,
                nope,
                v_dim,
            },
            vec![lora, v_dim, n_head],
        ),
        std::slice::from_ref(&src),
    )
    .unwrap();
    // k_b[h][l][d] = kv[h*(nope+v) + d][l]
    for h in 0..n_head {
        for l in 0..lora {
            for d in 0..nope {
                assert_eq!(
                    k[(h * lora + l) * nope + d],
                    src[(h * (nope + v_dim) + d) * lora + l]
                );
            }
        }
        for r in 0..v_dim {
            for l in 0..lora {
                assert_eq!(
                    v[(h * v_dim + r) * lora + l],
                    src[(h * (nope + v_dim) + nope + r) * lora + l]
                );
            }
        }
    }
}

#[test]
fn unknown_tensor_is_an_error() {
    let cfg = ArchConfig::from_json_str(
        r#"{"architectures":["LlamaForCausalLM"],"hidden_size":8,"num_hidden_layers":1,
        "num_attention_heads":2,"vocab_size":4,"intermediate_size":8}"#,
    )
    .unwrap();
    let t = vec![
        ("model.embed_tokens.weight".to_string(), vec![4, 8]),
        ("model.layers.0.self_attn.rope_scale".to_string(), vec![8]),
    ];
    let e = gguf_plan(&cfg, &t).unwrap_err();
    assert!(e.to_string().contains("rope_scale"), "{e}");
}
