//! The entries of `freeze`, the parts of a model that keep their starting weights
//! ([`FreezeEntry`]), as a manifest writes them and as they match parameter names.

use std::fmt;

use pipe_models::config::{BASE_PREFIXES, FREEZE_GROUPS, HEAD_MODULES};
use serde::{Deserialize, Serialize};

/// One entry of `freeze`: a part of the model that keeps its starting weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FreezeEntry {
    /// `embeddings`: the token and position embeddings (GPT-Neo's `transformer.wte`,
    /// `transformer.wpe`; BERT's `bert.embeddings`).
    Embeddings,
    /// `layers.N` or `layers.A-B`: transformer blocks `A` to `B`, both included
    /// (`transformer.h.A` … `transformer.h.B`; `bert.encoder.layer.A` …).
    Layers(usize, usize),
    /// A module or parameter by its Hugging Face name, such as `transformer.h.3.mlp` or
    /// `bert.pooler`: every parameter whose name is it or starts with it and a dot.
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
            FreezeEntry::Embeddings => FREEZE_GROUPS
                .iter()
                .any(|(embeddings, _)| embeddings.iter().any(|e| under(e))),
            FreezeEntry::Layers(first, last) => FREEZE_GROUPS.iter().any(|(_, layers)| {
                (*first..=*last).any(|layer| under(&format!("{layers}.{layer}")))
            }),
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
        let in_head =
            |module: &&str| trimmed == *module || trimmed.starts_with(&format!("{module}."));
        if HEAD_MODULES.iter().any(in_head) {
            return Err(format!(
                "`{trimmed}` is the classification head, which is always trained (it starts \
                 fresh for your labels); to train only the head, freeze everything else: \
                 `[embeddings, layers.0-N]` and the final norm (`transformer.ln_f` on \
                 GPT-Neo and GPT-2, `model.norm` on the Llama family)"
            ));
        }
        let valid_module = BASE_PREFIXES
            .iter()
            .any(|base| trimmed.starts_with(&format!("{base}.")))
            && trimmed.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if valid_module {
            return Ok(FreezeEntry::Module(trimmed.to_string()));
        }
        Err(format!(
            "`{trimmed}` is not a part of the model: write `embeddings`, `layers.N`, \
             `layers.A-B` or a Hugging Face module name such as `transformer.h.0.mlp` or \
             `bert.encoder.layer.0.attention`"
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
