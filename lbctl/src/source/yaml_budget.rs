//! A guard against YAML that is small on disk and huge in memory: many aliases to one anchor
//! expand to millions of nodes (serde_yaml's own alias limit does not catch every shape). Each
//! document is walked once, aliases expanded, counting nodes against a budget proportional to
//! the text, before it is deserialized for real.
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// Nodes a document of `text_len` bytes may expand to: far above any real manifest (the quote
/// example uses ~500 nodes per 10 KiB), far below what exhausts memory.
pub fn budget_for(text_len: usize) -> usize {
    1_000_000usize.max(text_len.saturating_mul(8))
}

/// Walks one document, failing once it has more than `budget` nodes.
pub struct NodeBudget<'a>(pub &'a mut usize);

impl NodeBudget<'_> {
    fn spend<E: de::Error>(&mut self) -> Result<(), E> {
        *self.0 = self.0.checked_sub(1).ok_or_else(|| {
            E::custom("the document expands to too many nodes (aliases); refused")
        })?;
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for NodeBudget<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeBudget<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(mut self, _: bool) -> Result<(), E> {
        self.spend()
    }
    fn visit_i64<E: de::Error>(mut self, _: i64) -> Result<(), E> {
        self.spend()
    }
    fn visit_u64<E: de::Error>(mut self, _: u64) -> Result<(), E> {
        self.spend()
    }
    fn visit_f64<E: de::Error>(mut self, _: f64) -> Result<(), E> {
        self.spend()
    }
    fn visit_str<E: de::Error>(mut self, _: &str) -> Result<(), E> {
        self.spend()
    }
    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.spend()
    }
    fn visit_none<E: de::Error>(mut self) -> Result<(), E> {
        self.spend()
    }
    fn visit_some<D: Deserializer<'de>>(mut self, d: D) -> Result<(), D::Error> {
        self.spend()?;
        NodeBudget(self.0).deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(mut self, d: D) -> Result<(), D::Error> {
        self.spend()?;
        NodeBudget(self.0).deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.spend()?;
        while seq.next_element_seed(NodeBudget(&mut *self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.spend()?;
        while map.next_key_seed(NodeBudget(&mut *self.0))?.is_some() {
            map.next_value_seed(NodeBudget(&mut *self.0))?;
        }
        Ok(())
    }
    fn visit_enum<A: EnumAccess<'de>>(mut self, e: A) -> Result<(), A::Error> {
        self.spend()?;
        let ((), variant) = e.variant_seed(NodeBudget(&mut *self.0))?;
        variant.newtype_variant_seed(NodeBudget(&mut *self.0))
    }
}

/// Flow collections (`[`, `{`) nested deeper than this are refused before parsing: libyaml
/// spends quadratic time on deep nesting before serde_yaml's own depth limit (128) applies.
/// A raw count, blind to quotes and comments: no real manifest nests anywhere near this deep.
pub const MAX_FLOW_DEPTH: usize = 1000;

/// The 1-based line where flow nesting first exceeds [`MAX_FLOW_DEPTH`], if it does.
pub fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut line = 1;
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => line += 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(text: &str) -> Result<(), serde_yaml::Error> {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let mut budget = budget_for(text.len());
            NodeBudget(&mut budget).deserialize(doc)?;
        }
        Ok(())
    }

    #[test]
    fn many_aliases_to_one_anchor_are_refused() {
        let n = 4000;
        let text = format!("a: &a [{}]\nb: [{}]\n", "1,".repeat(n), "*a,".repeat(n));
        let err = walk(&text).unwrap_err().to_string();
        assert!(err.contains("too many nodes"), "{err}");
    }

    #[test]
    fn flow_depth_is_bounded_cheaply() {
        let deep = format!("a: {}{}\n", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(too_deep(&deep), Some(1));
        let ok = format!("a: {}{}\nb: [{{x: 1}}]\n", "[".repeat(50), "]".repeat(50));
        assert_eq!(too_deep(&ok), None);
    }

    #[test]
    fn ordinary_anchors_pass() {
        walk("x: &x {a: 1, b: [1, 2]}\ny: *x\nz: [*x, *x]\n").unwrap();
    }
}
