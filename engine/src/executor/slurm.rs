//! Running each stage as one Slurm job.
//!
//! For a stage that must run, the engine has already prepared its temporary
//! folder in the store (which must be on a filesystem the cluster's nodes
//! share). This executor writes the [`Request`] there and a batch script that
//! runs `pipe exec-stage DIR`, submits it with `sbatch --parsable` (with the
//! stage's [`Resources`] as options, its stdout and stderr appended to the
//! stage's log), then polls `scontrol show job` until the job ends: no
//! accounting database is needed. A job that ends `COMPLETED` hands back the
//! stage's outcome in its reply; any other end (`FAILED`, `CANCELLED`,
//! `TIMEOUT`, `PREEMPTED`, `OUT_OF_MEMORY`, `NODE_FAIL`, ...) fails the stage
//! with that state. Jobs are submitted with `--no-requeue`, so a preempted
//! job fails instead of silently starting over.
//!
//! A job never outlives the `pipe run` that submitted it: each job has a name
//! unique to that run of the stage and a guard process
//! ([`crate::process::spawn_guard`]), started before `sbatch`, that runs
//! `scancel --name` as soon as pipe ends, however it ends (Ctrl-C, SIGTERM,
//! SIGHUP, SIGKILL, a crash, even between `sbatch` and its answer), and an
//! error while waiting cancels the job before the stage fails.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;

use crate::executor::request::{Reply, Request, read_reply};
use crate::executor::{Executor, JobInfo, StageJob};
use crate::files;
use crate::manifest::resources::Resources;
use crate::plan::{Pipeline, PlannedStage};
use crate::process::spawn_guard;
use crate::stage::Outcome;

/// The batch script's file name in the stage's folder.
const SCRIPT_FILE: &str = "job.sh";

/// States in which a job has ended.
const FINAL_STATES: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "PREEMPTED",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
    "SPECIAL_EXIT",
    "REVOKED",
];

/// The pause between two looks at a job: short while a short job is likely to
/// end, then growing by half up to a longest pause.
const POLL: Poll = Poll {
    first: Duration::from_millis(250),
    steady_for: Duration::from_secs(5),
    longest: Duration::from_secs(2),
};

struct Poll {
    first: Duration,
    steady_for: Duration,
    longest: Duration,
}

impl Poll {
    /// The pause after `pause`, `waited` into the job.
    fn next(&self, pause: Duration, waited: Duration) -> Duration {
        if waited < self.steady_for {
            pause
        } else {
            (pause * 3 / 2).min(self.longest)
        }
    }
}

/// How many looks at a job may fail in a row before pipe gives up on it (and cancels it).
const QUERY_ATTEMPTS: u32 = 10;

/// Submits each stage as a Slurm job and waits for it.
#[derive(Debug)]
pub struct Slurm {
    /// The program and arguments a job runs, followed by the stage's folder.
    command: Vec<OsString>,
    /// The job of each stage submitted in this run.
    jobs: Mutex<BTreeMap<String, JobInfo>>,
}

impl Slurm {
    /// An executor whose jobs run `command` followed by the stage's folder
    /// (`pipe exec-stage`, see [`crate::executor::request::serve`]). Fails when
    /// the cluster does not answer.
    pub fn new(command: Vec<OsString>) -> anyhow::Result<Slurm> {
        // `sinfo` answers only when the cluster's controller does.
        let probe = Command::new("sinfo")
            .args(["--noheader", "--summarize"])
            .stdin(Stdio::null())
            .output();
        let help = "the Slurm executor needs Slurm's client commands (sbatch, scontrol, scancel, sinfo) on PATH and a cluster they reach (SLURM_CONF or /etc/slurm/slurm.conf); scripts/with-slurm.sh starts one on this machine";
        match probe {
            Err(e) => anyhow::bail!("cannot run `sinfo` ({e}): {help}"),
            Ok(out) if !out.status.success() => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let last = stderr.lines().rfind(|l| !l.trim().is_empty());
                anyhow::bail!("`sinfo` failed ({}): {help}", last.unwrap_or("no message"));
            }
            Ok(_) => {}
        }
        Ok(Slurm {
            command,
            jobs: Mutex::new(BTreeMap::new()),
        })
    }

    fn record(&self, stage: &str, id: &str, state: &str) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(
                stage.to_string(),
                JobInfo {
                    id: id.to_string(),
                    state: state.to_string(),
                },
            );
        }
    }

    /// Writes the batch script into `dir`.
    fn write_script(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let mut line = b"exec".to_vec();
        for arg in self
            .command
            .iter()
            .map(|a| a.as_bytes())
            .chain([dir.as_os_str().as_bytes()])
        {
            line.push(b' ');
            line.extend(shell_quote(arg));
        }
        let mut script = b"#!/bin/sh\n".to_vec();
        script.extend(line);
        script.push(b'\n');
        let path = dir.join(SCRIPT_FILE);
        files::write(&path, &script)?;
        Ok(path)
    }

    /// Waits until job `id` of stage `stage` has ended; returns its final state and exit code.
    fn wait(&self, stage: &str, id: &str) -> anyhow::Result<JobState> {
        let started = std::time::Instant::now();
        let mut pause = POLL.first;
        let mut failures = 0;
        let mut last = String::new();
        loop {
            match query(id) {
                Ok(state) => {
                    failures = 0;
                    if state.state != last {
                        self.record(stage, id, &state.state);
                        last = state.state.clone();
                    }
                    if FINAL_STATES.contains(&state.state.as_str()) {
                        return Ok(state);
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures >= QUERY_ATTEMPTS {
                        return Err(e.context(format!(
                            "lost track of Slurm job {id} ({failures} looks at it failed in a row)"
                        )));
                    }
                }
            }
            std::thread::sleep(pause);
            pause = POLL.next(pause, started.elapsed());
        }
    }
}

impl Executor for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn run(&self, job: &StageJob<'_>) -> anyhow::Result<Outcome> {
        let stage = job.stage;
        Request::new(stage.kind.kind(), stage.kind.version(), job.ctx)?.write(job.work_dir)?;
        let work_dir = std::path::absolute(job.work_dir)?;
        let script = self.write_script(&work_dir)?;
        let log = std::path::absolute(job.ctx.log_path)?;
        let resources = stage.spec.resources.clone().unwrap_or_default();
        let resources = resources.or(&job.pipeline.manifest.resources);
        // Unique per run of the stage (its temp folder's name), so that the guard, started
        // before the job exists, cancels this job and no other by name.
        let unique = work_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!(
            "pipe-{}-{}-{unique}",
            job.pipeline.manifest.name, stage.name
        );
        let mut guarded = Guarded::start(name)?;
        let id = submit(&guarded.name, &resources, &log, &script)?;
        self.record(&stage.name, &id, "PENDING");
        job.ctx
            .reporter
            .note(&format!("submitted as Slurm job {}", id));
        let state = self.wait(&stage.name, &id)?;
        guarded.ended();
        let reply = read_reply(&work_dir)?;
        // The job's notes went to its log; show them here too, as a local run does.
        for note in reply.iter().flat_map(Reply::notes) {
            job.ctx.reporter.note(note);
        }
        match (state.state.as_str(), reply) {
            (
                "COMPLETED",
                Some(Reply::Done {
                    metrics, headline, ..
                }),
            ) => Ok(Outcome { metrics, headline }),
            // A bad setting: the engine names its line in the manifest, as for a local run.
            (
                _,
                Some(Reply::Failed {
                    setting: Some(setting),
                    ..
                }),
            ) => Err(anyhow::Error::new(setting)),
            (
                _,
                Some(Reply::Failed {
                    error, bad_input, ..
                }),
            ) => {
                let error = anyhow::anyhow!(
                    "{error}\n(Slurm job {} ended {}, exit code {})",
                    id,
                    state.state,
                    state.exit_code
                );
                Err(match bad_input {
                    true => crate::BadInput(error).into(),
                    false => error,
                })
            }
            (_, _) => Err(anyhow::anyhow!(
                "Slurm job {} ended {}{} without finishing the stage{}",
                id,
                state.state,
                state.describe(),
                state.advice(&resources)
            )),
        }
    }

    fn runs_here(&self) -> bool {
        false
    }

    fn job(&self, stage: &str) -> Option<JobInfo> {
        self.jobs.lock().ok()?.get(stage).cloned()
    }
}

/// A job name and its guard, started before the job is submitted: every job of that
/// name is cancelled if pipe ends, or if this is dropped before [`Guarded::ended`], so no
/// moment between `sbatch` and the guard leaves a job behind.
struct Guarded {
    name: String,
    guard: Option<Child>,
}

impl Guarded {
    fn start(name: String) -> anyhow::Result<Guarded> {
        let guard = spawn_guard("scancel --name=\"$1\" 2>/dev/null", &[&name])
            .context("cannot start the process that cancels the job if pipe dies")?;
        Ok(Guarded {
            name,
            guard: Some(guard),
        })
    }

    /// The job has ended: call the guard off.
    fn ended(&mut self) {
        self.stop_guard();
    }

    fn stop_guard(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            let _ = guard.kill();
            let _ = guard.wait();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.guard.is_some() {
            cancel(&self.name);
            self.stop_guard();
        }
    }
}

/// Submits `script` as job `name`; returns its id.
fn submit(name: &str, resources: &Resources, log: &Path, script: &Path) -> anyhow::Result<String> {
    let mut sbatch = Command::new("sbatch");
    sbatch
        .arg("--parsable")
        .arg("--no-requeue")
        .arg(format!("--job-name={name}"))
        .arg("--open-mode=append")
        .arg("--output")
        .arg(log)
        .arg("--error")
        .arg(log)
        .args(options(resources))
        .arg(script)
        .stdin(Stdio::null());
    let out = sbatch
        .output()
        .context("cannot run `sbatch` to submit the stage")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "sbatch refused the stage: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // `--parsable` prints `id` or `id;cluster`.
    let id = stdout.trim().split(';').next().unwrap_or_default();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        anyhow::bail!("sbatch answered `{}`, not a job id", stdout.trim());
    }
    Ok(id.to_string())
}

/// The sbatch options asking for `resources`.
fn options(resources: &Resources) -> Vec<String> {
    let mut options = Vec::new();
    if let Some(cpus) = resources.cpus {
        options.push(format!("--cpus-per-task={cpus}"));
    }
    if let Some(mem) = &resources.mem {
        options.push(format!("--mem={mem}"));
    }
    if let Some(gpus) = resources.gpus.filter(|&n| n > 0) {
        options.push(format!("--gres=gpu:{gpus}"));
    }
    if let Some(time) = &resources.time {
        options.push(format!("--time={time}"));
    }
    if let Some(partition) = &resources.partition {
        options.push(format!("--partition={partition}"));
    }
    if let Some(account) = &resources.account {
        options.push(format!("--account={account}"));
    }
    options
}

/// What `scontrol show job` says about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JobState {
    /// `JobState`.
    state: String,
    /// `Reason`, when not `None`.
    reason: Option<String>,
    /// `ExitCode` (`code:signal`).
    exit_code: String,
}

impl JobState {
    /// Parses one-line `scontrol show job -o` output.
    fn parse(text: &str) -> Option<JobState> {
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(JobState {
            state: field("JobState")?,
            reason: field("Reason").filter(|r| r != "None"),
            exit_code: field("ExitCode").unwrap_or_else(|| "?".into()),
        })
    }

    /// ` (reason …, exit code …)`.
    fn describe(&self) -> String {
        match &self.reason {
            Some(reason) => format!(" (reason {reason}, exit code {})", self.exit_code),
            None => format!(" (exit code {})", self.exit_code),
        }
    }

    /// What to do about how the job ended, for the states that have a usual cause.
    fn advice(&self, resources: &Resources) -> String {
        let limit = |key: &str, value: &Option<String>| match value {
            Some(v) => format!("; it ran past `resources.{key}: {v}`: raise it"),
            None => format!("; raise `resources.{key}` (the partition's default limit applies)"),
        };
        match self.state.as_str() {
            "TIMEOUT" => limit("time", &resources.time),
            "OUT_OF_MEMORY" => limit("mem", &resources.mem),
            "CANCELLED" => "; someone cancelled it (scancel)".into(),
            "PREEMPTED" => "; the scheduler preempted it for another job: run again".into(),
            "FAILED" => "; its log says why (a job that cannot read its request means the store is not on a filesystem the nodes share)".into(),
            _ => String::new(),
        }
    }
}

/// The state of job `id`.
fn query(id: &str) -> anyhow::Result<JobState> {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .stdin(Stdio::null())
        .output()
        .context("cannot run `scontrol`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "scontrol show job {id}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    JobState::parse(&text).with_context(|| format!("scontrol show job {id} printed no JobState"))
}

/// Cancels the jobs named `name`, ignoring a job that has already ended.
fn cancel(name: &str) {
    let _ = Command::new("scancel")
        .arg(format!("--name={name}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `arg` quoted for sh: in single quotes, a single quote written as `'\''`.
fn shell_quote(arg: &[u8]) -> Vec<u8> {
    let mut quoted = vec![b'\''];
    for &b in arg {
        if b == b'\'' {
            quoted.extend(b"'\\''");
        } else {
            quoted.push(b);
        }
    }
    quoted.push(b'\'');
    quoted
}

/// Warnings for stages of `ids` that ask for a CUDA device (a `device: cuda`
/// or `cuda:N` parameter) but no GPU in `resources`: on a cluster, such a job
/// lands on a node without a GPU it may use.
pub fn gpu_warnings(pipeline: &Pipeline<'_>, ids: &[usize]) -> Vec<String> {
    ids.iter()
        .map(|&id| &pipeline.stages[id])
        .filter(|stage| wants_cuda(stage) && gpus(pipeline, stage) == 0)
        .map(|stage| {
            format!(
                "stage {} asks for `device: cuda` but no GPU: add `resources: {{ gpus: 1 }}` to it, or the job runs where no GPU is reserved for it",
                stage.name
            )
        })
        .collect()
}

fn wants_cuda(stage: &PlannedStage<'_>) -> bool {
    stage
        .spec
        .params
        .get("device")
        .and_then(|d| d.as_str())
        .is_some_and(|d| d == "cuda" || d.starts_with("cuda:"))
}

fn gpus(pipeline: &Pipeline<'_>, stage: &PlannedStage<'_>) -> u32 {
    let resources = stage.spec.resources.clone().unwrap_or_default();
    resources.or(&pipeline.manifest.resources).gpus.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scontrol_lines_are_parsed() {
        let line = "JobId=7 JobName=pipe-p-train UserId=root(0) JobState=TIMEOUT Reason=TimeLimit Dependency=(null) ExitCode=0:15 RunTime=00:01:02";
        assert_eq!(
            JobState::parse(line),
            Some(JobState {
                state: "TIMEOUT".into(),
                reason: Some("TimeLimit".into()),
                exit_code: "0:15".into(),
            })
        );
        assert_eq!(
            JobState::parse("slurm_load_jobs error: Invalid job id"),
            None
        );
    }

    #[test]
    fn resources_become_sbatch_options() {
        let resources = Resources {
            cpus: Some(4),
            mem: Some("16G".into()),
            gpus: Some(2),
            time: Some("1:00:00".into()),
            partition: Some("gpu".into()),
            account: Some("ml".into()),
        };
        assert_eq!(
            options(&resources),
            [
                "--cpus-per-task=4",
                "--mem=16G",
                "--gres=gpu:2",
                "--time=1:00:00",
                "--partition=gpu",
                "--account=ml"
            ]
        );
        assert!(
            options(&Resources {
                gpus: Some(0),
                ..Resources::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn script_arguments_are_quoted() {
        assert_eq!(shell_quote(b"/a b/it's"), b"'/a b/it'\\''s'".to_vec());
    }
}
