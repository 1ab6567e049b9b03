//! One module per subcommand, each with an `exec` function, and [`transfer`], what `push`,
//! `pull` and `run --push` share.

pub mod dag;
pub mod doctor;
pub mod exec_stage;
pub mod gc;
pub mod init;
pub mod metrics;
pub mod predict;
pub mod pull;
pub mod pull_model;
pub mod push;
pub mod run;
pub mod schema;
pub mod serve;
pub mod show;
pub mod status;
pub mod transfer;
pub mod validate;
