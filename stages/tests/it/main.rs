//! Integration tests of pipe-stages: each stage kind driven through `check`
//! and `run` on fixture files built in a fresh temporary folder.

mod trained;
mod util;

// Data stages.
mod hub;
mod ingest;
mod init;
mod split;
mod tokenize;

// Models.
mod finetune;
mod gpt_neo;

// Export and evaluation: metrics against scikit-learn, the HTML report, the stages.
mod evaluate;
mod export;
mod metrics;
mod report;
