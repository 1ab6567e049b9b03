//! The learning rate of each step, computed on the host and fed to the step graph.

use super::params::LrSchedule;

/// The learning rate of every step of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The shape.
    pub kind: LrSchedule,
    /// The peak rate.
    pub peak: f64,
    /// Steps in the whole run.
    pub total_steps: u64,
    /// Warm-up steps: `ceil(warmup_ratio × total_steps)`, as `transformers.TrainingArguments`
    /// computes them.
    pub warmup_steps: u64,
}

impl Schedule {
    /// A schedule of `total_steps` steps warming up over `warmup_ratio` of them.
    pub fn new(kind: LrSchedule, peak: f64, total_steps: u64, warmup_ratio: f64) -> Self {
        Schedule {
            kind,
            peak,
            total_steps,
            warmup_steps: (warmup_ratio * total_steps as f64).ceil() as u64,
        }
    }

    /// The rate of the step after `done` completed steps. Like
    /// `get_linear_schedule_with_warmup`, the first step of a warm-up uses rate 0.
    pub fn rate(&self, done: u64) -> f64 {
        match self.kind {
            LrSchedule::Constant => self.peak,
            LrSchedule::Linear if done < self.warmup_steps => {
                self.peak * done as f64 / self.warmup_steps.max(1) as f64
            }
            LrSchedule::Linear => {
                let left = self.total_steps.saturating_sub(done) as f64;
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                self.peak * (left / span).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of `transformers.get_linear_schedule_with_warmup(opt, 2, 10)` with lr 1.0:
    /// lr_lambda(s) = s/2 for s < 2, else (10 - s) / 8.
    #[test]
    fn linear_with_warmup_follows_transformers() {
        let s = Schedule::new(LrSchedule::Linear, 1.0, 10, 0.2);
        assert_eq!(s.warmup_steps, 2);
        let rates: Vec<f64> = (0..11).map(|d| s.rate(d)).collect();
        let expected = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        assert_eq!(rates, expected);
        let no_warmup = Schedule::new(LrSchedule::Linear, 2.0, 4, 0.0);
        assert_eq!(no_warmup.rate(0), 2.0);
        assert_eq!(no_warmup.rate(3), 0.5);
        assert_eq!(
            Schedule::new(LrSchedule::Constant, 3.0, 4, 0.0).rate(3),
            3.0
        );
    }
}
