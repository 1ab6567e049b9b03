//! `pipe pull-model ID`: download a Hugging Face model into the local cache ahead of a run.

use pipe_engine::{Printer, Tone, UsageError};
use pipe_models::hub::{Hub, check_repo_id, default_hub_cache};

use crate::Verdict;
use crate::cli::PullModelArgs;

/// Downloads the model files and tokenizer of `args.repo`; a failed download is exit 1,
/// an id the hub cannot have a usage error (exit 2).
pub fn exec(args: PullModelArgs, printer: &Printer) -> anyhow::Result<Verdict> {
    check_repo_id(&args.repo).map_err(|e| UsageError(format!("`{}`: {e}", args.repo)))?;
    let hub = Hub::from_env(default_hub_cache());
    let reporter = printer.reporter("pull");
    match hub.pull_model(&args.repo, &reporter) {
        Ok(pulled) => {
            let mb = pulled.downloaded_bytes as f64 / 1e6;
            let fetched = if pulled.downloaded_bytes == 0 {
                "already in the cache".to_string()
            } else {
                format!("{mb:.1} MB downloaded")
            };
            printer.status(
                "Pulled",
                Tone::Good,
                &format!(
                    "{} at {} ({}; {fetched}) into {}",
                    args.repo,
                    pulled.commit,
                    pulled.files.join(", "),
                    pulled.snapshot.display()
                ),
            );
            Ok(Verdict::Success)
        }
        Err(error) => {
            printer.error(&error.context(format!("cannot download `{}`", args.repo)));
            Ok(Verdict::Failure)
        }
    }
}
