//! A YAML document as an ordered tree, for rewriting Kubernetes manifests:
//! every mapping keeps its keys in the order they were written, and every
//! value its type (a quoted `"8080"` stays a string, `8080` a number), so a
//! document written back differs from the one read only where it was
//! edited. Comments are not kept (the parser does not report them).
//!
//! Parsing and writing are serde-saphyr's; this module is the tree between.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// One YAML node.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// An empty mapping.
    pub fn map() -> Node {
        Node::Map(Vec::new())
    }

    /// A string node.
    pub fn str(s: impl Into<String>) -> Node {
        Node::Str(s.into())
    }

    /// A mapping of string keys, in this order.
    pub fn map_of<const N: usize>(entries: [(&str, Node); N]) -> Node {
        Node::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Node::str(k), v))
                .collect(),
        )
    }

    /// A sequence of strings.
    pub fn strs(items: &[&str]) -> Node {
        Node::Seq(items.iter().map(|s| Node::str(*s)).collect())
    }

    /// What kind of node this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Int(_) | Node::UInt(_) => "an integer",
            Node::Float(_) => "a number",
            Node::Str(_) => "a string",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }

    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value under `key` of a mapping, to change it.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Map(entries) => entries
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string under `key` of a mapping.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Node::as_str)
    }

    /// The string this node is.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items of a sequence (none for anything else).
    pub fn items(&self) -> &[Node] {
        match self {
            Node::Seq(items) => items,
            _ => &[],
        }
    }

    /// Sets `key` of a mapping to `value`: in place when the key is there,
    /// else appended. Does nothing to a node that is not a mapping.
    pub fn set(&mut self, key: &str, value: Node) {
        if let Some(slot) = self.get_mut(key) {
            *slot = value;
        } else if let Node::Map(entries) = self {
            entries.push((Node::str(key), value));
        }
    }

    /// The value under `key` of a mapping, created as `empty` (appended)
    /// when missing or null; `created` tells which. `None` when this node
    /// is not a mapping.
    pub fn entry(&mut self, key: &str, empty: Node, created: &mut bool) -> Option<&mut Node> {
        if !matches!(self, Node::Map(_)) {
            return None;
        }
        *created = matches!(self.get(key), None | Some(Node::Null));
        if *created {
            self.set(key, empty);
        }
        self.get_mut(key)
    }

    /// Takes `key` out of a mapping.
    pub fn remove(&mut self, key: &str) -> Option<Node> {
        let Node::Map(entries) = self else {
            return None;
        };
        let at = entries.iter().position(|(k, _)| k.as_str() == Some(key))?;
        Some(entries.remove(at).1)
    }

    /// The items of the list under `key` (none when absent).
    pub fn items_of(&self, key: &str) -> &[Node] {
        self.get(key).map_or(&[], Node::items)
    }

    /// An empty mapping or sequence.
    pub fn is_empty(&self) -> bool {
        match self {
            Node::Map(entries) => entries.is_empty(),
            Node::Seq(items) => items.is_empty(),
            _ => false,
        }
    }
}

/// Where a YAML text is not YAML.
#[derive(Debug)]
pub struct YamlError {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// The documents of a YAML stream; empty documents (a stray `---`) are
/// dropped. Integers written with a leading zero are octal, as in YAML 1.1,
/// which Kubernetes reads (`defaultMode: 0644`).
pub fn parse_stream(text: &str) -> Result<Vec<Node>, YamlError> {
    let options = serde_saphyr::options! { legacy_octal_numbers: true };
    let docs: Vec<Node> = serde_saphyr::from_multiple_with_options(text, options).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        YamlError {
            line,
            column,
            message: e.without_snippet().to_string(),
        }
    })?;
    Ok(docs.into_iter().filter(|d| *d != Node::Null).collect())
}

/// The documents as one YAML stream, separated by `---`, lists indented
/// under their key as `kubectl` writes them.
pub fn to_stream(docs: &[Node]) -> anyhow::Result<String> {
    let options = serde_saphyr::ser_options! {
        indent_step: 2,
        compact_list_indent: false,
    };
    Ok(serde_saphyr::to_string_multiple_with_options(
        docs, options,
    )?)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Node::Int(i),
            Err(_) => Node::UInt(v),
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry()? {
            entries.push((k, v));
        }
        Ok(Node::Map(entries))
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Int(i) => s.serialize_i64(*i),
            Node::UInt(u) => s.serialize_u64(*u),
            Node::Float(f) => s.serialize_f64(*f),
            Node::Str(v) => s.serialize_str(v),
            Node::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_types_and_block_text_survive_a_round_trip() {
        let text = "\
kind: Deployment
zeta: 1
alpha:
  port: \"8080\"
  date: \"2024-01-01\"
  on: \"yes\"
  mode: 0644
  ratio: 0.5
  script: |
    line one
    line two
  list:
    - b
    - a
";
        let docs = parse_stream(text).expect("parses");
        assert_eq!(docs.len(), 1);
        let alpha = docs[0].get("alpha").expect("alpha");
        assert_eq!(alpha.get_str("port"), Some("8080"));
        assert_eq!(alpha.get("mode"), Some(&Node::Int(0o644)));
        let again = parse_stream(&to_stream(&docs).expect("writes")).expect("parses again");
        assert_eq!(again, docs);
        let out = to_stream(&docs).expect("writes");
        let keys: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with(' '))
            .map(|l| l.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(keys, ["kind", "zeta", "alpha"], "{out}");
        assert!(out.contains("script: |"), "{out}");
        assert!(out.contains("    - b\n    - a\n"), "{out}");
    }

    #[test]
    fn empty_documents_are_dropped_and_errors_are_located() {
        let docs = parse_stream("---\na: 1\n---\n---\nb: 2\n").expect("parses");
        assert_eq!(docs.len(), 2);
        let e = parse_stream("a: 1\nb: [unclosed\n").expect_err("not YAML");
        assert!(e.line >= 2, "{e:?}");
    }

    #[test]
    fn an_alias_bomb_is_refused_not_expanded() {
        let mut text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n".to_owned();
        let mut prev = "a".to_owned();
        for i in 0..12 {
            let name = format!("b{i}");
            let refs = vec![format!("*{prev}"); 10].join(", ");
            text += &format!("{name}: &{name} [{refs}]\n");
            prev = name;
        }
        let e = parse_stream(&text).expect_err("10^13 nodes");
        assert!(e.message.contains("budget"), "{e:?}");
    }

    #[test]
    fn entry_creates_only_what_is_missing() {
        let mut n = Node::map_of([("a", Node::Null)]);
        let mut created = false;
        n.entry("a", Node::map(), &mut created);
        assert!(created);
        n.entry("a", Node::map(), &mut created);
        assert!(!created);
        assert_eq!(n.remove("a"), Some(Node::map()));
        assert!(n.is_empty());
    }
}
