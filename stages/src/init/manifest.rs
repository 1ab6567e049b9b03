//! Rendering the manifest `pipe init` writes, with a comment on every key.

use std::fmt::Write as _;

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
    let _ = writeln!(
        m,
        "  # Turns text into token ids with a byte-level BPE trained on the train rows only;"
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
    line(
        &mut m,
        "    tokenizer: { train: { vocab_size: 8192 } }".to_string(),
        "or { hub: EleutherAI/gpt-neo-125m }, { path: DIR }",
    );
    line(
        &mut m,
        "    max_length: 128".to_string(),
        "longer texts are cut to this many tokens",
    );
    let _ = writeln!(m);
    let _ = writeln!(
        m,
        "  # Next steps: fine-tune GPT-Neo, export it to ONNX, evaluate it. Uncomment to use."
    );
    let _ = writeln!(m, "  # finetune:");
    let _ = writeln!(m, "  #   from: tokenize");
    let _ = writeln!(
        m,
        "  #   model: {{ config: tiny, seed: 0 }}        # or {{ hub: EleutherAI/gpt-neo-125m }}"
    );
    let _ = writeln!(m, "  #   epochs: 3");
    let _ = writeln!(m, "  #   batch_size: 16");
    let _ = writeln!(m, "  #   learning_rate: 5.0e-4");
    let _ = writeln!(m, "  # export-onnx:");
    let _ = writeln!(m, "  #   from: finetune");
    if a.split.is_some() {
        let _ = writeln!(m, "  # evaluate:");
        let _ = writeln!(m, "  #   from: {{ model: export-onnx, data: split }}");
        let _ = writeln!(m, "  #   splits: [train, test]");
    }
    m
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
