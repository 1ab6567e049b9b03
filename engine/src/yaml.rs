//! A YAML loader that keeps where every value came from.
//!
//! `yaml-rust2`'s event parser gives each event a line and column; this module
//! builds a small tree of [`Node`]s from those events so that any later error
//! (an unknown parameter, a bad type deep inside `model:`) can point at its
//! line and column. It also rejects what a manifest must not contain:
//! duplicate keys, non-scalar keys, and aliases that expand beyond
//! [`MAX_NODES`] (the "billion laughs" bomb).

use std::collections::HashMap;

use serde_json::Value;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Upper bound on the number of nodes a document may expand to, aliases included.
pub const MAX_NODES: usize = 100_000;

/// Upper bound on how deeply lists and mappings may nest (deeper documents
/// would overflow the stack of the code that walks them).
pub const MAX_DEPTH: usize = 200;

/// A position in a source file (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

impl Span {
    fn from_marker(mark: Marker) -> Self {
        Span {
            line: mark.line(),
            col: mark.col() + 1,
        }
    }
}

/// A YAML value with its position.
#[derive(Debug, Clone)]
pub struct Node {
    /// Where the value starts.
    pub span: Span,
    /// The value.
    pub kind: NodeKind,
    /// Number of nodes in this subtree (itself included), to bound alias expansion.
    size: usize,
}

/// The shape of a [`Node`].
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A scalar: its text, and whether it was quoted (a quoted scalar is always a string).
    Scalar {
        /// The scalar's text.
        text: String,
        /// Quoted or block scalars are strings; plain ones may be numbers, booleans or null.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order, with string keys.
    Map(Vec<(String, Node, Node)>),
}

/// A YAML syntax or structure error, with its position.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    /// Where the problem is.
    pub span: Span,
    /// What is wrong.
    pub message: String,
}

impl Node {
    /// An empty mapping at `span` (a stage written as `name:` with nothing under it).
    pub fn empty_map(span: Span) -> Node {
        Node {
            span,
            kind: NodeKind::Map(Vec::new()),
            size: 1,
        }
    }

    /// The mapping's entries, or `None` when this is not a mapping.
    pub fn as_map(&self) -> Option<&[(String, Node, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The entry `key` of a mapping: (key node, value node).
    pub fn get(&self, key: &str) -> Option<(&Node, &Node)> {
        self.as_map()?
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, k, v)| (k, v))
    }

    /// The scalar's text when it is a string (quoted, or plain but not a number, bool or null).
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, plain } if !*plain || resolve_plain(text).is_string() => {
                Some(text)
            }
            _ => None,
        }
    }

    /// A short name for the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        // Only a scalar is resolved: converting a whole mapping to JSON to name its type is waste.
        match &self.kind {
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
            NodeKind::Scalar { plain: false, .. } => "a string",
            NodeKind::Scalar { text, .. } => match resolve_plain(text) {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                _ => "a string",
            },
        }
    }

    /// The span of the value found by following `path` (mapping keys or
    /// sequence indices); the deepest node reached when the path runs out.
    pub fn locate(&self, path: &[String]) -> Span {
        let mut node = self;
        for segment in path {
            let next = match &node.kind {
                NodeKind::Map(entries) => entries
                    .iter()
                    .find(|(k, _, _)| k == segment)
                    .map(|(_, _, v)| v),
                NodeKind::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                NodeKind::Scalar { .. } => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.span
    }

    /// The span of the key `path.last()` inside the mapping at `path[..len-1]`,
    /// falling back to [`Node::locate`]. Used to point at an unknown key itself.
    pub fn locate_key(&self, path: &[String]) -> Span {
        if let Some((last, parent)) = path.split_last() {
            let mut node = self;
            for segment in parent {
                match node.get(segment) {
                    Some((_, v)) => node = v,
                    None => return self.locate(path),
                }
            }
            if let Some((k, _)) = node.get(last) {
                return k.span;
            }
        }
        self.locate(path)
    }

    /// Converts to JSON using YAML 1.2's core schema for plain scalars.
    pub fn to_json(&self) -> Value {
        match &self.kind {
            NodeKind::Scalar { text, plain } => {
                if *plain {
                    resolve_plain(text)
                } else {
                    Value::String(text.clone())
                }
            }
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, _, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = text.parse::<i64>()
    {
        return Value::from(i);
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::from(i);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::from(i);
    }
    let looks_float = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_float
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

/// Parses one YAML document. An empty document is an error (a manifest needs content).
pub fn parse(source: &str) -> Result<Node, YamlError> {
    let mut parser = Parser::new_from_str(source);
    let mut builder = Builder::default();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            span: Span::from_marker(*e.marker()),
            message: e.info().to_string(),
        })?;
        if let Event::StreamEnd = event {
            break;
        }
        builder.event(event, mark)?;
    }
    if builder.documents > 1 {
        return Err(YamlError {
            span: builder.second_document.unwrap_or_default(),
            message: "a manifest holds one YAML document, but this file has several (`---`)".into(),
        });
    }
    builder.root.ok_or_else(|| YamlError {
        span: Span { line: 1, col: 1 },
        message: "the file is empty".into(),
    })
}

/// A container being filled while its events arrive.
#[derive(Debug)]
enum Open {
    Seq {
        span: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        span: Span,
        anchor: usize,
        entries: Vec<(String, Node, Node)>,
        pending_key: Option<Node>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    total: usize,
    documents: usize,
    second_document: Option<Span>,
}

impl Builder {
    fn event(&mut self, event: Event, mark: Marker) -> Result<(), YamlError> {
        let span = Span::from_marker(mark);
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.second_document = Some(span);
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = matches!(style, TScalarStyle::Plain);
                let node = Node {
                    span,
                    kind: NodeKind::Scalar { text, plain },
                    size: 1,
                };
                self.finish(node, anchor, 1)?;
            }
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id) else {
                    return Err(YamlError {
                        span,
                        message: "alias to an unknown anchor".into(),
                    });
                };
                let mut node = target.clone();
                node.span = span;
                let size = node.size;
                self.finish(node, 0, size)?;
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if self.stack.len() >= MAX_DEPTH => {
                return Err(too_deep(span));
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq {
                span,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Open::Map {
                span,
                anchor,
                entries: Vec::new(),
                pending_key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Open::Seq {
                        span,
                        anchor,
                        items,
                    }) => (
                        Node {
                            span,
                            size: 1 + items.iter().map(|n| n.size).sum::<usize>(),
                            kind: NodeKind::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Open::Map {
                        span,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            span,
                            size: 1 + entries
                                .iter()
                                .map(|(_, k, v)| k.size + v.size)
                                .sum::<usize>(),
                            kind: NodeKind::Map(entries),
                        },
                        anchor,
                    ),
                    None => return Ok(()),
                };
                self.finish(node.0, node.1, 1)?;
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(())
    }

    /// Places a completed node into its parent (or as the root). `added` is
    /// how many values it adds to the document: 1 for a scalar or a container
    /// (its contents were counted as they arrived), the whole subtree for an alias.
    fn finish(&mut self, node: Node, anchor: usize, added: usize) -> Result<(), YamlError> {
        self.total += added;
        if self.total > MAX_NODES {
            return Err(YamlError {
                span: node.span,
                message: format!(
                    "the document expands to more than {MAX_NODES} values (an alias bomb?)"
                ),
            });
        }
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => {
                    let NodeKind::Scalar { text, .. } = &node.kind else {
                        return Err(YamlError {
                            span: node.span,
                            message: "mapping keys must be plain strings, not lists or mappings"
                                .into(),
                        });
                    };
                    if let Some((_, first, _)) = entries.iter().find(|(k, _, _)| k == text) {
                        return Err(YamlError {
                            span: node.span,
                            message: format!(
                                "duplicate key `{text}` (first defined at line {})",
                                first.span.line
                            ),
                        });
                    }
                    *pending_key = Some(node);
                }
                Some(key) => {
                    let NodeKind::Scalar { text, .. } = &key.kind else {
                        unreachable!("non-scalar keys are rejected when they arrive")
                    };
                    entries.push((text.clone(), key.clone(), node));
                }
            },
        }
        Ok(())
    }
}

fn too_deep(span: Span) -> YamlError {
    YamlError {
        span,
        message: format!("lists and mappings nest more than {MAX_DEPTH} levels deep"),
    }
}

/// Parses a machine-written YAML document, such as a lockfile, straight into
/// JSON. Unlike [`parse`] it keeps no positions, and it refuses aliases
/// (pipe never writes them), so its cost is linear in the input and it
/// needs no node budget however large the file.
pub fn parse_data(source: &str) -> Result<Value, YamlError> {
    enum Open {
        Seq(Vec<Value>),
        Map(serde_json::Map<String, Value>, Option<String>),
    }
    let mut parser = Parser::new_from_str(source);
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Value> = None;
    let mut documents = 0;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            span: Span::from_marker(*e.marker()),
            message: e.info().to_string(),
        })?;
        let span = Span::from_marker(mark);
        let value = match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        span,
                        message: "the file holds several YAML documents (`---`)".into(),
                    });
                }
                continue;
            }
            Event::Alias(_) => {
                return Err(YamlError {
                    span,
                    message: "aliases (`*name`) are not used in this file".into(),
                });
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if stack.len() >= MAX_DEPTH => {
                return Err(too_deep(span));
            }
            Event::SequenceStart(..) => {
                stack.push(Open::Seq(Vec::new()));
                continue;
            }
            Event::MappingStart(..) => {
                stack.push(Open::Map(serde_json::Map::new(), None));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Open::Seq(items)) => Value::Array(items),
                Some(Open::Map(map, _)) => Value::Object(map),
                None => continue,
            },
            Event::Scalar(text, style, ..) => {
                if let Some(Open::Map(_, pending @ None)) = stack.last_mut() {
                    *pending = Some(text);
                    continue;
                }
                if matches!(style, TScalarStyle::Plain) {
                    resolve_plain(&text)
                } else {
                    Value::String(text)
                }
            }
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => continue,
        };
        match stack.last_mut() {
            None => root = Some(value),
            Some(Open::Seq(items)) => items.push(value),
            Some(Open::Map(map, pending)) => match pending.take() {
                Some(key) => {
                    if map.insert(key.clone(), value).is_some() {
                        return Err(YamlError {
                            span,
                            message: format!("duplicate key `{key}`"),
                        });
                    }
                }
                None => {
                    return Err(YamlError {
                        span,
                        message: "mapping keys must be plain strings, not lists or mappings".into(),
                    });
                }
            },
        }
    }
    root.ok_or_else(|| YamlError {
        span: Span { line: 1, col: 1 },
        message: "the file is empty".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let node = parse("a: 1\nb:\n  c: x\n").unwrap();
        let span = node.locate(&["b".into(), "c".into()]);
        assert_eq!(span, Span { line: 3, col: 6 });
        assert_eq!(
            node.locate_key(&["b".into(), "c".into()]),
            Span { line: 3, col: 3 }
        );
    }

    #[test]
    fn core_schema_scalars() {
        let node = parse("a: 5.0e-4\nb: '1'\nc: ~\nd: true\ne: 42\nf: 1_0\ng: .5\n").unwrap();
        let json = node.to_json();
        assert_eq!(json["a"], serde_json::json!(0.0005));
        assert_eq!(json["b"], serde_json::json!("1"));
        assert_eq!(json["c"], Value::Null);
        assert_eq!(json["d"], serde_json::json!(true));
        assert_eq!(json["e"], serde_json::json!(42));
        assert_eq!(json["f"], serde_json::json!("1_0"));
        assert_eq!(json["g"], serde_json::json!(0.5));
    }

    #[test]
    fn duplicate_keys_are_rejected_at_the_second() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.span.line, 3);
        assert!(err.message.contains("duplicate key `a`"), "{}", err.message);
    }

    #[test]
    fn alias_bomb_is_bounded() {
        let mut doc = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for name in 'b'..='j' {
            doc.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = name;
        }
        let err = parse(&doc).unwrap_err();
        assert!(err.message.contains("alias bomb"), "{}", err.message);
    }

    #[test]
    fn the_budget_counts_each_value_once() {
        // 30,000 values nested four deep: within the budget, however deep.
        let mut doc = String::from("stages:\n");
        for i in 0..3000 {
            doc.push_str(&format!(
                "  s{i}:\n    deps: [a, b, c, d, e, f]\n    run: x\n"
            ));
        }
        parse(&doc).unwrap();
    }

    #[test]
    fn data_documents_have_no_budget_and_no_aliases() {
        let mut doc = String::from("stages:\n");
        for i in 0..40_000 {
            doc.push_str(&format!("  s{i}: {{a: 1, b: '2', c: [x, y]}}\n"));
        }
        let value = parse_data(&doc).unwrap();
        assert_eq!(value["stages"]["s39999"]["b"], serde_json::json!("2"));
        assert_eq!(value["stages"]["s0"]["a"], serde_json::json!(1));
        let err = parse_data("a: &x [1]\nb: *x\n").unwrap_err();
        assert!(err.message.contains("aliases"), "{}", err.message);
        let deep = "[".repeat(5000);
        assert!(parse_data(&deep).is_err());
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn aliases_expand_within_budget() {
        let node = parse("base: &b {lr: 1}\nother: *b\n").unwrap();
        assert_eq!(node.to_json()["other"]["lr"], serde_json::json!(1));
    }
}
