//! Integration tests of pipe-stages: each stage kind driven through `check`
//! and `run` on fixture files built in a fresh temporary folder.
#![allow(clippy::disallowed_methods)] // tests arrange files with std::fs directly

mod trained;
mod util;

// Data stages.
mod decoder_tokenizers;
mod hub;
mod ingest;
mod init;
mod split;
mod tokenize;

// Models.
mod accumulation;
mod bert;
mod checkpoints;
mod decoders;
mod distilbert;
mod dropout;
mod encoder_fixture;
mod encoder_tuning;
mod finetune;
mod finetune_selection;
mod freeze;
mod frozen_dtype;
mod gpt_neo;
mod loss;
mod minilm;
mod modernbert;
mod peft;

// Export and evaluation: metrics against scikit-learn, the HTML report, the stages.
mod evaluate;
mod export;
mod metrics;
mod report;

// Side by side: the members of a matrix.
mod compare;
