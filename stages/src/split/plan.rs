//! Deciding how many rows of each group go to each split.
//!
//! Each group (a label's rows when stratifying, else all rows) is cut in
//! three: its first rows go to train, the next to validation, the last to
//! test. A group of `n` rows gets, for each split, the floor or the ceiling of
//! `n × fraction`, so every split holds each label's share to within one row.
//! Which splits get a ceiling is decided group by group in favour of the split
//! whose running total lags its target most, which keeps the split sizes
//! within about a row of `N × fraction` overall. A non-empty group always
//! keeps at least one training row.

/// The splits, in the order rows are dealt to them.
pub(crate) const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// Deals the rows of `groups` (row indices, each group in dealing order) to
/// train, validation and test in the proportions `fractions` (same order,
/// summing to 1).
pub(crate) fn deal(groups: &[Vec<usize>], fractions: [f64; 3]) -> [Vec<usize>; 3] {
    let mut splits: [Vec<usize>; 3] = Default::default();
    let mut expected = [0.0f64; 3];
    let mut assigned = [0usize; 3];
    for group in groups {
        let n = group.len();
        let quota = fractions.map(|f| n as f64 * f);
        let mut count = quota.map(|q| q.floor() as usize);
        if count[0] == 0 && n > 0 {
            count[0] = 1;
        }
        for s in 0..3 {
            expected[s] += quota[s];
        }
        let mut remaining = n.saturating_sub(count.iter().sum());
        while remaining > 0 {
            let lag = |s: usize| expected[s] - (assigned[s] + count[s]) as f64;
            let Some(s) = (0..3)
                .filter(|&s| (count[s] as f64) < quota[s].ceil())
                .max_by(|&a, &b| lag(a).total_cmp(&lag(b)).then(b.cmp(&a)))
            else {
                break;
            };
            count[s] += 1;
            remaining -= 1;
        }
        // Train absorbs whatever rounding left over.
        count[0] = n.saturating_sub(count[1] + count[2]);
        let mut rows = group.iter().copied();
        for s in 0..3 {
            splits[s].extend(rows.by_ref().take(count[s]));
            assigned[s] += count[s];
        }
    }
    splits
}

#[cfg(test)]
mod tests {
    use super::deal;

    #[test]
    fn each_group_keeps_its_share_within_one_row() {
        let groups: Vec<Vec<usize>> = [1usize, 2, 3, 7, 10, 33]
            .iter()
            .scan(0, |start, &n| {
                let group: Vec<usize> = (*start..*start + n).collect();
                *start += n;
                Some(group)
            })
            .collect();
        let fractions = [0.7, 0.1, 0.2];
        let splits = deal(&groups, fractions);
        for group in &groups {
            for (s, split) in splits.iter().enumerate() {
                let got = split.iter().filter(|i| group.contains(i)).count() as f64;
                let want = group.len() as f64 * fractions[s];
                assert!(
                    (got - want).abs() < 1.0 || (s == 0 && got == 1.0),
                    "{got} vs {want}"
                );
            }
            assert!(splits[0].iter().any(|i| group.contains(i)));
        }
        assert_eq!(splits.iter().map(Vec::len).sum::<usize>(), 56);
    }
}
