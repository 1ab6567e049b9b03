//! Which parameters a fine-tuning run trains: every one, LoRA's adapters and the head, or
//! every one outside the `freeze` entries (partial fine-tuning: what setting
//! `requires_grad = False` does in PyTorch, with `transformers`' `Trainer` then leaving those
//! parameters out of the optimizer and of the clipping norm).
//!
//! A frozen parameter is a read-only input of the step graph: it takes no gradient and no
//! optimizer state, and the backward pass stops below the lowest trained parameter, so
//! freezing the embeddings and the lower layers also makes each step cheaper.

use pipe_engine::ParamError;

use super::freeze::FreezeEntry;
use super::params::Params;
use pipe_models::ParamSpec;
use pipe_models::config::HEAD_MODULES;
use pipe_models::lora::{self, LoraParams};

/// Whether the parameter called `name` belongs to a classification head (`score`,
/// `classifier`), which starts fresh and is always trained.
pub fn is_head(name: &str) -> bool {
    HEAD_MODULES.contains(&name.split('.').next().unwrap_or(name))
}

/// Which parameters take gradients.
#[derive(Debug, Clone, Copy)]
pub enum Trained<'a> {
    /// Every parameter: full fine-tuning.
    All,
    /// The LoRA matrices of these settings and the head; the base model is frozen.
    Lora(&'a LoraParams),
    /// Every parameter no entry covers.
    Unfrozen(&'a [FreezeEntry]),
}

impl<'a> Trained<'a> {
    /// What `params` ask for (`lora` and `freeze` never come together: the parameters'
    /// check refuses it).
    pub fn of(params: &'a Params) -> Self {
        match (&params.lora, params.freeze.as_slice()) {
            (Some(lora), _) => Trained::Lora(lora),
            (None, []) => Trained::All,
            (None, entries) => Trained::Unfrozen(entries),
        }
    }

    /// The LoRA settings, when training adapters.
    pub fn lora(self) -> Option<&'a LoraParams> {
        match self {
            Trained::Lora(lora) => Some(lora),
            _ => None,
        }
    }

    /// Whether the parameter called `name` takes a gradient.
    pub fn takes_gradient(self, name: &str) -> bool {
        match self {
            Trained::All => true,
            Trained::Lora(_) => lora::is_lora(name) || is_head(name),
            Trained::Unfrozen(entries) => !entries.iter().any(|e| e.covers(name)),
        }
    }

    /// Checks that each `freeze` entry names a part of the model whose parameters are
    /// `specs` (a layer past the last one, a misspelt module), pointing at the entry.
    pub fn check(self, specs: &[ParamSpec], layers: usize) -> Result<(), ParamError> {
        let Trained::Unfrozen(entries) = self else {
            return Ok(());
        };
        for (i, entry) in entries.iter().enumerate() {
            let past_last = matches!(entry, FreezeEntry::Layers(_, last) if *last >= layers);
            if !past_last && specs.iter().any(|s| entry.covers(&s.name)) {
                continue;
            }
            let index = i.to_string();
            let (message, help) = match entry {
                FreezeEntry::Layers(..) => (
                    format!("`{entry}` goes past this model's last layer"),
                    format!(
                        "this model has {layers} layer{}: `layers.0`{}",
                        if layers == 1 { "" } else { "s" },
                        if layers > 1 {
                            format!(" to `layers.{}`", layers - 1)
                        } else {
                            String::new()
                        }
                    ),
                ),
                _ => {
                    // A parameter of the first layer, else any: this family's own names.
                    let example = specs
                        .iter()
                        .find(|s| s.name.contains(".0."))
                        .or(specs.first())
                        .map_or("", |s| s.name.as_str());
                    (
                        format!("`{entry}` names no parameter of this model"),
                        format!(
                            "parameters are named as in Hugging Face's state dict, such as \
                             `{example}`"
                        ),
                    )
                }
            };
            return Err(ParamError::new(&["freeze", &index], message).with_help(help));
        }
        Ok(())
    }

    /// The number of values trained, out of those of `specs`.
    pub fn count(self, specs: &[ParamSpec]) -> usize {
        specs
            .iter()
            .filter(|s| self.takes_gradient(&s.name))
            .map(ParamSpec::numel)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> Result<FreezeEntry, String> {
        FreezeEntry::try_from(text.to_string())
    }

    #[test]
    fn entries_parse_and_print_back() {
        for (text, want) in [
            ("embeddings", FreezeEntry::Embeddings),
            ("layers.3", FreezeEntry::Layers(3, 3)),
            ("layers.0-5", FreezeEntry::Layers(0, 5)),
            (
                "transformer.h.2.mlp",
                FreezeEntry::Module("transformer.h.2.mlp".into()),
            ),
        ] {
            let parsed = entry(text).unwrap();
            assert_eq!(parsed, want);
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn bad_entries_say_what_to_write() {
        let cases = [
            ("layers.5-2", "layers.2-5"),
            ("layers.x", "layers.A-B"),
            ("layers.", "layers.N"),
            ("score", "always trained"),
            ("score.weight", "always trained"),
            ("s", "not a part of the model"),
            ("wte", "transformer.h.0.mlp"),
            ("transformer..h", "not a part of the model"),
            ("transformer.h.0/mlp", "not a part of the model"),
        ];
        for (text, hint) in cases {
            let err = entry(text).unwrap_err();
            assert!(err.contains(hint), "{text}: {err}");
        }
    }

    #[test]
    fn entries_cover_whole_modules_only() {
        let layers = FreezeEntry::Layers(1, 2);
        assert!(layers.covers("transformer.h.1.ln_1.weight"));
        assert!(layers.covers("transformer.h.2.mlp.c_fc.bias"));
        assert!(!layers.covers("transformer.h.0.ln_1.weight"));
        assert!(!layers.covers("transformer.h.10.ln_1.weight"));
        assert!(!layers.covers("transformer.h.12.ln_1.weight"));
        let emb = FreezeEntry::Embeddings;
        assert!(emb.covers("transformer.wte.weight") && emb.covers("transformer.wpe.weight"));
        assert!(!emb.covers("transformer.h.0.ln_1.weight"));
        let module = FreezeEntry::Module("transformer.h.1".into());
        assert!(module.covers("transformer.h.1.attn.attention.q_proj.weight"));
        assert!(!module.covers("transformer.h.11.attn.attention.q_proj.weight"));
        let exact = FreezeEntry::Module("transformer.ln_f.weight".into());
        assert!(exact.covers("transformer.ln_f.weight"));
        assert!(!exact.covers("transformer.ln_f.bias"));
    }

    #[test]
    fn an_entry_naming_nothing_points_at_itself() {
        let spec = |name: &str, shape: &[i64]| ParamSpec {
            name: name.into(),
            shape: shape.to_vec(),
            init: pipe_models::Init::Zeros,
        };
        let specs = [
            spec("transformer.h.0.ln_1.weight", &[4]),
            spec("score.weight", &[2, 4]),
        ];
        let entries = [FreezeEntry::Layers(0, 0), FreezeEntry::Layers(1, 1)];
        let err = Trained::Unfrozen(&entries).check(&specs, 1).unwrap_err();
        assert_eq!(err.path, ["freeze", "1"]);
        assert!(
            err.message
                .contains("`layers.1` goes past this model's last layer")
        );
        assert!(err.help.unwrap().contains("1 layer: `layers.0`"));
        // A range that starts inside the model but ends past it is a typo too.
        let beyond = [FreezeEntry::Layers(0, 9)];
        let err = Trained::Unfrozen(&beyond).check(&specs, 1).unwrap_err();
        assert!(
            err.message.contains("`layers.0-9` goes past"),
            "{}",
            err.message
        );
        // A module that names nothing is answered with one of this model's own names.
        let module = [FreezeEntry::Module("transformer.ln_f".into())];
        let err = Trained::Unfrozen(&module).check(&specs, 1).unwrap_err();
        assert!(err.message.contains("names no parameter"));
        assert!(err.help.unwrap().contains("`transformer.h.0.ln_1.weight`"));
        assert!(Trained::Unfrozen(&entries[..1]).check(&specs, 1).is_ok());
        assert_eq!(Trained::Unfrozen(&entries[..1]).count(&specs), 8);
        assert_eq!(Trained::All.count(&specs), 12);
    }
}
