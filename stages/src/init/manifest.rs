//! Rendering the manifest `pipe init` writes, with a comment on every key.

use std::fmt::Write as _;

use super::training::{DEFAULT_MAX_LENGTH, ModelChoice, Training};

/// What the manifest is made from.
pub(super) struct Answers {
    /// The pipeline's name.
    pub name: String,
    /// The data file as the user named it (for the header comment).
    pub from: String,
    /// The data file relative to the manifest.
    pub source: String,
    pub text: String,
    pub label: String,
    pub multi_label: bool,
    /// The label separator to write (multi-label CSV/TSV only).
    pub separator: Option<char>,
    /// (test, validation, shuffle) when the rows are split.
    pub split: Option<(f64, f64, bool)>,
    /// How to train, when the rows are split (training needs a train split).
    pub training: Option<Training>,
}

/// The manifest text.
pub(super) fn render(a: &Answers) -> String {
    let mut m = String::new();
    let line = |m: &mut String, key_value: String, comment: &str| {
        let _ = writeln!(m, "{key_value:<33} # {comment}");
    };
    let _ = writeln!(m, "# Written by `pipe init --from {}`.", a.from);
    let _ = writeln!(
        m,
        "# `pipe run` runs the stages below; a stage whose parameters and inputs are"
    );
    let _ = writeln!(
        m,
        "# unchanged is restored from the cache. `pipe status` shows what changed."
    );
    let _ = writeln!(m, "pipeline: {}", scalar(&a.name));
    let _ = writeln!(m, "stages:");
    let _ = writeln!(
        m,
        "  # Reads the data file into a clean table of text and label(s);"
    );
    let _ = writeln!(
        m,
        "  # outputs dataset.parquet, labels.json and profile.json (what was dropped and why)."
    );
    let _ = writeln!(m, "  ingest:");
    line(
        &mut m,
        format!("    source: {}", scalar(&a.source)),
        "the data file, relative to this manifest",
    );
    line(
        &mut m,
        format!("    text: {}", scalar(&a.text)),
        "the column holding the text",
    );
    line(
        &mut m,
        format!("    label: {}", scalar(&a.label)),
        "the column holding the label",
    );
    line(
        &mut m,
        format!("    multi_label: {}", a.multi_label),
        "true: a label cell holds several labels",
    );
    if let Some(sep) = a.separator {
        line(
            &mut m,
            format!("    separator: {}", scalar(&sep.to_string())),
            "what separates the labels of a cell",
        );
    }
    line(
        &mut m,
        "    on_error: fail".to_string(),
        "fail | skip: what to do with a malformed row",
    );
    let _ = writeln!(m);
    let tokenize_from = match a.split {
        Some((test, validation, shuffle)) => {
            let _ = writeln!(
                m,
                "  # Cuts the dataset into train and test tables (same rows on every run);"
            );
            let _ = writeln!(
                m,
                "  # outputs train.parquet, test.parquet, validation.parquet when asked, split.json."
            );
            let _ = writeln!(m, "  split:");
            line(
                &mut m,
                "    from: ingest".to_string(),
                "the stage whose dataset is split",
            );
            line(
                &mut m,
                format!("    test: {test}"),
                "fraction of rows for testing",
            );
            line(
                &mut m,
                format!("    validation: {validation}"),
                "fraction for validation; 0: no validation set",
            );
            line(
                &mut m,
                format!("    shuffle: {shuffle}"),
                "deal rows in a seeded random order, not file order",
            );
            line(
                &mut m,
                "    seed: 42".to_string(),
                "the seed of the shuffle",
            );
            line(
                &mut m,
                format!("    stratify: {}", !a.multi_label),
                "keep each label's share of rows in every split",
            );
            let _ = writeln!(m);
            "split"
        }
        None => "ingest",
    };
    let own_tokenizer = a.training.as_ref().is_some_and(|t| t.model.is_pretrained());
    let _ = writeln!(
        m,
        "  # Turns text into token ids with {};",
        if own_tokenizer {
            "the model's own tokenizer"
        } else {
            "a byte-level BPE trained on the train rows only"
        }
    );
    let _ = writeln!(
        m,
        "  # outputs one table of input_ids, length and label per split, tokenizer.json, labels.json."
    );
    let _ = writeln!(m, "  tokenize:");
    line(
        &mut m,
        format!("    from: {tokenize_from}"),
        "the stage whose tables are tokenized",
    );
    match a.training.as_ref().map(|t| &t.model) {
        Some(ModelChoice::Hub(id)) => line(
            &mut m,
            format!("    tokenizer: {{ hub: {} }}", scalar(id)),
            "the model's own tokenizer",
        ),
        Some(ModelChoice::Embedded(name)) => line(
            &mut m,
            format!("    tokenizer: {{ embedded: {name} }}"),
            "the model's own tokenizer",
        ),
        _ => line(
            &mut m,
            "    tokenizer: { train: { vocab_size: 8192 } }".to_string(),
            "or { hub: EleutherAI/gpt-neo-125m }, { path: DIR }",
        ),
    }
    let max_length = a
        .training
        .as_ref()
        .map_or(DEFAULT_MAX_LENGTH, |t| t.max_length);
    line(
        &mut m,
        format!("    max_length: {max_length}"),
        "longer texts are cut to this many tokens",
    );
    match &a.training {
        Some(training) => render_training(&mut m, training, a.split.is_some_and(|s| s.1 > 0.0)),
        None => {
            let _ = writeln!(m);
            let _ = writeln!(
                m,
                "  # Training needs a train split: run `pipe init` again and answer yes to splitting."
            );
        }
    }
    m
}

/// finetune → export-onnx → evaluate.
fn render_training(m: &mut String, t: &Training, validation: bool) {
    let line = |m: &mut String, key_value: String, comment: &str| {
        let _ = writeln!(m, "{key_value:<33} # {comment}");
    };
    let _ = writeln!(m);
    let _ = writeln!(
        m,
        "  # Fine-tunes the model as a classifier on ONNX Runtime; outputs model/ (a Hugging Face"
    );
    let _ = writeln!(
        m,
        "  # folder), train_log.jsonl and metrics.json. Checkpoints let a killed run resume."
    );
    let _ = writeln!(m, "  finetune:");
    line(m, "    from: tokenize".to_string(), "the tokenized splits");
    let (model, learning_rate) = match &t.model {
        ModelChoice::Hub(id) => (format!("{{ hub: {} }}", scalar(id)), "5.0e-5"),
        ModelChoice::Embedded(name) => (format!("{{ embedded: {name}, seed: 0 }}"), "5.0e-5"),
        from_scratch => (format!("{{ config: {from_scratch}, seed: 0 }}"), "5.0e-4"),
    };
    line(
        m,
        format!("    model: {model}"),
        "{ embedded: all-MiniLM-L6-v2 } pretrained, { config: tiny | small } from scratch, or { hub: OWNER/NAME }",
    );
    line(
        m,
        format!("    epochs: {}", t.epochs),
        "passes over the train split",
    );
    line(
        m,
        "    batch_size: 16".to_string(),
        "rows per optimizer step",
    );
    line(
        m,
        format!("    learning_rate: {learning_rate}"),
        "peak rate: ~5e-4 from scratch, ~5e-5 from a pretrained model",
    );
    line(
        m,
        "    warmup_ratio: 0.1".to_string(),
        "share of the steps warming the rate up from 0",
    );
    if validation {
        line(
            m,
            "    eval_every: 0".to_string(),
            "validation loss every N steps; 0: at each epoch end",
        );
    }
    if let Some(targets) = t.lora {
        line(
            m,
            format!(
                "    lora: {{ r: 8, alpha: 16, dropout: 0.0, targets: [{}] }}",
                targets.join(", ")
            ),
            "train low-rank adapters only",
        );
    }
    line(
        m,
        format!("    device: {}", scalar(&t.device)),
        "cpu | cuda | cuda:N; not part of the cache key",
    );
    let _ = writeln!(m);
    let _ = writeln!(
        m,
        "  # Exports the model to ONNX with its tokenizer and labels: a bundle that"
    );
    let _ = writeln!(m, "  # `pipe predict` and `pipe serve` answer from.");
    let _ = writeln!(m, "  export-onnx:");
    line(m, "    from: finetune".to_string(), "the trained model");
    let _ = writeln!(m);
    let _ = writeln!(
        m,
        "  # Scores the bundle on every split: metrics.json, predictions.parquet, report.html."
    );
    let _ = writeln!(m, "  evaluate:");
    line(
        m,
        "    from: { model: export-onnx, data: split }".to_string(),
        "the bundle and the split tables",
    );
}

/// `s` as a YAML scalar: plain when that reads back as the same string,
/// else double-quoted (a JSON string is a valid YAML double-quoted scalar).
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_alphanumeric() || "_-./".contains(c))
        && !s.starts_with('-')
        && s.parse::<f64>().is_err()
        && !matches!(
            s.to_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n" | ".inf" | ".nan"
        );
    if plain {
        s.to_string()
    } else {
        serde_json::Value::from(s).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::scalar;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(scalar("question"), "question");
        assert_eq!(scalar("data/q.csv"), "data/q.csv");
        assert_eq!(scalar("yes"), "\"yes\"");
        assert_eq!(scalar("1.5"), "\"1.5\"");
        assert_eq!(scalar("my column"), "\"my column\"");
        assert_eq!(scalar(";"), "\";\"");
        assert_eq!(scalar("../data.csv"), "../data.csv");
        assert_eq!(scalar(".inf"), "\".inf\"");
    }
}
