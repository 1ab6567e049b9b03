//! Integration tests of pipe-stages: each stage kind driven through `check`
//! and `run` on fixture files built in a fresh temporary folder.

mod util;

// Data stages.
mod ingest;
mod init;
mod split;
mod tokenize;

// Models.
mod finetune;
mod gpt_neo;

// Evaluation: metrics against scikit-learn, the HTML report.
mod metrics;
mod report;
