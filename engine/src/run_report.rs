//! What a run did, for people (one line per stage) and for machines (`--json`).

use serde::Serialize;

use crate::hash::Digest;
use crate::printer::{Printer, Tone};

/// What happened to one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// It ran.
    Ran,
    /// It was restored from the cache.
    Cached,
    /// It failed.
    Failed,
    /// It did not run because an upstream stage failed.
    Skipped,
    /// Dry run only: it would run.
    WouldRun,
}

impl Status {
    fn verb(self) -> (&'static str, Tone) {
        match self {
            Status::Ran => ("Ran", Tone::Good),
            Status::Cached => ("Cached", Tone::Quiet),
            Status::Failed => ("Failed", Tone::Bad),
            Status::Skipped => ("Skipped", Tone::Warn),
            Status::WouldRun => ("Would run", Tone::Warn),
        }
    }
}

/// One stage of a [`RunReport`].
///
/// JSON fields (stable; new fields may be added, none renamed): `name`,
/// `kind`, `status` (`ran`, `cached`, `failed`, `skipped`, or `would_run` in a
/// dry run), `key` (hex, or null when not yet known), `seconds`, `reason`
/// (why it ran or would run, else null), `headline` (e.g. `test AUC 0.981`,
/// or null), `error` (for a failed stage, else null), `executor` (`local` or
/// `slurm` for a stage that ran or failed running, else null), `job_id` and
/// `job_state` (its Slurm job and how it ended, else null).
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// What happened.
    pub status: Status,
    /// Its key, when known.
    pub key: Option<Digest>,
    /// Wall time spent on it.
    pub seconds: f64,
    /// Why it ran or would run.
    pub reason: Option<String>,
    /// Headline metric.
    pub headline: Option<String>,
    /// The error, for a failed stage.
    pub error: Option<String>,
    /// For a failed stage: it failed on its input ([`crate::BadInput`]). Written only when
    /// true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bad_input: bool,
    /// Where it ran, when it ran.
    pub executor: Option<String>,
    /// Its cluster job, when it ran as one.
    pub job_id: Option<String>,
    /// Its cluster job's last state.
    pub job_state: Option<String>,
}

/// The result of `pipe run`, printed as one JSON document with `--json`:
/// `{"pipeline": "<name>", "ok": true|false, "stages": [StageReport…]}`,
/// stages in execution order.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The pipeline's name.
    pub pipeline: String,
    /// True when no stage failed.
    pub ok: bool,
    /// True when stages failed and each failed on its input ([`crate::BadInput`]): `pipe run`
    /// exits 2 then, as for a bad manifest. Written only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bad_input: bool,
    /// Stages in execution order.
    pub stages: Vec<StageReport>,
}

impl RunReport {
    /// Prints one line per stage to stderr.
    pub fn print_stage(printer: &Printer, stage: &StageReport, name_width: usize) {
        let (verb, tone) = stage.status.verb();
        let seconds = match stage.status {
            Status::Skipped | Status::WouldRun => String::new(),
            _ => format_seconds(stage.seconds),
        };
        let job = stage.job_id.as_ref().map(|id| match stage.status {
            Status::Ran => format!("job {id}"),
            _ => format!(
                "job {id} {}",
                stage.job_state.as_deref().unwrap_or_default()
            ),
        });
        let detail: Vec<&str> = [
            job.as_deref(),
            stage.reason.as_deref(),
            stage.headline.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut line = format!(
            "{:<name_width$} {:>7}  {}",
            stage.name,
            seconds,
            printer.dim(&detail.join(" · "))
        );
        if let Some(error) = &stage.error {
            for l in error.lines() {
                line.push_str(&format!("\n{:>9} {l}", ""));
            }
        }
        printer.status(verb, tone, line.trim_end());
    }

    /// The closing summary line.
    pub fn print_summary(&self, printer: &Printer, seconds: f64) {
        let count = |s: Status| self.stages.iter().filter(|r| r.status == s).count();
        let mut parts = vec![];
        for (status, label) in [
            (Status::Ran, "ran"),
            (Status::Cached, "cached"),
            (Status::WouldRun, "would run"),
            (Status::Failed, "failed"),
            (Status::Skipped, "skipped"),
        ] {
            let n = count(status);
            if n > 0 || matches!(status, Status::Ran | Status::Cached) {
                parts.push(format!("{n} {label}"));
            }
        }
        let (verb, tone) = if self.ok {
            ("Finished", Tone::Good)
        } else {
            ("Failed", Tone::Bad)
        };
        printer.status(
            verb,
            tone,
            &format!(
                "{} in {}: {}",
                self.pipeline,
                format_seconds(seconds),
                parts.join(", ")
            ),
        );
    }
}

/// `0.42s`, `12.3s`, `3m12s`.
pub fn format_seconds(seconds: f64) -> String {
    if seconds < 10.0 {
        format!("{seconds:.2}s")
    } else if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        format!(
            "{}m{:02}s",
            (seconds / 60.0) as u64,
            (seconds % 60.0) as u64
        )
    }
}
