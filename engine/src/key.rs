//! Stage keys: what makes two runs of a stage the same.
//!
//! A stage key is BLAKE3 over the canonical JSON of one [`KeyRecord`]:
//!
//! | in the key                         | why                                                  |
//! |------------------------------------|------------------------------------------------------|
//! | `kind`, `kind_version`             | a new implementation may write different bytes       |
//! | `params` (canonical, defaults in)  | they change the result                               |
//! | `run` (command stages)             | the command is the stage's code                      |
//! | `inputs`: upstream output hashes   | content, not names or times: early cutoff            |
//! | `inputs`: workspace dep hashes     | `deps:` and files a kind reads (ingest's `source`)   |
//! | `outs` (declared paths)            | where a command writes is part of what it does       |
//!
//! Left out on purpose: the stage's name and description (renaming a stage
//! keeps its cache), settings that do not change results (threads, device,
//! progress; each kind drops them in `Stage::check`), timestamps, the
//! manifest's location, and the pipe version (kinds carry their own version).
//!
//! Canonical JSON: object keys sorted, no whitespace, numbers as serde_json
//! writes them (shortest round-trip form), so `5e-4` and `0.0005` are the same.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hash::Digest;

/// Domain separator, bumped if the record's encoding ever changes.
const KEY_DOMAIN: &str = "pipe stage key v1\n";

/// Everything a stage key is computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    // What the stage is.
    /// The kind.
    pub kind: String,
    /// The kind's implementation version.
    pub kind_version: u32,
    // How it is configured.
    /// Canonical parameters.
    pub params: Value,
    /// The command of a command stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Declared output paths of a command stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outs: Vec<String>,
    // What it reads.
    /// Input name → content hash. Upstream stages appear as `from:<input>`,
    /// workspace files as `dep:<path>`.
    pub inputs: BTreeMap<String, Digest>,
}

impl KeyRecord {
    /// The stage key.
    pub fn key(&self) -> Digest {
        let mut bytes = KEY_DOMAIN.as_bytes().to_vec();
        bytes.extend(
            canonical_json(&serde_json::to_value(self).expect("a key record serializes"))
                .as_bytes(),
        );
        Digest::of(&bytes)
    }
}

/// Canonical JSON text: sorted keys, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Value::from(i),
                // Integral floats written as `3.0` become `3`: one spelling per number.
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
                _ => value.clone(),
            },
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// Why a stage has to run.
#[derive(Debug, Clone, PartialEq)]
pub enum MissReason {
    /// No earlier run of this stage is on record.
    New,
    /// `--force`.
    Forced,
    /// The kind's implementation changed.
    KindVersion {
        /// Recorded version.
        old: u32,
        /// Current version.
        new: u32,
    },
    /// A parameter changed (`name` is a dotted path; `None` means absent).
    ParamChanged {
        /// Dotted parameter path.
        name: String,
        /// Old value.
        old: Option<Value>,
        /// New value.
        new: Option<Value>,
        /// The other parameters that changed, by dotted path.
        also: Vec<String>,
    },
    /// The command changed.
    CommandChanged,
    /// An input's content changed, or an input was added or removed.
    InputChanged {
        /// Input name (`data/raw.csv`, or `from split`).
        input: String,
    },
    /// A declared output was edited or removed by hand and cannot be trusted.
    OutputModified {
        /// The output path.
        path: String,
    },
    /// Same inputs as recorded, but the record is gone from the store.
    NotInCache,
}

impl std::fmt::Display for MissReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<Value>| match v {
            None => "(unset)".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        match self {
            MissReason::New => write!(f, "new stage"),
            MissReason::Forced => write!(f, "forced"),
            MissReason::KindVersion { old, new } => {
                write!(f, "kind implementation changed (v{old} → v{new})")
            }
            MissReason::ParamChanged {
                name,
                old,
                new,
                also,
            } => {
                write!(f, "parameter {name} changed {} → {}", show(old), show(new))?;
                match also.as_slice() {
                    [] => Ok(()),
                    [one] => write!(f, "; {one} too"),
                    more => write!(f, "; {} more: {}", more.len(), more.join(", ")),
                }
            }
            MissReason::CommandChanged => write!(f, "command changed"),
            MissReason::InputChanged { input } => write!(f, "input {input} changed"),
            MissReason::OutputModified { path } => write!(f, "output {path} was modified"),
            MissReason::NotInCache => write!(f, "not in the cache"),
        }
    }
}

/// Explains the difference between the recorded key record and the current one.
pub fn explain(old: &KeyRecord, new: &KeyRecord) -> MissReason {
    if old.kind != new.kind {
        return MissReason::ParamChanged {
            name: "uses".into(),
            old: Some(Value::String(old.kind.clone())),
            new: Some(Value::String(new.kind.clone())),
            also: Vec::new(),
        };
    }
    if old.kind_version != new.kind_version {
        return MissReason::KindVersion {
            old: old.kind_version,
            new: new.kind_version,
        };
    }
    let mut changes = Vec::new();
    diff_params("", &old.params, &new.params, &mut changes);
    if !changes.is_empty() {
        let (name, old, new) = changes.remove(0);
        return MissReason::ParamChanged {
            name,
            old,
            new,
            also: changes.into_iter().map(|(name, ..)| name).collect(),
        };
    }
    if old.run != new.run {
        return MissReason::CommandChanged;
    }
    if old.outs != new.outs {
        return MissReason::ParamChanged {
            name: "outs".into(),
            old: Some(serde_json::json!(old.outs)),
            new: Some(serde_json::json!(new.outs)),
            also: Vec::new(),
        };
    }
    let names: std::collections::BTreeSet<&String> =
        old.inputs.keys().chain(new.inputs.keys()).collect();
    for name in names {
        if old.inputs.get(name) != new.inputs.get(name) {
            let input = match name.split_once(':') {
                Some(("dep", path)) => path.to_string(),
                Some(("from", stage)) => format!("from {stage}"),
                _ => name.clone(),
            };
            return MissReason::InputChanged { input };
        }
    }
    MissReason::NotInCache
}

/// A parameter that changed: its dotted path, old and new value (`None`: absent).
type ParamChange = (String, Option<Value>, Option<Value>);

/// Adds every leaf where `old` and `new` differ to `changes`, in key order (a whole value
/// where one side is not an object).
fn diff_params(prefix: &str, old: &Value, new: &Value, changes: &mut Vec<ParamChange>) {
    if canonical_json(old) == canonical_json(new) {
        return;
    }
    if let (Value::Object(a), Value::Object(b)) = (old, new) {
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match (a.get(k), b.get(k)) {
                (Some(x), Some(y)) => diff_params(&name, x, y, changes),
                (x, y) => changes.push((name, x.cloned(), y.cloned())),
            }
        }
        return;
    }
    let name = if prefix.is_empty() {
        "parameters".into()
    } else {
        prefix.to_string()
    };
    changes.push((name, Some(old.clone()), Some(new.clone())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(params: Value) -> KeyRecord {
        KeyRecord {
            kind: "split".into(),
            kind_version: 1,
            params,
            run: None,
            outs: vec![],
            inputs: BTreeMap::from([("from:ingest".to_string(), Digest::of(b"data"))]),
        }
    }

    #[test]
    fn key_is_pinned() {
        // If this changes, every user's cache is invalidated: bump KEY_DOMAIN on purpose only.
        let key = record(json!({"test": 0.2, "seed": 42})).key();
        assert_eq!(key.to_string(), expected_pinned_key());
    }

    fn expected_pinned_key() -> String {
        // Computed independently of KeyRecord::key: domain + hand-written canonical JSON.
        let input = Digest::of(b"data");
        let text = format!(
            "pipe stage key v1\n{{\"inputs\":{{\"from:ingest\":\"{input}\"}},\"kind\":\"split\",\"kind_version\":1,\"params\":{{\"seed\":42,\"test\":0.2}}}}"
        );
        Digest::of(text.as_bytes()).to_string()
    }

    #[test]
    fn key_ignores_key_order_and_number_spelling() {
        let a = record(json!({"lr": 0.0005, "epochs": 3, "nested": {"b": 1, "a": 2}}));
        let b = record(json!({"nested": {"a": 2, "b": 1}, "epochs": 3.0, "lr": 5e-4}));
        assert_eq!(a.key(), b.key());
    }

    #[test]
    fn key_changes_with_what_matters() {
        let base = record(json!({"seed": 1}));
        let mut other = base.clone();
        other.params = json!({"seed": 2});
        assert_ne!(base.key(), other.key());
        let mut other = base.clone();
        other.kind_version = 2;
        assert_ne!(base.key(), other.key());
        let mut other = base.clone();
        other
            .inputs
            .insert("from:ingest".into(), Digest::of(b"other"));
        assert_ne!(base.key(), other.key());
        let mut other = base.clone();
        other.run = Some("true".into());
        assert_ne!(base.key(), other.key());
    }

    #[test]
    fn explains_the_first_difference() {
        let old = record(json!({"learning_rate": 0.0005}));
        let new = record(json!({"learning_rate": 0.0003}));
        assert_eq!(
            explain(&old, &new).to_string(),
            "parameter learning_rate changed 0.0005 → 0.0003"
        );
        let mut moved = old.clone();
        moved
            .inputs
            .insert("dep:data/raw.csv".into(), Digest::of(b"x"));
        assert_eq!(
            explain(&old, &moved).to_string(),
            "input data/raw.csv changed"
        );
        let nested_old = record(json!({"model": {"config": "tiny"}}));
        let nested_new = record(json!({"model": {"config": "small"}}));
        assert_eq!(
            explain(&nested_old, &nested_new).to_string(),
            "parameter model.config changed tiny → small"
        );
    }

    #[test]
    fn names_every_parameter_that_changed() {
        let old = record(json!({"batch_size": 16, "epochs": 3, "seed": 0, "lr": 1}));
        let two = record(json!({"batch_size": 8, "epochs": 3, "seed": 1, "lr": 1}));
        assert_eq!(
            explain(&old, &two).to_string(),
            "parameter batch_size changed 16 → 8; seed too"
        );
        let three = record(json!({"batch_size": 8, "epochs": 4, "seed": 1}));
        assert_eq!(
            explain(&old, &three).to_string(),
            "parameter batch_size changed 16 → 8; 3 more: epochs, lr, seed"
        );
    }
}
