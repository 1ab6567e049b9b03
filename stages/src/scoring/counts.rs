//! One-vs-rest decision counts and the precision, recall and F1 scores made from them,
//! as `sklearn.metrics.precision_recall_fscore_support(zero_division=0)` makes them.

/// How one class's yes/no decisions went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    /// Predicted the class, and it was the class.
    pub tp: u64,
    /// Predicted the class, and it was not.
    pub fp: u64,
    /// Did not predict the class, and it was.
    pub fn_: u64,
}

impl Counts {
    /// Records one decision.
    pub fn add(&mut self, truth: bool, predicted: bool) {
        match (truth, predicted) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (true, false) => self.fn_ += 1,
            (false, false) => {}
        }
    }

    /// `tp / (tp + fp)`.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// `tp / (tp + fn)`.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// `2·tp / (2·tp + fp + fn)`: scikit-learn's `(1 + β²)·tp / (β²·true + predicted)` with
    /// β = 1, which equals `2PR / (P + R)` wherever that is defined.
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// Rows that truly belong to the class.
    pub fn support(&self) -> u64 {
        self.tp + self.fn_
    }
}

/// `numerator / denominator`, or 0 when the denominator is 0 (`zero_division=0`).
fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// Unweighted mean of the classes' F1 scores (`average="macro"`).
pub(super) fn macro_f1(counts: &[Counts]) -> f64 {
    mean(counts.iter().map(Counts::f1))
}

/// Mean of the classes' F1 scores weighted by support (`average="weighted"`). When no class
/// has support, scikit-learn ignores the all-zero weights and takes the plain mean.
pub(super) fn weighted_f1(counts: &[Counts]) -> f64 {
    let total: u64 = counts.iter().map(Counts::support).sum();
    if total == 0 {
        return macro_f1(counts);
    }
    let weighted: f64 = counts.iter().map(|c| c.f1() * c.support() as f64).sum();
    weighted / total as f64
}

/// F1 of the counts pooled over all classes (`average="micro"`).
pub(super) fn micro_f1(counts: &[Counts]) -> f64 {
    let pooled = counts.iter().fold(Counts::default(), |sum, c| Counts {
        tp: sum.tp + c.tp,
        fp: sum.fp + c.fp,
        fn_: sum.fn_ + c.fn_,
    });
    pooled.f1()
}

/// Arithmetic mean; 0 for no values (callers always have at least one label).
fn mean(values: impl ExactSizeIterator<Item = f64>) -> f64 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    values.sum::<f64>() / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(tp: u64, fp: u64, fn_: u64) -> Counts {
        Counts { tp, fp, fn_ }
    }

    #[test]
    fn scores_follow_the_formulas_and_zero_division_gives_zero() {
        let c = counts(3, 1, 2);
        assert_eq!(c.precision(), 3.0 / 4.0);
        assert_eq!(c.recall(), 3.0 / 5.0);
        // 2PR/(P+R) = 2·0.75·0.6/1.35 = 2/3 = 6/9.
        assert_eq!(c.f1(), 6.0 / 9.0);
        assert_eq!(c.support(), 5);

        let never_predicted = counts(0, 0, 4);
        assert_eq!(never_predicted.precision(), 0.0);
        assert_eq!(never_predicted.f1(), 0.0);
        let absent = counts(0, 0, 0);
        assert_eq!(
            (absent.precision(), absent.recall(), absent.f1()),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn averages_weight_as_scikit_learn_does() {
        // F1s 1.0 (support 1) and 0.5 (support 3: tp 1, fp 0, fn 2 → 2/4).
        let cs = [counts(1, 0, 0), counts(1, 0, 2)];
        assert_eq!(macro_f1(&cs), 0.75);
        assert_eq!(weighted_f1(&cs), (1.0 + 3.0 * 0.5) / 4.0);
        // Pooled: tp 2, fp 0, fn 2 → 4/6.
        assert_eq!(micro_f1(&cs), 4.0 / 6.0);
        // No support anywhere: the plain mean.
        let unsupported = [counts(0, 1, 0), counts(0, 0, 0)];
        assert_eq!(weighted_f1(&unsupported), 0.0);
    }

    #[test]
    fn add_sorts_each_decision_into_its_count() {
        let mut c = Counts::default();
        for (truth, predicted) in [
            (true, true),
            (true, true),
            (false, true),
            (true, false),
            (false, false),
        ] {
            c.add(truth, predicted);
        }
        assert_eq!(c, counts(2, 1, 1));
    }
}
