//! Plain GGUF metadata values, independent of any GGUF writer: the value kinds that
//! `gguf-py`'s `GGUFWriter` uses for the keys this crate emits (ggml `docs/gguf.md`).

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
}
