//! The library half of `pipe init`: inspect a data file, ask how to use it,
//! write a manifest.
//!
//! [`init`] reads the first rows of the file with ingest's own reader and
//! column detection, shows the columns with sample values, asks (through a
//! [`Prompter`]) which column holds the text and which the label, whether a
//! label cell can hold several labels, whether to split (with a validation
//! set? shuffled? what test fraction?), then how to train (which model:
//! `tiny` from scratch or a Hugging Face id, LoRA or not, how many epochs,
//! which device), and writes a commented manifest that runs as written:
//! ingest → split → tokenize → finetune → export-onnx → evaluate. Every
//! question can be answered ahead by a field of [`InitOptions`], and `yes`
//! takes the default for the rest, so it also runs without a terminal.
//!
//! ```no_run
//! use pipe_stages::init::{InitOptions, TerminalPrompter, init};
//!
//! let options = InitOptions { from: Some("data/questions.csv".into()), yes: true, ..Default::default() };
//! let written = init(options, &mut TerminalPrompter::stdio())?;
//! println!("wrote {}", written.manifest.display());
//! # anyhow::Ok(())
//! ```

mod manifest;
mod prompt;
mod training;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::ingest::detect::{Inspection, find_column, inspect};
use crate::ingest::read::ReadOptions;
use manifest::Answers;
pub use prompt::{Prompter, TerminalPrompter};
pub use training::{DEFAULT_MAX_LENGTH, ModelChoice, Training, default_device};

/// The manifest written when [`InitOptions::output`] is left out.
pub const DEFAULT_MANIFEST: &str = "pipeline.yaml";

/// The answers `pipe init` may be given up front (one per flag); a field left
/// `None` is asked, or takes its default under `yes`.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// The data file to inspect (`--from FILE`).
    pub from: Option<PathBuf>,
    /// Where to write the manifest (`-o MANIFEST`); [`DEFAULT_MANIFEST`] by default.
    pub output: Option<PathBuf>,
    /// The text column (`--text`); detected by default.
    pub text: Option<String>,
    /// The label column (`--label`); detected by default.
    pub label: Option<String>,
    /// Whether a label cell can hold several labels (`--multi-label`);
    /// by default guessed from the label cells.
    pub multi_label: Option<bool>,
    /// The test fraction (`--test 0.2`); 0 means no split. Default 0.2.
    pub test: Option<f64>,
    /// The validation fraction (`--validation 0.1`); 0 (the default) means none.
    pub validation: Option<f64>,
    /// Whether to shuffle before splitting (`--shuffle`); default no.
    pub shuffle: Option<bool>,
    /// The model to fine-tune (`--model tiny|small|OWNER/NAME`); default `tiny`.
    pub model: Option<ModelChoice>,
    /// Whether to train LoRA adapters (`--lora`); asked for pretrained models only,
    /// default no.
    pub lora: Option<bool>,
    /// Passes over the train split (`--epochs`); default 3.
    pub epochs: Option<u64>,
    /// Where to train (`--device`); default [`default_device`].
    pub device: Option<String>,
    /// The Hugging Face cache to look models up in; default [`pipe_models::hub::default_hub_cache`].
    pub hub_cache: Option<PathBuf>,
    /// Take the default answer to every question not answered above (`--yes`).
    pub yes: bool,
    /// Overwrite an existing manifest (`--force`).
    pub force: bool,
}

/// What [`init`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The manifest.
    pub manifest: PathBuf,
    /// Whether it trains a model (it does whenever the rows are split).
    pub trains: bool,
}

/// Inspects the data file, asks what is not in `options`, writes the
/// manifest atomically and says what it wrote. Refuses to overwrite an
/// existing file unless `options.force`.
pub fn init(options: InitOptions, prompter: &mut dyn Prompter) -> anyhow::Result<Written> {
    let output = options
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFEST));
    if output.exists() && !options.force {
        bail!(
            "{} already exists; pass --force to overwrite it",
            output.display()
        );
    }
    let mut ask = Asker {
        options: &options,
        prompter,
    };
    let from = match &options.from {
        Some(from) => from.clone(),
        None if options.yes => bail!("which data file? pass it with --from FILE"),
        None => PathBuf::from(
            ask.prompter
                .input("Which data file should the pipeline read?", "")?,
        ),
    };
    let shown = from.display().to_string();
    check_data_file(&from, &output)?;
    // `pipe run` reads only files in the manifest's folder: refuse now rather than write a
    // manifest that cannot run.
    let source = relative_to(&from, output.parent().unwrap_or(Path::new("")))?;
    if source.split('/').next() == Some("..") {
        let folder = match output.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.display().to_string(),
            _ => ".".to_string(),
        };
        bail!(
            "{shown} is outside {folder}, the folder of the manifest {}, and `pipe run` reads \
             only files in the manifest's folder; write the manifest beside the data or above \
             it (`-o pipeline.yaml`), or move the data file into {folder}",
            output.display()
        );
    }
    let inspection = inspect(&from, &shown, &ReadOptions::default())?;
    ask.prompter.show(&describe(&inspection, &shown))?;

    let names: Vec<String> = inspection.columns.iter().map(|c| c.name.clone()).collect();
    let text = ask.column(
        &options.text,
        &names,
        &shown,
        "Which column holds the text?",
        || inspection.text_column(None).ok(),
        0,
    )?;
    let label = ask.column(
        &options.label,
        &names,
        &shown,
        "Which column holds the label?",
        || inspection.label_column(text).ok(),
        // Undetected: offer the first column that is not the text.
        usize::from(text == 0),
    )?;
    if text == label {
        bail!(
            "the text and the label must be different columns (both are `{}`)",
            names[text]
        );
    }
    let label_column = &inspection.columns[label];
    ask.prompter.show(&label_counts(label_column))?;
    let separator = label_column.label_separator();
    let multi_label = ask.confirm(
        options.multi_label,
        "Can a label cell hold several labels (like `a;b`)?",
        label_column.has_lists || separator.is_some(),
    )?;
    let split = match options.test {
        Some(test) => test > 0.0,
        None => ask.confirm(None, "Split the rows into train and test sets?", true)?,
    };
    let (mut test, mut validation, mut shuffle) = (0.0, 0.0, false);
    if split {
        validation = match options.validation {
            Some(v) => v,
            None if ask.confirm(None, "Also keep a validation set?", false)? => {
                ask.fraction("Fraction of rows for validation", 0.1)?
            }
            None => 0.0,
        };
        shuffle = ask.confirm(options.shuffle, "Shuffle the rows before splitting?", false)?;
        test = match options.test {
            Some(t) => t,
            None => ask.fraction("Fraction of rows for testing", 0.2)?,
        };
        if !(test > 0.0
            && test < 1.0
            && (0.0..1.0).contains(&validation)
            && test + validation < 1.0)
        {
            bail!("test {test} and validation {validation} must be fractions whose sum is below 1");
        }
    }

    let training = if split { Some(ask.training()?) } else { None };

    let answers = Answers {
        name: pipeline_name(&from),
        from: shown,
        source,
        text: names[text].clone(),
        label: names[label].clone(),
        multi_label,
        separator: multi_label
            .then(|| separator.unwrap_or(';'))
            .filter(|_| !label_column.has_lists),
        split: split.then_some((test, validation, shuffle)),
        training,
    };
    write_manifest(&output, &manifest::render(&answers), options.force)?;
    Ok(Written {
        manifest: output,
        trains: answers.training.is_some(),
    })
}

/// Asks questions unless an option or `yes` answers them.
struct Asker<'a> {
    options: &'a InitOptions,
    prompter: &'a mut dyn Prompter,
}

impl Asker<'_> {
    fn column(
        &mut self,
        given: &Option<String>,
        names: &[String],
        shown: &str,
        question: &str,
        detect: impl FnOnce() -> Option<usize>,
        fallback: usize,
    ) -> anyhow::Result<usize> {
        if let Some(name) = given {
            return find_column(names, name).with_context(|| format!("{shown}: {question}"));
        }
        let detected = detect();
        match (detected, self.options.yes) {
            (Some(i), true) => Ok(i),
            (None, true) => bail!("{question} it could not be detected; name it with a flag"),
            (default, false) => self
                .prompter
                .select(question, names, default.unwrap_or(fallback)),
        }
    }

    fn confirm(
        &mut self,
        given: Option<bool>,
        question: &str,
        default: bool,
    ) -> anyhow::Result<bool> {
        match given {
            Some(answer) => Ok(answer),
            None if self.options.yes => Ok(default),
            None => self.prompter.confirm(question, default),
        }
    }

    /// Which model, LoRA (pretrained models only), epochs, device.
    fn training(&mut self) -> anyhow::Result<Training> {
        let default = ModelChoice::default_choice();
        let model = match &self.options.model {
            Some(model) => model.clone(),
            None if self.options.yes => default,
            None => loop {
                let answer = self.prompter.input(
                    "Which model? all-MiniLM-L6-v2 (pretrained BERT, embedded), tiny (from scratch, minutes on a CPU), small, or a Hugging Face id such as EleutherAI/gpt-neo-125m",
                    &default.to_string(),
                )?;
                match ModelChoice::parse(&answer) {
                    Ok(model) => break model,
                    Err(e) => self.prompter.show(&format!("  {e}"))?,
                }
            },
        };
        let cache = self
            .options
            .hub_cache
            .clone()
            .unwrap_or_else(pipe_models::hub::default_hub_cache);
        if let Some(note) = training::cache_note(&model, &cache) {
            self.prompter.show(&note)?;
        }
        let (targets, unknown_family) = training::lora_targets(&model, &cache);
        let lora = if model.is_pretrained() {
            self.confirm(
                self.options.lora,
                &format!(
                    "Train LoRA adapters (r 8 on {}) instead of every weight?",
                    targets.join(", ")
                ),
                false,
            )?
        } else {
            self.options.lora.unwrap_or(false)
        };
        let lora = lora.then_some(targets);
        if let (Some(_), Some(note)) = (lora, unknown_family) {
            self.prompter.show(&note)?;
        }
        let epochs = match self.options.epochs {
            Some(epochs) => epochs,
            None if self.options.yes => 3,
            None => loop {
                let answer = self
                    .prompter
                    .input("How many epochs (passes over the train split)?", "3")?;
                match answer.trim().parse::<u64>() {
                    Ok(n) if n > 0 => break n,
                    _ => self
                        .prompter
                        .show(&format!("  `{answer}` is not a whole number of at least 1"))?,
                }
            },
        };
        if epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        let device = match &self.options.device {
            Some(device) => device.clone(),
            None if self.options.yes => default_device().to_string(),
            None => self.prompter.input(
                "Train on which device? cpu, cuda or cuda:N",
                default_device(),
            )?,
        };
        device
            .parse::<pipe_onnx::Device>()
            .map_err(|e| anyhow::anyhow!("device `{device}`: {e}"))?;
        let max_length = model
            .max_length(&cache)
            .map_or(DEFAULT_MAX_LENGTH, |m| m.min(DEFAULT_MAX_LENGTH));
        Ok(Training {
            model,
            lora,
            epochs,
            device,
            max_length,
        })
    }

    fn fraction(&mut self, question: &str, default: f64) -> anyhow::Result<f64> {
        if self.options.yes {
            return Ok(default);
        }
        loop {
            let answer = self.prompter.input(question, &default.to_string())?;
            match answer.parse::<f64>() {
                Ok(f) if (0.0..1.0).contains(&f) => return Ok(f),
                _ => self
                    .prompter
                    .show(&format!("  `{answer}` is not a fraction from 0 to below 1"))?,
            }
        }
    }
}

/// The columns of the file, with how full they are and a few values.
fn describe(inspection: &Inspection, shown: &str) -> String {
    let delimiter = match inspection.delimiter {
        Some(b'\t') => ", tab-separated".to_string(),
        Some(d) => format!(", separated by `{}`", d as char),
        None => String::new(),
    };
    let mut text = format!(
        "{shown} ({}{delimiter}): {} columns; in the first {} rows:\n",
        inspection.format.name(),
        inspection.columns.len(),
        inspection.rows
    );
    for column in &inspection.columns {
        let samples: Vec<String> = column.samples(3).map(|s| clip(s, 40)).collect();
        let _ = writeln!(
            text,
            "  {:<20} {} distinct of {} filled; e.g. {}",
            column.name,
            column.values.len(),
            column.filled,
            samples.join(" | ")
        );
    }
    text
}

/// The most frequent values of the label column.
fn label_counts(column: &crate::ingest::detect::ColumnSummary) -> String {
    let mut text = format!("values of `{}`:\n", column.name);
    for (value, count) in column.values.iter().take(10) {
        let _ = writeln!(text, "  {:>6}  {}", count, clip(value, 60));
    }
    if column.values.len() > 10 {
        let _ = writeln!(text, "  … and {} more", column.values.len() - 10);
    }
    text
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

/// A pipeline name from the data file's name: lowercase letters, digits, `-` and `_`.
fn pipeline_name(from: &Path) -> String {
    let stem = from
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("pipeline");
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "pipeline".to_string()
    } else {
        name
    }
}

/// `path` relative to folder `base`, with `/` separators (as the manifest wants).
fn relative_to(path: &Path, base: &Path) -> anyhow::Result<String> {
    let path = std::path::absolute(path)?;
    let base = std::path::absolute(if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    })?;
    let path: Vec<_> = path.components().collect();
    let base: Vec<_> = base
        .components()
        .filter(|c| *c != std::path::Component::CurDir)
        .collect();
    let common = path.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); base.len() - common];
    parts.extend(
        path[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    Ok(parts.join("/"))
}

/// Refuses a data file `from` that is not a regular file (a FIFO or a device
/// would block the read, or never end), and an `output` that is the data
/// file itself (`--force` would overwrite the data with the manifest), before
/// either is opened. A missing `from` is left to the reader, which says so.
fn check_data_file(from: &Path, output: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(data) = fs_err::metadata(from) else {
        return Ok(());
    };
    if !data.is_file() {
        return Err(pipe_engine::UsageError(format!(
            "{} is not a regular file (a folder, FIFO or device); pass a CSV, JSONL or Parquet \
             file with --from",
            from.display()
        ))
        .into());
    }
    if let Ok(out) = fs_err::metadata(output)
        && out.dev() == data.dev()
        && out.ino() == data.ino()
    {
        return Err(pipe_engine::UsageError(format!(
            "-o {} is the data file itself; writing the manifest there would replace your \
             data: name another file (`-o pipeline.yaml`)",
            output.display()
        ))
        .into());
    }
    Ok(())
}

/// Writes `text` to `path` so a crash leaves either the old file or the new
/// one; an existing file is replaced only with `force`.
fn write_manifest(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    if force {
        return pipe_engine::atomic::write(path, text.as_bytes(), true);
    }
    pipe_engine::atomic::create_new(path, text.as_bytes()).map_err(|e| {
        match e.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            ),
            _ => e,
        }
    })
}
