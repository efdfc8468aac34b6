//! Plain GGUF metadata values, independent of any GGUF writer: the value kinds that
//! `gguf-py`'s `GGUFWriter` uses for the keys this crate emits (ggml `docs/gguf.md`),
//! and their conversion to the GGUF reader/writer's [`GgufValue`].

use llmq_formats::gguf::{GgufArray, GgufValue};

/// One metadata value, typed as llama.cpp's loader expects it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    ArrU32(Vec<u32>),
    ArrI32(Vec<i32>),
    ArrF32(Vec<f32>),
    ArrBool(Vec<bool>),
    ArrStr(Vec<String>),
}

impl MetaValue {
    /// The same value as the GGUF reader/writer holds it.
    pub fn to_gguf(&self) -> GgufValue {
        match self {
            MetaValue::U32(x) => GgufValue::U32(*x),
            MetaValue::I32(x) => GgufValue::I32(*x),
            MetaValue::F32(x) => GgufValue::F32(*x),
            MetaValue::Bool(x) => GgufValue::Bool(*x),
            MetaValue::Str(x) => GgufValue::String(x.clone()),
            MetaValue::ArrU32(x) => GgufValue::Array(GgufArray::U32(x.clone())),
            MetaValue::ArrI32(x) => GgufValue::Array(GgufArray::I32(x.clone())),
            MetaValue::ArrF32(x) => GgufValue::Array(GgufArray::F32(x.clone())),
            MetaValue::ArrBool(x) => GgufValue::Array(GgufArray::Bool(x.clone())),
            MetaValue::ArrStr(x) => GgufValue::Array(GgufArray::String(x.clone())),
        }
    }
}

/// An ordered list of metadata key/value pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetaList(pub Vec<(String, MetaValue)>);

impl MetaList {
    /// Set `key`, replacing an earlier value in place (as `GGUFWriter` overwrites duplicates).
    pub fn set(&mut self, key: impl Into<String>, value: MetaValue) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Append all pairs of `other` (replacing duplicates).
    pub fn extend(&mut self, other: MetaList) {
        for (k, v) in other.0 {
            self.set(k, v);
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// The pairs, in order, with GGUF values ([`MetaValue::to_gguf`]).
    pub fn to_gguf(&self) -> Vec<(String, GgufValue)> {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), v.to_gguf()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_in_place() {
        let mut m = MetaList::default();
        m.set("a", MetaValue::U32(1));
        m.set("b", MetaValue::Bool(true));
        m.set("a", MetaValue::U32(2));
        assert_eq!(m.len(), 2);
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(m.get("a"), Some(&MetaValue::U32(2)));
        assert_eq!(m.get("c"), None);
    }

    #[test]
    fn converts_to_gguf_values_in_order() {
        let mut m = MetaList::default();
        m.set("n", MetaValue::U32(7));
        m.set("name", MetaValue::Str("x".into()));
        m.set("ids", MetaValue::ArrI32(vec![-1, 2]));
        let g = m.to_gguf();
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].0, "n");
        assert!(matches!(g[0].1, GgufValue::U32(7)));
        assert!(matches!(&g[1].1, GgufValue::String(s) if s == "x"));
        assert!(matches!(&g[2].1, GgufValue::Array(GgufArray::I32(v)) if v == &[-1, 2]));
    }
}
