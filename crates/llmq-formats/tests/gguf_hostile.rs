//! The reader on hostile input: every malformed file must give a `GgufError` that says
//! what is wrong and where, never a panic, a huge allocation or an out-of-bounds read.

use llmq_formats::gguf::{
    GgufError, GgufFile, GgufPlan, GgufStreamWriter, GgufValue, PlannedTensor,
};
use llmq_formats::GgmlType;

/// Little-endian byte builder for hand-made files.
#[derive(Default, Clone)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn header(n_tensors: u64, n_kv: u64) -> Bytes {
        Bytes::default()
            .raw(b"GGUF")
            .u32(3)
            .u64(n_tensors)
            .u64(n_kv)
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(self, v: u32) -> Self {
        self.raw(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Self {
        self.raw(&v.to_le_bytes())
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    /// A tensor info: name, dims, type id, offset.
    fn tensor(self, name: &str, ne: &[u64], type_id: u32, offset: u64) -> Self {
        let mut b = self.str(name).u32(ne.len() as u32);
        for d in ne {
            b = b.u64(*d);
        }
        b.u32(type_id).u64(offset)
    }
    /// Zero padding to `align`, then `n` data bytes.
    fn data(mut self, align: usize, n: usize) -> Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self.0.extend((0..n).map(|i| i as u8));
        self
    }
    fn parse(&self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.0.clone())
    }
}

fn err(b: &Bytes) -> (GgufError, String) {
    let e = b.parse().expect_err("hostile input must be rejected");
    let msg = e.to_string();
    eprintln!("rejected: {msg}");
    (e, msg)
}

#[test]
fn well_formed_hand_made_file_parses() {
    let b = Bytes::header(2, 1)
        .str("general.architecture")
        .u32(8)
        .str("llama")
        .tensor("a", &[4], 0, 0)
        .tensor("b", &[32, 2], 8, 32)
        .data(32, 32 + 68);
    let f = b.parse().unwrap();
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.tensor("b").unwrap().n_bytes, 68);
    assert_eq!(
        f.tensor_data("a").unwrap(),
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    );
    // Version 2 has the same layout and is accepted.
    let mut v2 = b.clone();
    v2.0[4] = 2;
    assert_eq!(v2.parse().unwrap().version(), 2);
}

#[test]
fn magic_and_version() {
    assert!(matches!(
        err(&Bytes::default()).0,
        GgufError::Truncated { offset: 0, .. }
    ));
    assert!(matches!(
        err(&Bytes::default().raw(b"GGML\x03\0\0\0")).0,
        GgufError::BadMagic { .. }
    ));
    let version = |v: u32| err(&Bytes::default().raw(b"GGUF").u32(v).u64(0).u64(0));
    let (e, msg) = version(1);
    assert!(matches!(
        e,
        GgufError::UnsupportedVersion { version: 1, .. }
    ));
    assert!(msg.contains("v1"), "{msg}");
    assert!(version(0x0300_0000).1.contains("big-endian"));
    assert!(version(4).1.contains("newer"));
    assert!(version(0).1.contains("version 0"));
    // Header cut short.
    let (e, msg) = err(&Bytes::default().raw(b"GGUF").u32(3).u32(0));
    assert!(matches!(e, GgufError::Truncated { offset: 8, .. }), "{msg}");
}

#[test]
fn lying_lengths_are_checked_before_allocating() {
    // Key length 2^60.
    let (e, msg) = err(&Bytes::header(0, 1).u64(1 << 60).raw(b"abc"));
    assert!(
        matches!(e, GgufError::Truncated { offset: 32, needed, available: 3, .. } if needed == 1 << 60),
        "{msg}"
    );
    // String value length 2^60.
    let (e, msg) = err(&Bytes::header(0, 1).str("k").u32(8).u64(1 << 60));
    assert!(
        matches!(e, GgufError::Truncated { .. }) && msg.contains("'k'"),
        "{msg}"
    );
    // Array of 2^60 u32 / 2^62 u64 (byte count overflows) / 2^60 strings.
    for (elem, count) in [
        (4u32, 1u64 << 60),
        (10, 1 << 62),
        (8, 1 << 60),
        (9, u64::MAX),
    ] {
        let (e, msg) = err(&Bytes::header(0, 1)
            .str("arr")
            .u32(9)
            .u32(elem)
            .u64(count)
            .u64(0));
        assert!(matches!(e, GgufError::Truncated { .. }), "{msg}");
        assert!(msg.contains(&format!("array of {count}")), "{msg}");
    }
    // Counts of KVs and tensors far beyond the file.
    assert!(matches!(
        err(&Bytes::header(0, u64::MAX)).0,
        GgufError::Truncated { offset: 24, .. }
    ));
    assert!(matches!(
        err(&Bytes::header(u64::MAX, 0)).0,
        GgufError::Truncated { offset: 24, .. }
    ));
}

#[test]
fn bad_values() {
    let (e, msg) = err(&Bytes::header(0, 1).str("k").u32(13).u32(0));
    assert!(
        matches!(
            e,
            GgufError::UnknownValueType {
                type_id: 13,
                offset: 33,
                ..
            }
        ),
        "{msg}"
    );
    let (e, _) = err(&Bytes::header(0, 1).str("k").u32(9).u32(99).u64(0));
    assert!(matches!(e, GgufError::UnknownValueType { type_id: 99, .. }));
    let (e, msg) = err(&Bytes::header(0, 1).str("k").u32(7).raw(&[2]));
    assert!(
        matches!(e, GgufError::Invalid { offset: 37, .. }) && msg.contains("bool"),
        "{msg}"
    );
    // Non-UTF-8 key and string value, with the offset of the first bad byte.
    let (e, msg) = err(&Bytes::header(0, 1)
        .u64(3)
        .raw(&[b'a', 0xff, b'b'])
        .u32(0)
        .raw(&[0]));
    assert!(
        matches!(e, GgufError::InvalidUtf8 { offset: 33, .. }),
        "{msg}"
    );
    let (e, _) = err(&Bytes::header(0, 1)
        .str("k")
        .u32(8)
        .u64(2)
        .raw(&[0xc3, 0x28]));
    assert!(matches!(e, GgufError::InvalidUtf8 { offset: 45, .. }));
    // Empty and duplicate keys.
    assert!(err(&Bytes::header(0, 1).str("").u32(0).raw(&[0]))
        .1
        .contains("empty key"));
    let (e, _) = err(&Bytes::header(0, 2)
        .str("k")
        .u32(0)
        .raw(&[0])
        .str("k")
        .u32(0)
        .raw(&[1]));
    assert!(matches!(e, GgufError::DuplicateKey { ref key, offset: 38 } if key == "k"));
    // general.alignment of the wrong type or not a power of two.
    let (_, msg) = err(&Bytes::header(0, 1).str("general.alignment").u32(10).u64(32));
    assert!(msg.contains("must be a uint32 but is a uint64"), "{msg}");
    let (_, msg) = err(&Bytes::header(0, 1).str("general.alignment").u32(4).u32(48));
    assert!(msg.contains("not a power of two"), "{msg}");
}

#[test]
fn deeply_nested_arrays_are_bounded() {
    // 10 000 levels of array-of-array: must be rejected, not overflow the stack.
    let mut b = Bytes::header(0, 1).str("deep").u32(9);
    for _ in 0..10_000 {
        b = b.u32(9).u64(1);
    }
    let (_, msg) = err(&b.u32(0).u64(0));
    assert!(msg.contains("nested more than 8"), "{msg}");
    // Moderate nesting is fine.
    let b = Bytes::header(0, 1)
        .str("n")
        .u32(9)
        .u32(9)
        .u64(2)
        .u32(4)
        .u64(1)
        .u32(7)
        .u32(8)
        .u64(0);
    let f = b.parse().unwrap();
    let nested = f.get("n").and_then(GgufValue::as_nested_array).unwrap();
    assert_eq!(nested[0].len(), 1);
    assert!(nested[1].is_empty());
}

#[test]
fn bad_tensor_infos() {
    let one = |name: &str, ne: &[u64], ty: u32, off: u64, data: usize| {
        err(&Bytes::header(1, 0).tensor(name, ne, ty, off).data(32, data))
    };
    let (e, msg) = one("w", &[32], 4, 0, 128);
    assert!(
        matches!(e, GgufError::UnknownGgmlType { type_id: 4, ref tensor, offset: 45 } if tensor == "w"),
        "{msg}"
    );
    assert!(
        msg.contains("unknown ggml type id 4") && msg.contains("'w'"),
        "{msg}"
    );
    assert!(one("w", &[1, 1, 1, 1, 1], 0, 0, 4)
        .1
        .contains("5 dimensions"));
    assert!(one("w", &[1 << 32, 1 << 32], 0, 0, 4)
        .1
        .contains("i64::MAX"));
    assert!(one("w", &[u64::MAX], 0, 0, 4).1.contains("i64::MAX"));
    assert!(one("w", &[31], 8, 0, 64)
        .1
        .contains("not a multiple of the Q8_0 block size 32"));
    let (_, msg) = one("w", &[4], 0, 4, 64);
    assert!(msg.contains("not a multiple of the alignment 32"), "{msg}");
    let (_, msg) = one("w", &[17], 0, 0, 64);
    assert!(msg.contains("runs past the end"), "{msg}");
    assert!(one("w", &[4], 0, u64::MAX - 31, 64)
        .1
        .contains("runs past the end"));
    let (_, msg) = one(&"n".repeat(64), &[4], 0, 0, 16);
    assert!(msg.contains("GGML_MAX_NAME"), "{msg}");
    // Padding before the data section missing entirely.
    let (e, _) = err(&Bytes::header(1, 0).tensor("w", &[0], 0, 0));
    assert!(matches!(e, GgufError::Truncated { .. }));

    let two = |a_off: u64, b_name: &str| {
        Bytes::header(2, 0)
            .tensor("a", &[16], 0, a_off)
            .tensor(b_name, &[16], 0, 32)
            .data(32, 256)
    };
    let (e, _) = err(&two(0, "a"));
    assert!(matches!(e, GgufError::DuplicateTensor { ref name, .. } if name == "a"));
    let (_, msg) = err(&two(0, "b")); // a: 0..64, b: 32..96
    assert!(msg.contains("overlaps"), "{msg}");
    assert!(two(96, "b").parse().is_ok()); // a: 96..160, b: 32..96
}

/// splitmix64: a tiny seeded generator so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A valid file with every value type, written by our writer.
fn valid_file() -> (Vec<u8>, u64) {
    let plan = GgufPlan::new()
        .with_kv("general.architecture", "llama")
        .with_kv("a.u8", 1u8)
        .with_kv("a.i16", -2i16)
        .with_kv("a.f64", 0.5f64)
        .with_kv("a.bool", true)
        .with_kv("a.strs", GgufValue::string_array(["x", "yz", ""]))
        .with_kv("a.i32s", vec![1i32, -1])
        .with_kv("a.f32s", vec![1.5f32])
        .with_kv("a.bools", vec![false, true])
        .with_tensor(PlannedTensor::new("t0", vec![8, 2], GgmlType::F16))
        .with_tensor(PlannedTensor::new("t1", vec![32], GgmlType::Q8_0))
        .with_tensor(PlannedTensor::new("t2", vec![3], GgmlType::F32));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.gguf");
    let w = GgufStreamWriter::create(&path, &plan).unwrap();
    let layout = plan.layout().unwrap();
    for i in 0..3 {
        w.write_tensor(i, &vec![0x5a; layout.tensor_size(i) as usize])
            .unwrap();
    }
    w.finish().unwrap();
    let last_end = layout.tensor_file_offset(2) + layout.tensor_size(2);
    (std::fs::read(&path).unwrap(), last_end)
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let (bytes, last_tensor_end) = valid_file();
    assert!(GgufFile::from_bytes(bytes.clone()).is_ok());
    for len in 0..bytes.len() {
        let cut = bytes[..len].to_vec();
        let result = std::panic::catch_unwind(|| GgufFile::from_bytes(cut).map(|_| ()));
        let result = result.unwrap_or_else(|_| panic!("panic on a file truncated to {len} bytes"));
        // Only the padding after the last tensor may be cut off.
        assert_eq!(
            result.is_ok(),
            len as u64 >= last_tensor_end,
            "truncated to {len}: {result:?}"
        );
    }
}

#[test]
fn random_mutations_never_panic() {
    let (bytes, _) = valid_file();
    let header_len = 400.min(bytes.len());
    let mut rng = Rng(0x6767_7566);
    let (mut rejected, mut accepted) = (0, 0);
    for case in 0..6000 {
        let mut m = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            // Mostly the header and tables, where the structure is.
            let at = if rng.below(8) == 0 {
                rng.below(m.len())
            } else {
                rng.below(header_len.min(m.len()))
            };
            match rng.below(4) {
                0 => m[at] = rng.next() as u8,
                1 => m[at] ^= 1 << rng.below(8),
                2 => {
                    // A plausible-looking huge length or count.
                    let v = [u64::MAX, 1 << 60, 1 << 32, 0, 65, 5][rng.below(6)].to_le_bytes();
                    let end = (at + 8).min(m.len());
                    m[at..end].copy_from_slice(&v[..end - at]);
                }
                _ => {
                    let len = rng.below(m.len());
                    m.truncate(len.max(1));
                }
            }
        }
        match std::panic::catch_unwind(|| GgufFile::from_bytes(m).map(|f| f.tensors().len())) {
            Ok(Ok(_)) => accepted += 1,
            Ok(Err(e)) => {
                assert!(!e.to_string().is_empty());
                rejected += 1
            }
            Err(_) => panic!("panic on mutation case {case}"),
        }
    }
    assert_eq!(accepted + rejected, 6000);
    assert!(
        rejected > 3000,
        "most mutations should be caught: {rejected}"
    );
}
