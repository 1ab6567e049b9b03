//! The lockfile `pipe metrics --diff` compares with: one from a git revision,
//! or the one `pipe run` kept before its last change.

use std::fmt;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, bail};
use pipe_engine::UsageError;
use pipe_engine::lockfile::{LockFile, previous_lock_path};

/// What `--diff` compares with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baseline {
    /// The lockfile at a git revision.
    Git(String),
    /// The lockfile before the last run that changed it.
    Previous,
}

impl fmt::Display for Baseline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Baseline::Git(rev) => write!(f, "{rev}"),
            Baseline::Previous => write!(f, "the previous run"),
        }
    }
}

/// The word that asks for [`Baseline::Previous`].
const PREVIOUS: &str = "previous";

/// The way out when git cannot answer.
const INSTEAD: &str = "compare with the previous run instead: `pipe metrics --diff previous`";

impl Baseline {
    /// Settles `--diff [REV]` for the lockfile `lock_file`: `previous`, a git revision, or (no
    /// REV) HEAD when HEAD holds the lockfile, and else the previous run (outside git, in a
    /// repository without commits, or when the lockfile was never committed), with a note
    /// saying why when git is there.
    pub fn resolve(
        rev: Option<&str>,
        lock_file: &Path,
    ) -> anyhow::Result<(Baseline, Option<String>)> {
        let dir = folder_of(lock_file);
        match rev {
            Some(PREVIOUS) => Ok((Baseline::Previous, None)),
            // git would read it as an option.
            Some(rev) if rev.starts_with('-') => Err(UsageError(format!(
                "`{rev}` is not a revision; name one such as HEAD, HEAD~1 or main"
            ))
            .into()),
            Some(rev) => Ok((Baseline::Git(rev.to_string()), None)),
            None => {
                let succeeds = |args: &[&str]| git(dir, args).is_ok_and(|out| out.status.success());
                if !succeeds(&["rev-parse", "--is-inside-work-tree"])
                    || !succeeds(&["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])
                {
                    return Ok((Baseline::Previous, None));
                }
                let name = lock_file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if succeeds(&["cat-file", "-e", &format!("HEAD:./{name}")]) {
                    Ok((Baseline::Git("HEAD".into()), None))
                } else {
                    let note = format!(
                        "`{}` is not committed in HEAD; comparing with the previous run \
                         (commit the lockfile to compare with git)",
                        lock_file.display()
                    );
                    Ok((Baseline::Previous, Some(note)))
                }
            }
        }
    }

    /// Reads the baseline of the lockfile `lock_file`, whose store is `store_dir`.
    pub fn read(&self, lock_file: &Path, store_dir: &Path) -> anyhow::Result<LockFile> {
        match self {
            Baseline::Git(rev) => read_at_revision(rev, lock_file),
            Baseline::Previous => {
                let path = previous_lock_path(store_dir, lock_file);
                if !path.exists() {
                    bail!(
                        "no previous lockfile for `{}` yet: `pipe run` keeps one when a run changes the lockfile",
                        lock_file.display()
                    );
                }
                LockFile::load(&path)
            }
        }
    }
}

/// `lock_file` as committed at `rev`, through `git show REV:./NAME` run in its folder.
fn read_at_revision(rev: &str, lock_file: &Path) -> anyhow::Result<LockFile> {
    let dir = folder_of(lock_file);
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    if !top.status.success() {
        bail!(
            "`{}` is not in a git repository; {INSTEAD}",
            std::path::absolute(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .display()
        );
    }
    let top = String::from_utf8_lossy(&top.stdout).trim().to_string();
    let commit = format!("{rev}^{{commit}}");
    if !git(dir, &["rev-parse", "--verify", "--quiet", &commit])?
        .status
        .success()
    {
        bail!("`{rev}` is not a revision of the git repository at `{top}`; {INSTEAD}");
    }
    let name = lock_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let shown = git(dir, &["show", &format!("{rev}:./{name}")])?;
    if !shown.status.success() {
        let cause = String::from_utf8_lossy(&shown.stderr).trim().to_string();
        return Err(anyhow::anyhow!(cause)).context(format!(
            "`{}` is not in revision {rev}; commit it, or name another revision, or {INSTEAD}",
            lock_file.display()
        ));
    }
    let text = String::from_utf8(shown.stdout)
        .with_context(|| format!("`{rev}:{}` is not UTF-8 text", lock_file.display()))?;
    LockFile::parse(&text, &format!("{rev}:{}", lock_file.display()))
}

/// The folder of `path`, `.` for a bare file name.
fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Runs `git ARGS` in `dir` and collects its output; an error only when git cannot start.
fn git(dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                anyhow::anyhow!("git is not installed (or not on PATH); {INSTEAD}")
            }
            _ => anyhow::Error::new(e).context("cannot run git"),
        })
}
