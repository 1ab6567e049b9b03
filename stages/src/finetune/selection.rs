//! Keeping the weights of the best evaluation (`select_best`) and stopping when the metric
//! stops improving (`early_stopping_patience`), with `transformers`' rules: an evaluation
//! improves when its metric is strictly better than the best so far (lower loss, higher
//! accuracy), and training stops once `patience` evaluations in a row did not improve
//! (`EarlyStoppingCallback` with threshold 0).
//!
//! The best weights so far and the count of evaluations since are part of each checkpoint:
//! the weights as `best/<name>` tensors beside the parameters and moments, the rest in
//! [`SelectionState`], so a resumed run selects and stops exactly as an uninterrupted one.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use pipe_onnx::HostTensor;
use serde::{Deserialize, Serialize};

use super::params::SelectBest;

/// Loss and accuracy on the validation split.
#[derive(Debug, Clone, Copy)]
pub struct Evaluation {
    /// Mean loss over the rows.
    pub loss: f64,
    /// Share of rows predicted right (all labels right, for multi-label data).
    pub accuracy: f64,
}

/// Prefix of the best weights' names in a checkpoint's state file.
const BEST_PREFIX: &str = "best/";

/// The best evaluation so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// The step whose weights were evaluated.
    pub step: u64,
    /// Its validation loss.
    pub loss: f64,
    /// Its validation accuracy.
    pub accuracy: f64,
}

/// What a checkpoint keeps of the selection, besides the weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SelectionState {
    /// The best evaluation so far.
    pub best: Option<Best>,
    /// Evaluations since the best one.
    pub since_best: u64,
}

/// What an evaluation means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The best so far: its weights are kept.
    Improved,
    /// Not better; training goes on.
    NoBetter,
    /// Not better for `patience` evaluations in a row: training stops.
    Stop,
}

/// The selection of a run with `select_best`.
pub struct Selection {
    metric: SelectBest,
    patience: Option<u64>,
    state: SelectionState,
    weights: Option<BTreeMap<String, HostTensor>>,
}

impl Selection {
    /// A selection by `metric`, stopping after `patience` evaluations without improvement.
    pub fn new(metric: SelectBest, patience: Option<u64>) -> Self {
        Selection {
            metric,
            patience,
            state: SelectionState::default(),
            weights: None,
        }
    }

    /// Takes in the evaluation of the weights after `step`; `weights` gives them, and is
    /// called only when they are the best so far.
    pub fn observe(
        &mut self,
        step: u64,
        e: Evaluation,
        weights: impl FnOnce() -> Result<BTreeMap<String, HostTensor>>,
    ) -> Result<Verdict> {
        let better = match self.state.best {
            None => e.loss.is_finite() || self.metric == SelectBest::EvalAccuracy,
            Some(best) => match self.metric {
                SelectBest::EvalLoss => e.loss < best.loss,
                SelectBest::EvalAccuracy => e.accuracy > best.accuracy,
            },
        };
        if better {
            self.weights = Some(weights()?);
            self.state = SelectionState {
                best: Some(Best {
                    step,
                    loss: e.loss,
                    accuracy: e.accuracy,
                }),
                since_best: 0,
            };
            return Ok(Verdict::Improved);
        }
        self.state.since_best += 1;
        Ok(match self.patience {
            Some(p) if self.state.since_best >= p => Verdict::Stop,
            _ => Verdict::NoBetter,
        })
    }

    /// The best evaluation so far.
    pub fn best(&self) -> Option<Best> {
        self.state.best
    }

    /// The patience, when early stopping is on.
    pub fn patience(&self) -> Option<u64> {
        self.patience
    }

    /// The best weights, once an evaluation has happened.
    pub fn into_weights(self) -> Option<BTreeMap<String, HostTensor>> {
        self.weights
    }

    /// Adds the best weights to a checkpoint's `state` and returns the rest to save with it.
    pub fn save_into(&self, state: &mut BTreeMap<String, HostTensor>) -> SelectionState {
        for (name, t) in self.weights.iter().flatten() {
            state.insert(format!("{BEST_PREFIX}{name}"), t.clone());
        }
        self.state
    }

    /// Takes the best weights out of a checkpoint's `state` (leaving the trainer's tensors)
    /// and restores the selection saved with them.
    pub fn restore_from(
        &mut self,
        saved: Option<SelectionState>,
        state: &mut BTreeMap<String, HostTensor>,
    ) -> Result<()> {
        let names: Vec<String> = state
            .keys()
            .filter(|k| k.starts_with(BEST_PREFIX))
            .cloned()
            .collect();
        let mut weights = BTreeMap::new();
        for name in names {
            if let Some(t) = state.remove(&name) {
                weights.insert(name[BEST_PREFIX.len()..].to_string(), t);
            }
        }
        let saved = saved.unwrap_or_default();
        if saved.best.is_some() == weights.is_empty() {
            bail!(
                "the checkpoint's best weights and its selection state disagree; delete the \
                 scratch folder to start over"
            );
        }
        self.state = saved;
        self.weights = (!weights.is_empty()).then_some(weights);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(loss: f64, accuracy: f64) -> Evaluation {
        Evaluation { loss, accuracy }
    }

    fn none() -> Result<BTreeMap<String, HostTensor>> {
        Ok(BTreeMap::new())
    }

    #[test]
    fn loss_must_fall_strictly_and_patience_counts_evaluations_in_a_row() {
        let mut s = Selection::new(SelectBest::EvalLoss, Some(2));
        assert_eq!(
            s.observe(1, eval(1.0, 0.1), none).unwrap(),
            Verdict::Improved
        );
        assert_eq!(
            s.observe(2, eval(1.0, 0.9), none).unwrap(),
            Verdict::NoBetter
        );
        assert_eq!(
            s.observe(3, eval(0.5, 0.0), none).unwrap(),
            Verdict::Improved
        );
        assert_eq!(
            s.observe(4, eval(0.6, 0.0), none).unwrap(),
            Verdict::NoBetter
        );
        assert_eq!(s.observe(5, eval(0.5, 0.0), none).unwrap(), Verdict::Stop);
        assert_eq!(s.best().map(|b| b.step), Some(3));
    }

    #[test]
    fn accuracy_must_rise_strictly() {
        let mut s = Selection::new(SelectBest::EvalAccuracy, None);
        assert_eq!(
            s.observe(1, eval(1.0, 0.5), none).unwrap(),
            Verdict::Improved
        );
        assert_eq!(
            s.observe(2, eval(0.1, 0.5), none).unwrap(),
            Verdict::NoBetter
        );
        assert_eq!(
            s.observe(3, eval(2.0, 0.6), none).unwrap(),
            Verdict::Improved
        );
        for step in 4..10 {
            assert_eq!(
                s.observe(step, eval(2.0, 0.1), none).unwrap(),
                Verdict::NoBetter
            );
        }
        assert_eq!(s.best().map(|b| b.step), Some(3));
    }
}
