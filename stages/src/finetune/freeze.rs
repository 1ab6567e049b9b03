//! The entries of `freeze`, the parts of a model that keep their starting weights
//! ([`FreezeEntry`]), as a manifest writes them and as they match parameter names.

use std::fmt;

use pipe_models::gpt_neo::GptNeoForSequenceClassification;
use serde::{Deserialize, Serialize};

/// One entry of `freeze`: a part of the model that keeps its starting weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FreezeEntry {
    /// `embeddings`: the token and position embeddings (`transformer.wte`, `transformer.wpe`).
    Embeddings,
    /// `layers.N` or `layers.A-B`: transformer blocks `A` to `B`, both included
    /// (`transformer.h.A` … `transformer.h.B`).
    Layers(usize, usize),
    /// A module or parameter by its Hugging Face name, such as `transformer.h.3.mlp` or
    /// `transformer.ln_f`: every parameter whose name is it or starts with it and a dot.
    Module(String),
}

impl FreezeEntry {
    /// Whether the parameter called `name` (Hugging Face's name) is in this part.
    pub fn covers(&self, name: &str) -> bool {
        let under = |prefix: &str| {
            name.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        match self {
            FreezeEntry::Embeddings => under("transformer.wte") || under("transformer.wpe"),
            FreezeEntry::Layers(first, last) => {
                (*first..=*last).any(|layer| under(&format!("transformer.h.{layer}")))
            }
            FreezeEntry::Module(module) => under(module),
        }
    }

    /// Parses `layers.N` / `layers.A-B` (the part after `layers.`).
    fn parse_layers(range: &str, text: &str) -> Result<FreezeEntry, String> {
        let number = |s: &str| {
            s.parse::<usize>().map_err(|_| {
                format!("`{text}` is not a layer range: write `layers.N` or `layers.A-B`, such as `layers.0-5`")
            })
        };
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(range)?;
                (n, n)
            }
        };
        if first > last {
            return Err(format!(
                "`{text}` counts down: write the lower layer first, `layers.{last}-{first}`"
            ));
        }
        Ok(FreezeEntry::Layers(first, last))
    }
}

impl TryFrom<String> for FreezeEntry {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed == "embeddings" {
            return Ok(FreezeEntry::Embeddings);
        }
        if let Some(range) = trimmed.strip_prefix("layers.") {
            return FreezeEntry::parse_layers(range, trimmed);
        }
        let head = GptNeoForSequenceClassification::HEAD_PARAMS;
        let in_head = |h: &&str| {
            let module = h.split('.').next().unwrap_or(h);
            trimmed == module || trimmed.starts_with(&format!("{module}."))
        };
        if head.iter().any(in_head) {
            return Err(format!(
                "`{trimmed}` is the classification head, which is always trained (it starts \
                 fresh for your labels); to train only the head, freeze everything else: \
                 `[embeddings, layers.0-N, transformer.ln_f]`"
            ));
        }
        let valid_module = trimmed.starts_with("transformer.")
            && trimmed.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if valid_module {
            return Ok(FreezeEntry::Module(trimmed.to_string()));
        }
        Err(format!(
            "`{trimmed}` is not a part of the model: write `embeddings`, `layers.N`, \
             `layers.A-B` or a Hugging Face module name such as `transformer.h.0.mlp`"
        ))
    }
}

impl fmt::Display for FreezeEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreezeEntry::Embeddings => write!(f, "embeddings"),
            FreezeEntry::Layers(a, b) if a == b => write!(f, "layers.{a}"),
            FreezeEntry::Layers(a, b) => write!(f, "layers.{a}-{b}"),
            FreezeEntry::Module(m) => write!(f, "{m}"),
        }
    }
}

impl From<FreezeEntry> for String {
    fn from(entry: FreezeEntry) -> String {
        entry.to_string()
    }
}
