//! The training loop: the compiled step graph run batch after batch, with the learning-rate
//! schedule, the training log, periodic evaluation and checkpoints.

use fs_err::{File, OpenOptions};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use pipe_engine::{ParamError, Reporter};
use pipe_onnx::{
    AdamW, FrozenDType, GradSignature, Graph, HostTensor, Kernels, MemoryStats, QuantizedWeight,
    Session, StepTrainer, build_gradient_step, step_trainer,
};
use serde_json::json;

use super::checkpoint::{self, Position};
use super::data::TokenTable;
use super::model_source::StartingModel;
use super::objective::StepOptions;
use super::params::Params;
use super::schedule::Schedule;
use super::selection::{Best, Evaluation, Selection, Verdict};
use super::trained::Trained;
use crate::scoring;
use pipe_models::classifier::{
    ClassifierInput, ProblemType, SequenceClassifier, declare_labels, hf_trainer_decay,
};
use pipe_models::layers::Tokens;
use pipe_models::{Architecture, ParamSpec, weights};

/// Name of the training log, in the scratch folder while training and in the outputs after.
pub const LOG_FILE: &str = "train_log.jsonl";

/// What one optimizer step reports.
struct StepTotals {
    /// The loss over the step's rows (the micro-batches' losses, each times its share).
    loss: f64,
    /// The gradient norm before clipping, when clipping is on.
    grad_norm: Option<f32>,
    /// Real (unpadded) tokens of every micro-batch.
    tokens: usize,
}

/// A model being trained, with everything one run of the loop needs.
pub struct Training<'a> {
    params: &'a Params,
    problem: ProblemType,
    specs: Vec<ParamSpec>,
    trainer: Box<dyn StepTrainer>,
    eval: Option<(Session, &'a TokenTable)>,
    scratch: &'a Path,
    options: StepOptions,
    selection: Option<Selection>,
    /// The frozen parameters training holds in another form than their starting values
    /// (quantized, or a table rounded to a 16-bit type), with the graph inputs that hold
    /// each: [`Finished::weight`] reads them again from the starting model.
    held_otherwise: BTreeMap<String, Vec<String>>,
    frozen_bytes: usize,
}

/// The training loss stopped being a finite number at `step` (counted from 1).
#[derive(Debug)]
pub struct NonFiniteLoss {
    /// The loss: NaN or infinite.
    pub loss: f64,
    /// The step whose loss it was.
    pub step: u64,
}

impl std::fmt::Display for NonFiniteLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the training loss became {} at step {}; lower `learning_rate` or keep \
             `max_grad_norm` on",
            self.loss, self.step
        )
    }
}

impl std::error::Error for NonFiniteLoss {}

/// How a finished run went.
pub struct Finished {
    /// Every parameter (trained and frozen; LoRA matrices unmerged) but the frozen ones
    /// training held quantized or rounded, by name; [`Finished::weight`] gives each.
    pub weights: BTreeMap<String, HostTensor>,
    /// The frozen weights training held quantized or rounded, read again from the starting
    /// model when asked for: the saved model is the original weights plus what training
    /// changed.
    pub unchanged: Vec<String>,
    /// Steps taken (including those before a resume).
    pub steps: u64,
    /// The last validation result, when there is a validation split.
    pub evaluation: Option<Evaluation>,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// When the first step began (after loading, building the graphs and resuming).
    pub first_step_began: Instant,
    /// With `select_best`: the evaluation whose weights are [`Finished::weights`].
    pub best: Option<Best>,
    /// With `early_stopping_patience`: the step training stopped at, when it stopped early.
    pub stopped_early_at: Option<u64>,
    /// Whether the training state lived in the device's memory (CUDA), not the host's.
    pub state_on_device: bool,
    /// The statistics of the run's arenas on the device at the end, added up (the peaks
    /// cover the whole run), where the device keeps them.
    pub device_memory: Option<MemoryStats>,
}

impl Finished {
    /// The value of parameter `spec` after training: from [`Finished::weights`], or read
    /// from `start` for the [`Finished::unchanged`] ones (one tensor, not the model).
    pub fn weight(
        &self,
        spec: &ParamSpec,
        start: &StartingModel,
        seed: u64,
    ) -> Result<Cow<'_, HostTensor>> {
        if let Some(w) = self.weights.get(&spec.name) {
            return Ok(Cow::Borrowed(w));
        }
        if !self.unchanged.contains(&spec.name) {
            bail!("no value for parameter {}", spec.name);
        }
        let mut read = start.weights(std::slice::from_ref(spec), seed)?;
        read.remove(&spec.name)
            .map(Cow::Owned)
            .with_context(|| format!("the starting model has no {}", spec.name))
    }
}

impl<'a> Training<'a> {
    /// Compiles the step graph (forward, loss with `options`, gradients, AdamW) of the
    /// starting model and loads its weights; `validation`, when given, gets a forward-only
    /// graph of its own (no dropout, the plain loss).
    pub fn new(
        params: &'a Params,
        start: &StartingModel,
        problem: ProblemType,
        validation: Option<&'a TokenTable>,
        scratch: &'a Path,
        options: StepOptions,
    ) -> Result<Self> {
        let opts = params.session_options()?;
        let config = &start.config;
        let trained = Trained::of(params);
        // Frozen tables in their stored 16-bit type are the host trainer's (the device one
        // uploads f32 weights).
        let half_dtypes = match pipe_onnx::state_on_device(opts.device) {
            true => BTreeMap::new(),
            false => start.half_dtypes()?,
        };
        let options = StepOptions {
            kernels: Kernels::for_device(opts.device),
            half_dtypes,
            ..options
        };
        let step = StepGraph::compile_with(config, problem, &options, trained)?;
        // Parameters with a gradient go to the flat state; the rest (the base model under
        // LoRA, the `freeze` entries) are bound read-only.
        // Frozen weights the graph reads quantized become their inputs as they are read; the
        // other frozen ones are read in place from the checkpoint's memory map (tables the
        // graph gathers from in their stored 16-bit type, as they are stored).
        let layout = &step.signature.layout;
        let (weights, frozen): (BTreeMap<_, _>, BTreeMap<_, _>) = {
            let transform = weights::for_training(&step.quantized, &step.half_tables, |name| {
                layout.entry(name).is_none()
            });
            start.weights_with(&step.specs, params.model.seed, &transform)?
        }
        .into_iter()
        .partition(|(name, _)| layout.entry(name).is_some());
        let frozen_bytes = frozen
            .values()
            .map(|t| t.shape().iter().product::<i64>() as usize * t.dtype().size())
            .sum();
        let session = Session::from_model(&step.model, &opts)?;
        // Host state on the CPU, device state on CUDA (see `pipe_onnx::step_trainer`).
        let trainer = step_trainer(session, step.signature, adamw_of(params), weights, frozen)?;
        let eval = match validation {
            Some(table) => {
                let mut g = Graph::new("finetune_eval");
                g.set_kernels(options.kernels);
                let plain = StepOptions {
                    frozen_dtype: options.frozen_dtype,
                    half_dtypes: options.half_dtypes.clone(),
                    ..StepOptions::plain(config)
                };
                let LossGraph { logits, loss, .. } =
                    loss_graph(&mut g, config, problem, &plain, trained)?;
                g.output(logits, "logits")?;
                g.output(loss, "loss")?;
                g.lower_frozen_products()?;
                Some((Session::from_model(&g.build()?, &opts)?, table))
            }
            None => None,
        };
        // Quantized weights, and tables rounded to a 16-bit type rather than read as the
        // checkpoint stores them, are not their starting values.
        let quantized = step
            .quantized
            .iter()
            .map(|q| (q.name.clone(), q.input_names()));
        let rounded = (step.half_tables.iter())
            .filter(|&(name, dtype)| options.half_dtypes.get(name) != Some(dtype))
            .map(|(name, _)| (name.clone(), vec![name.clone()]));
        let held_otherwise = quantized.chain(rounded).collect();
        Ok(Training {
            params,
            problem,
            specs: step.specs,
            trainer,
            eval,
            scratch,
            options,
            selection: params
                .select_best
                .map(|metric| Selection::new(metric, params.early_stopping_patience)),
            held_otherwise,
            frozen_bytes,
        })
    }

    /// Bytes the frozen weights take as training holds them (quantized or f32).
    pub fn frozen_bytes(&self) -> usize {
        self.frozen_bytes
    }

    /// The arenas of every session of the run on its device (the trainer's and the
    /// validation graph's), added up.
    fn device_memory(&self) -> Result<Option<MemoryStats>> {
        let mut arenas = Vec::from_iter(self.trainer.memory_stats()?);
        if let Some((session, _)) = &self.eval {
            arenas.extend(session.memory_stats()?);
        }
        Ok(MemoryStats::total(arenas))
    }

    /// The parameter list, in Hugging Face order.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Trains on `train` to the end, resuming from the scratch folder's checkpoint when there
    /// is one, and reporting progress through `reporter`.
    pub fn run(mut self, train: &TokenTable, reporter: &dyn Reporter) -> Result<Finished> {
        let p = self.params;
        let rows_per_step = p.rows_per_step();
        let steps_per_epoch = train.len().div_ceil(rows_per_step) as u64;
        let total = p.max_steps.unwrap_or(p.epochs * steps_per_epoch);
        let schedule = Schedule::new(p.lr_schedule, p.learning_rate, total, p.warmup_ratio);
        let log_path = self.scratch.join(LOG_FILE);
        let resumed_from = self.resume(&log_path, reporter)?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let bar = reporter.progress(total, "steps");
        let start = resumed_from.unwrap_or(0);
        bar.set_position(start);
        if let Some(step) = resumed_from {
            reporter.note(&format!("resumed from the checkpoint at step {step}"));
        }
        let mut smoothed: Option<f64> = None;
        let mut evaluation = None;
        let mut batches = (u64::MAX, Vec::new());
        let mut steps_done = total;
        let mut stopped_early_at = None;
        let first_step_began = Instant::now();
        for step in start..total {
            let epoch = step / steps_per_epoch;
            if batches.0 != epoch {
                batches = (
                    epoch,
                    train.epoch_batches(rows_per_step, p.seed, epoch, p.shuffle),
                );
            }
            let rows = &batches.1[(step % steps_per_epoch) as usize];
            let lr = schedule.rate(step);
            let began = Instant::now();
            let StepTotals {
                loss,
                grad_norm,
                tokens,
            } = self.optimizer_step(train, step, rows, lr)?;
            let seconds = began.elapsed().as_secs_f64();
            if !loss.is_finite() {
                return Err(NonFiniteLoss {
                    loss,
                    step: step + 1,
                }
                .into());
            }
            let ema = smoothed.map_or(loss, |s| 0.9 * s + 0.1 * loss);
            smoothed = Some(ema);
            let done = step + 1;
            let epoch_f = done as f64 / steps_per_epoch as f64;
            write_line(
                &mut log,
                json!({
                    "step": done, "epoch": round4(epoch_f), "loss": loss, "lr": lr,
                    "grad_norm": grad_norm, "tokens": tokens, "seconds": seconds,
                    "tokens_per_s": (tokens as f64 / seconds).round(),
                }),
            )?;
            bar.set_position(done);
            bar.set_message(format!(
                "epoch {:.2} · loss {ema:.4} · {:.0} tok/s",
                epoch_f,
                tokens as f64 / seconds
            ));
            let epoch_end = done % steps_per_epoch == 0 || done == total;
            let every = |n: u64| n > 0 && done % n == 0;
            if self.eval.is_some() && (epoch_end || every(p.eval_every)) {
                let e = self.evaluate()?;
                write_line(
                    &mut log,
                    json!({"step": done, "epoch": round4(epoch_f), "eval_loss": e.loss, "eval_accuracy": e.accuracy}),
                )?;
                reporter.note(&format!(
                    "step {done}: validation loss {:.4} · accuracy {:.3}",
                    e.loss, e.accuracy
                ));
                evaluation = Some(e);
                if self.select(done, e, &mut log, reporter)? == Verdict::Stop {
                    steps_done = done;
                    stopped_early_at = Some(done);
                    break;
                }
            }
            if done < total && (epoch_end || every(p.checkpoint_every)) {
                let mut best = BTreeMap::new();
                let position = Position {
                    step: done,
                    log_bytes: log.metadata()?.len(),
                    selection: self.selection.as_ref().map(|s| s.save_into(&mut best)),
                };
                checkpoint::save(self.scratch, position, self.trainer.as_ref(), &best)?;
            }
        }
        bar.finish_and_clear();
        if evaluation.is_none() && self.eval.is_some() {
            evaluation = Some(self.evaluate()?);
        }
        let best = self.selection.as_ref().and_then(Selection::best);
        let mut weights = match self.selection.take().and_then(Selection::into_weights) {
            Some(best) => best,
            None => self.trainer.params()?,
        };
        weights.extend(self.frozen_weights());
        Ok(Finished {
            unchanged: self.held_otherwise.keys().cloned().collect(),
            state_on_device: self.trainer.state_on_device(),
            // Statistics for the metrics only: a trained model is not lost for want of them.
            device_memory: self.device_memory().unwrap_or(None),
            weights,
            steps: steps_done,
            evaluation,
            resumed_from,
            first_step_began,
            best,
            stopped_early_at,
        })
    }

    /// The frozen weights the trainer held as they start (f32, or 16-bit as the checkpoint
    /// stores them), handed over (it can run no step after); those it held quantized or
    /// rounded are left out: [`Finished::weight`] reads them again.
    fn frozen_weights(&mut self) -> BTreeMap<String, HostTensor> {
        let mut frozen: BTreeMap<String, HostTensor> =
            self.trainer.take_frozen().into_iter().collect();
        for name in self.held_otherwise.values().flatten() {
            frozen.remove(name);
        }
        frozen
    }

    /// The optimizer step after `step` completed ones, on `rows` (of `train`): their
    /// micro-batches of `batch_size` rows, each run with its own dropout masks and its
    /// gradient accumulated times its share of the step's loss denominator, then one update
    /// at learning rate `lr`. Without accumulation `rows` is one micro-batch of share 1.
    fn optimizer_step(
        &mut self,
        train: &TokenTable,
        step: u64,
        rows: &[usize],
        lr: f64,
    ) -> Result<StepTotals> {
        let denominator = self.options.loss_denominator(train, rows);
        let mut totals = StepTotals {
            loss: 0.0,
            grad_norm: None,
            tokens: 0,
        };
        for (micro, part) in rows.chunks(self.params.batch_size).enumerate() {
            let (feeds, tokens) = train.batch(part)?;
            let masks = self.dropout_masks(step, micro as u64, &feeds)?;
            let feeds: Vec<(&str, &HostTensor)> = feeds
                .iter()
                .map(|(k, v)| (*k, v))
                .chain(masks.iter().map(|(k, v)| (k.as_str(), v)))
                .collect();
            let share = self.options.loss_denominator(train, part) / denominator;
            let result = self.trainer.accumulate(&feeds, share as f32)?;
            totals.loss += share * f64::from(result.loss);
            totals.tokens += tokens;
        }
        totals.grad_norm = self.trainer.apply(lr as f32)?;
        Ok(totals)
    }

    /// The dropout masks of micro-batch `micro` of the step after `step` completed ones,
    /// for the batch `feeds`.
    fn dropout_masks(
        &self,
        step: u64,
        micro: u64,
        feeds: &[(&str, HostTensor)],
    ) -> Result<Vec<(String, HostTensor)>> {
        if self.options.dropout.is_empty() {
            return Ok(Vec::new());
        }
        let index = feeds
            .iter()
            .find_map(|(name, t)| (*name == "token_index").then_some(t))
            .context("a batch without token_index")?;
        let (b, s) = (index.shape()[0] as usize, index.shape()[1] as usize);
        self.options
            .dropout
            .masks(self.params.seed, step, micro, b, s)
    }

    /// Feeds the evaluation of the weights after step `done` to `select_best`, logging an
    /// early stop.
    fn select(
        &mut self,
        done: u64,
        e: Evaluation,
        log: &mut File,
        reporter: &dyn Reporter,
    ) -> Result<Verdict> {
        let Some(selection) = &mut self.selection else {
            return Ok(Verdict::NoBetter);
        };
        let trainer = self.trainer.as_ref();
        let verdict = selection.observe(done, e, || Ok(trainer.params()?))?;
        if verdict == Verdict::Stop {
            let best = selection.best().map(|b| b.step);
            let patience = selection.patience();
            write_line(
                log,
                json!({"step": done, "early_stop": true, "patience": patience, "best_step": best}),
            )?;
            reporter.note(&format!(
                "stopped early at step {done}: no better validation result in {} evaluations \
                 (best at step {})",
                patience.unwrap_or(0),
                best.unwrap_or(0)
            ));
        }
        Ok(verdict)
    }

    /// Loads the scratch folder's last good checkpoint into the trainer and cuts the log
    /// back to it; each checkpoint found damaged is named in a note.
    fn resume(&mut self, log_path: &Path, reporter: &dyn Reporter) -> Result<Option<u64>> {
        let log_len = fs_err::metadata(log_path).map(|m| m.len()).unwrap_or(0);
        let (found, notes) = checkpoint::load(self.scratch, log_len)?;
        for note in notes {
            reporter.note(&note);
        }
        let Some((position, mut state)) = found else {
            // A log without a checkpoint belongs to a run killed before its first one.
            if log_path.exists() {
                fs_err::remove_file(log_path)?;
            }
            return Ok(None);
        };
        if let Some(selection) = &mut self.selection {
            selection.restore_from(position.selection, &mut state)?;
        }
        for (name, value) in &state {
            self.trainer.set_state(name, value)?;
        }
        self.trainer.set_steps_done(position.step);
        let log = OpenOptions::new()
            .write(true)
            .open(log_path)
            .with_context(|| {
                format!("the checkpoint has no training log {}", log_path.display())
            })?;
        log.set_len(position.log_bytes)?;
        Ok(Some(position.step))
    }

    /// Loss and accuracy of the current weights on the validation split.
    fn evaluate(&mut self) -> Result<Evaluation> {
        let weights = self.trainer.params()?;
        let frozen = self.trainer.frozen();
        let Some((session, table)) = &mut self.eval else {
            bail!("no validation split to evaluate on");
        };
        let (mut loss_sum, mut right, mut rows_seen) = (0.0, 0usize, 0usize);
        for rows in table.in_order(self.params.batch_size) {
            let (batch, _) = table.batch(&rows)?;
            let mut feeds: Vec<(&str, &HostTensor)> = batch.iter().map(|(k, v)| (*k, v)).collect();
            feeds.extend(weights.iter().map(|(k, v)| (k.as_str(), v)));
            feeds.extend(frozen.iter().map(|(k, v)| (k.as_str(), v)));
            let out = session.run(&feeds)?;
            let loss = out
                .get("loss")
                .map(HostTensor::to_f64_vec)
                .unwrap_or_default();
            let logits = out
                .get("logits")
                .context("the evaluation graph lost its logits")?;
            let labels = batch
                .iter()
                .find_map(|(name, t)| (*name == "labels").then_some(t))
                .context("a batch without labels")?;
            loss_sum += loss.first().copied().unwrap_or(f64::NAN) * rows.len() as f64;
            right += correct(self.problem, logits, labels);
            rows_seen += rows.len();
        }
        Ok(Evaluation {
            loss: loss_sum / rows_seen.max(1) as f64,
            accuracy: right as f64 / rows_seen.max(1) as f64,
        })
    }
}

/// AdamW as the parameters ask for it.
fn adamw_of(params: &Params) -> AdamW {
    AdamW {
        beta1: params.adam_beta1,
        beta2: params.adam_beta2,
        eps: params.adam_epsilon,
        weight_decay: params.weight_decay,
        max_grad_norm: params.max_grad_norm,
    }
}

/// The compiled training step of a classifier: one ONNX model that takes the batch
/// (`token_ids`, `token_index`, `lengths`, `labels`) and the parameters, and returns the loss
/// and every parameter's gradient (AdamW runs on the flat state, see
/// [`pipe_onnx::step_trainer`]).
pub struct StepGraph {
    /// The step model.
    pub model: pipe_onnx::Model,
    /// Its interface, for [`pipe_onnx::step_trainer`].
    pub signature: GradSignature,
    /// The parameters, in Hugging Face order (AdamW weight decay as `transformers.Trainer`
    /// applies it: not on biases and LayerNorm weights).
    pub specs: Vec<ParamSpec>,
    /// The frozen weights the step reads quantized ([`StepOptions::frozen_dtype`]), each fed
    /// as [`QuantizedWeight::quantize`] makes it.
    pub quantized: Vec<QuantizedWeight>,
    /// The frozen tables the step reads in a 16-bit type ([`StepOptions::half_dtypes`],
    /// `frozen_dtype: bf16`), with it, each fed as [`weights::Pending::half`] reads it.
    pub half_tables: BTreeMap<String, pipe_onnx::DType>,
}

impl StepGraph {
    /// Builds the step graph of `config` for `problem`, with gradients for the `trained`
    /// parameters only.
    pub fn compile(
        config: &dyn Architecture,
        problem: ProblemType,
        trained: Trained,
    ) -> Result<Self> {
        Self::compile_with(config, problem, &StepOptions::plain(config), trained)
    }

    /// [`Self::compile`] with the loss options and dropout of `options`.
    pub fn compile_with(
        config: &dyn Architecture,
        problem: ProblemType,
        options: &StepOptions,
        trained: Trained,
    ) -> Result<Self> {
        let mut g = Graph::new("finetune_step");
        g.set_kernels(options.kernels);
        // No logits output: the step needs only the loss, and every output is copied to the host.
        if let Some(lora) = trained.lora() {
            lora.check_targets(config, config.model_type())
                .map_err(|e| ParamError::new(&["lora", "targets"], format!("{e:#}")))?;
        }
        let LossGraph {
            model,
            loss,
            quantized,
            half_tables,
            ..
        } = loss_graph(&mut g, config, problem, options, trained)?;
        trained.check(model.specs(), config.num_layers())?;
        let mut train = model.train_params(&hf_trainer_decay);
        train.retain(|p| trained.takes_gradient(g.name(p.tensor)));
        let signature = build_gradient_step(&mut g, loss, &train)?;
        g.lower_frozen_products()?;
        Ok(StepGraph {
            model: g.build()?,
            signature,
            specs: model.specs().to_vec(),
            quantized,
            half_tables,
        })
    }
}

/// A classifier's forward and loss in a graph.
struct LossGraph {
    model: Box<dyn SequenceClassifier>,
    logits: pipe_onnx::Tensor,
    loss: pipe_onnx::Tensor,
    /// The frozen weights read quantized.
    quantized: Vec<QuantizedWeight>,
    /// The frozen tables read in a 16-bit type, with it.
    half_tables: BTreeMap<String, pipe_onnx::DType>,
}

/// Declares inputs (distinct-token embedding, for a gradient that is the same at any thread
/// count; see [`Tokens::Distinct`]), the model, its logits and its loss in `g`; the weights
/// `trained` leaves frozen are read in `options.frozen_dtype`.
fn loss_graph(
    g: &mut Graph,
    config: &dyn Architecture,
    problem: ProblemType,
    options: &StepOptions,
    trained: Trained,
) -> Result<LossGraph> {
    let lora = trained.lora();
    let tokens = Tokens::declare_distinct(g)?;
    let lengths = g.input(
        "lengths",
        pipe_onnx::DType::I64,
        &[pipe_onnx::Dim::from("batch")],
    )?;
    let mut model = config.classifier(g, lora)?;
    model.set_dropout(options.dropout.declare(g)?);
    let input = ClassifierInput {
        tokens,
        lengths,
        token_type_ids: None,
    };
    let logits = model.logits(g, &input)?;
    let labels = declare_labels(g, problem, config.num_labels())?;
    let loss = if options.loss.is_plain() {
        pipe_models::classifier::loss(g, logits, labels, problem)?
    } else {
        g.with_scope("loss", |g| options.loss.loss(g, logits, labels))?
    };
    let frozen: BTreeSet<String> = (model.specs().iter())
        .filter(|s| !trained.takes_gradient(&s.name))
        .map(|s| s.name.clone())
        .collect();
    let quantized = g.quantize_frozen(&frozen, options.frozen_dtype)?;
    // Frozen tables are gathered in the 16-bit type the checkpoint stores them in, else in
    // bfloat16 under `frozen_dtype: bf16`.
    let bf16 = (options.frozen_dtype == FrozenDType::Bf16).then_some(pipe_onnx::DType::BF16);
    let half: BTreeMap<String, pipe_onnx::DType> = (frozen.iter())
        .filter_map(|name| {
            let dtype = options.half_dtypes.get(name).copied().or(bf16)?;
            Some((name.clone(), dtype))
        })
        .collect();
    let half_tables = g.gather_stored_tables(&half);
    Ok(LossGraph {
        model,
        logits,
        loss,
        quantized,
        half_tables,
    })
}

/// Rows of a batch whose prediction is right, by evaluate's rules
/// ([`scoring::predicted_class`], [`scoring::predicted_positive`] on the sigmoid).
fn correct(problem: ProblemType, logits: &HostTensor, labels: &HostTensor) -> usize {
    let k = logits.shape().get(1).copied().unwrap_or(1).max(1) as usize;
    let Some(logits) = logits.as_f32() else {
        return 0;
    };
    let truth = labels.to_f64_vec();
    logits
        .chunks(k)
        .enumerate()
        .filter(|(row, l)| match problem {
            ProblemType::SingleLabelClassification => truth
                .get(*row)
                .is_some_and(|&t| t as usize == scoring::predicted_class(l)),
            ProblemType::MultiLabelClassification => l.iter().enumerate().all(|(i, &v)| {
                let p = 1.0 / (1.0 + (-v).exp());
                scoring::predicted_positive(p) == (truth.get(row * k + i) == Some(&1.0))
            }),
        })
        .count()
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn write_line(log: &mut File, value: serde_json::Value) -> Result<()> {
    let mut line = serde_json::to_vec(&value)?;
    line.push(b'\n');
    log.write_all(&line)
        .context("cannot write the training log")
}

/// Totals of a training log.
#[derive(Debug, Clone, Copy)]
pub struct LogSummary {
    /// Mean loss over every step (what `transformers.Trainer` reports as `train_loss`).
    pub mean_loss: f64,
    /// Mean loss over the steps of the last epoch.
    pub last_epoch_loss: f64,
    /// Real (unpadded) tokens per second of step time, over every step.
    pub tokens_per_s: f64,
}

impl LogSummary {
    /// Reads the training log at `path`.
    pub fn read(path: &Path) -> Result<LogSummary> {
        let text = fs_err::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut steps = Vec::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("a line of {} is not JSON", path.display()))?;
            if let Some(loss) = v.get("loss").and_then(serde_json::Value::as_f64) {
                let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
                steps.push((f("epoch"), loss, f("tokens"), f("seconds")));
            }
        }
        let mean = |xs: &[(f64, f64, f64, f64)]| {
            xs.iter().map(|s| s.1).sum::<f64>() / xs.len().max(1) as f64
        };
        let last_epoch = steps.last().map_or(0.0, |s| (s.0 - 1e-9).floor());
        let tail: Vec<_> = steps.iter().copied().filter(|s| s.0 > last_epoch).collect();
        let tokens: f64 = steps.iter().map(|s| s.2).sum();
        let seconds: f64 = steps.iter().map(|s| s.3).sum();
        Ok(LogSummary {
            mean_loss: mean(&steps),
            last_epoch_loss: mean(&tail),
            tokens_per_s: tokens / seconds.max(1e-9),
        })
    }
}
