//! `pipe predict BUNDLE TEXT…`: labels for texts from an exported bundle.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use pipe_engine::lockfile;
use pipe_engine::{Printer, Tone, UsageError};
use pipe_models::bundle::{Bundle, Predictions};
use pipe_onnx::SessionOptions;
use pipe_onnx::runtime::{self, CudaOptions, Device, DeviceChoice};
use pipe_stages::memory::release_large_frees;

use crate::Verdict;
use crate::cli::PredictArgs;
use crate::output::answer;
use crate::workspace;

/// Classifies the texts; a bundle that cannot be found, opened or run is a failure (exit 1).
pub fn exec(args: PredictArgs, printer: &Printer) -> anyhow::Result<Verdict> {
    match predict(&args, printer) {
        Ok(()) => Ok(Verdict::Success),
        Err(error)
            if crate::output::is_broken_pipe(&error)
                || error.downcast_ref::<pipe_engine::ManifestError>().is_some()
                || error.downcast_ref::<pipe_engine::UsageError>().is_some()
                || is_missing_runtime(&error) =>
        {
            Err(error)
        }
        Err(error) => {
            printer.error(&error);
            Ok(Verdict::Failure)
        }
    }
}

/// Whether `error` is this machine lacking a usable ONNX Runtime: an environment problem
/// (exit 2), not a bundle that fails.
pub fn is_missing_runtime(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        matches!(
            e.downcast_ref::<pipe_onnx::Error>(),
            Some(
                pipe_onnx::Error::LibraryNotFound { .. } | pipe_onnx::Error::LibraryUnusable { .. }
            )
        )
    })
}

/// The device `--device` names (`auto` resolved, with a note when it falls back to the CPU);
/// a device that is misspelt or cannot be had here is a usage error (exit 2) with the fix.
pub fn choose_device(device: &str, printer: &Printer) -> anyhow::Result<Device> {
    let choice: DeviceChoice = device
        .parse()
        .map_err(|e: pipe_onnx::Error| UsageError(format!("--device: {e}")))?;
    let resolved = runtime::resolve(choice).map_err(|e| UsageError(format!("--device: {e}")))?;
    if let Some(reason) = &resolved.fallback {
        printer.status(
            "Device",
            Tone::Quiet,
            &format!(
                "auto: running on the CPU; CUDA is unavailable: {}",
                reason.lines().next().unwrap_or_default()
            ),
        );
    }
    Ok(resolved.device)
}

fn predict(args: &PredictArgs, printer: &Printer) -> anyhow::Result<()> {
    let dir = bundle_dir(&args.bundle, args.manifest.as_deref())?;
    let texts = match &args.file {
        Some(file) => {
            let read = pipe_stages::read_texts(file, args.text_column.as_deref())?;
            if read.detected {
                printer.status(
                    "Reading",
                    Tone::Quiet,
                    &format!(
                        "{} rows of column `{}` of {} (detected; choose another with --text-column)",
                        read.texts.len(),
                        read.column,
                        file.display()
                    ),
                );
            }
            refuse_empty_texts(file, &read)?;
            read.texts
        }
        None => args.texts.clone(),
    };
    let device = choose_device(&args.device, printer)?;
    let mut bundle = open_bundle(&dir, device, args.threads)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch_size = usize::try_from(args.batch_size).context("--batch-size is too large")?;
    let predictions = bundle.predict(&refs, batch_size)?;
    if args.json {
        print_json(&bundle, &refs, &predictions)
    } else {
        print_table(printer, &bundle, &refs, &predictions)
    }
}

/// Fails, naming the file and where they are, when texts of `read` are blank: the model needs
/// at least one token per text.
fn refuse_empty_texts(file: &Path, read: &pipe_stages::Texts) -> anyhow::Result<()> {
    let empty: Vec<String> = read
        .texts
        .iter()
        .zip(&read.rows)
        .filter(|(text, _)| text.trim().is_empty())
        .map(|(_, row)| row.to_string())
        .collect();
    let Some(first) = empty.first() else {
        return Ok(());
    };
    let more = match empty.len() {
        1 => String::new(),
        2 => format!(" (and {} {})", read.row_word, empty[1]),
        n if n <= 10 => format!(" (and {}s {})", read.row_word, empty[1..].join(", ")),
        n => format!(" (and {} more {}s)", n - 1, read.row_word),
    };
    bail!(
        "{}: {} {first}{more}, column `{}`: the text is empty; fill it in or remove the row, \
         since the model needs at least one token",
        file.display(),
        read.row_word,
        read.column
    )
}

/// Opens the bundle folder `dir` with an ONNX Runtime session on `device` with `threads`
/// intra-op threads; `pipe serve` opens its bundle here too. Large frees go back to the
/// system while it loads, as in the stages ([`release_large_frees`]).
pub fn open_bundle(dir: &Path, device: Device, threads: Option<usize>) -> anyhow::Result<Bundle> {
    release_large_frees();
    let options = SessionOptions {
        device,
        intra_threads: threads,
        graph_cache_dir: None,
        // Inference keeps full fp32 matrix products, as the exported model specifies.
        cuda: CudaOptions { tf32: false },
        profile_prefix: None,
    };
    Bundle::open(dir, &options).with_context(|| format!("cannot open the bundle {}", dir.display()))
}

/// The bundle folder: `arg` when it is a folder, else the output folder of the stage `arg`
/// of the manifest (`--manifest`, or the one in the current folder).
pub fn bundle_dir(arg: &str, manifest: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = Path::new(arg);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    // A matrix member is `<stage>@<member>`.
    let stage_part = arg.split_once('@').map_or(arg, |(stage, _)| stage);
    if !pipe_engine::manifest::is_valid_stage_name(stage_part) {
        bail!(
            "no bundle folder {arg}; name the output folder of an export-onnx stage, or the stage itself"
        );
    }
    let file = match manifest {
        Some(file) => file.to_path_buf(),
        None => workspace::default_manifest().with_context(|| {
            format!(
                "`{arg}` is not a folder, and there is no manifest to find a stage of that name in"
            )
        })?,
    };
    let registry = pipe_stages::registry();
    let pipeline = workspace::load(&file, &registry, false)?;
    let Some(id) = pipeline.id(arg) else {
        let members: Vec<&str> = pipeline
            .select(arg)
            .into_iter()
            .map(|id| pipeline.stages[id].name.as_str())
            .collect();
        if !members.is_empty() {
            bail!(
                "stage `{arg}` of {} is a matrix stage with one bundle per member; name one: {}",
                file.display(),
                members.join(", ")
            );
        }
        // A name that is no bundle and no stage is a usage error (exit 2).
        let names: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
        return Err(UsageError(format!(
            "`{arg}` is neither a folder nor a stage of {}{}; the stages are: {}",
            file.display(),
            pipe_engine::diag::did_you_mean(arg, names.iter().copied()),
            names.join(", ")
        ))
        .into());
    };
    let stage = &pipeline.stages[id];
    let store = workspace::open_store(&pipeline)?;
    let lock = lockfile::load_for(&pipeline.manifest.path, &pipeline.manifest.name)?;
    let ran = lock
        .stages
        .get(arg)
        .is_some_and(|entry| store.record(&entry.key).is_some());
    let dir = store.out_dir(&pipeline.manifest.name, &stage.name);
    if !ran || !dir.is_dir() {
        bail!(
            "stage `{arg}` has not run yet; run `pipe run {} {arg}` first",
            file.display()
        );
    }
    Ok(dir)
}

fn print_json(bundle: &Bundle, texts: &[&str], predictions: &Predictions) -> anyhow::Result<()> {
    crate::output::answer_json(&bundle.answers(texts, predictions))
}

/// Per text: the predicted label(s) and the text, then every label's probability, most
/// probable first, in aligned columns.
fn print_table(
    printer: &Printer,
    bundle: &Bundle,
    texts: &[&str],
    predictions: &Predictions,
) -> anyhow::Result<()> {
    let labels = bundle.labels();
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    for (i, text) in texts.iter().enumerate() {
        let picked = bundle.chosen(predictions, i);
        let head = if picked.is_empty() {
            "(none)".to_string()
        } else {
            picked.join(", ")
        };
        answer(&format!(
            "{}  {text}",
            printer.paint_stdout(&head, Tone::Good)
        ))?;
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.sort_by(|&a, &b| predictions.row(i)[b].total_cmp(&predictions.row(i)[a]));
        for j in order {
            let p = predictions.row(i)[j];
            let line = format!("    {:<width$}  {p:.3}", labels[j]);
            if picked.contains(&labels[j].as_str()) {
                answer(&line)?;
            } else {
                answer(&printer.dim_stdout(&line))?;
            }
        }
    }
    Ok(())
}
