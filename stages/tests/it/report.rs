//! The HTML evaluation report, rendered from the scikit-learn fixtures' metrics: its charts,
//! its heatmap cells, its escaping, and that it names no external resource.

use pipe_stages::report::{LossCurves, Report, SplitReport, WrongExample, render};
use pipe_stages::scoring::{
    RocCurve, SplitMetrics, TaskMetrics, multi_label, one_hot, roc_curves, single_label,
};

use crate::metrics::Fixture;

/// A split of the single-label fixture: its first `rows` rows.
fn single_split(f: &Fixture, rows: usize) -> (SplitMetrics, Vec<RocCurve>) {
    let k = f.labels.len();
    let truth = &f.class_truth()[..rows];
    let probabilities = &f.probabilities[..rows * k];
    let metrics = single_label(&f.labels, truth, probabilities).unwrap();
    let roc = roc_curves(&f.labels, &one_hot(truth, k), probabilities);
    (metrics, roc)
}

fn wrong() -> Vec<WrongExample> {
    vec![
        WrongExample {
            text: "<script>alert(\"pwned\")</script> Tom & Jerry".to_string(),
            truth: "R&D".to_string(),
            predicted: "neutral".to_string(),
            confidence: 0.97,
        },
        WrongExample {
            text: "plain text".to_string(),
            truth: "negative".to_string(),
            predicted: "positive".to_string(),
            confidence: 0.8,
        },
    ]
}

fn confusion(m: &SplitMetrics) -> &Vec<Vec<u64>> {
    match &m.task {
        TaskMetrics::SingleLabel {
            confusion_matrix: Some(dense),
            ..
        } => dense,
        TaskMetrics::SingleLabel { .. } => panic!("a sparse confusion matrix"),
        TaskMetrics::MultiLabel { .. } => panic!("no confusion matrix"),
    }
}

#[test]
fn single_label_report_has_every_chart_cell_and_escaped_example() {
    let f = Fixture::load("single_label.json");
    let (train, train_roc) = single_split(&f, 60);
    let (test, test_roc) = single_split(&f, 30);
    let report = Report {
        title: "student.yaml · evaluate <&>",
        labels: &f.labels,
        splits: vec![
            SplitReport {
                name: "train",
                metrics: &train,
                roc: train_roc,
                wrong: Vec::new(),
            },
            SplitReport {
                name: "test",
                metrics: &test,
                roc: test_roc,
                wrong: wrong(),
            },
        ],
        loss_curve: LossCurves {
            train: (0..50).map(|s| (s * 10, 1.5 / (1.0 + s as f64))).collect(),
            validation: vec![(250, 0.4), (490, 0.3)],
        },
    };
    let page = render(&report).unwrap();

    // Per split a ROC chart and a heatmap, plus the loss curve.
    assert_eq!(page.matches("<svg").count(), 2 + 2 + 1);
    // One heatmap cell per confusion-matrix entry, each with its count in its tooltip.
    assert_eq!(page.matches("<rect class=\"cell\"").count(), 2 * 4 * 4);
    for m in [&train, &test] {
        for (i, row) in confusion(m).iter().enumerate() {
            for (j, count) in row.iter().enumerate() {
                let tooltip = format!(
                    "<title>true {}, predicted {}: {count} (",
                    f.labels[i], f.labels[j]
                );
                assert!(page.contains(&tooltip), "{tooltip}");
            }
        }
    }
    // One ROC line per class per split, in the legend with its AUC.
    let auc = format!(
        "{} · AUC {:.3}</li>",
        f.labels[2],
        train.per_class[2].auc.unwrap()
    );
    assert!(page.contains(&auc), "{auc}");
    // Headline numbers.
    assert!(page.contains(&train.headline()));
    assert!(page.contains(&test.headline()));
    let TaskMetrics::SingleLabel { log_loss, .. } = &train.task else {
        unreachable!()
    };
    assert!(page.contains(&format!("<td>{log_loss:.3}</td>")));

    // Escaped text, never raw markup from the data.
    assert!(page.contains("&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; Tom &amp; Jerry"));
    assert!(page.contains("<td>R&amp;D</td>"));
    assert!(page.contains("<title>student.yaml · evaluate &lt;&amp;&gt;</title>"));
    assert!(!page.contains("<script"));
    assert!(!page.contains("R&D"));

    // Self-contained: no URL, no script, nothing loaded from elsewhere.
    for forbidden in ["http://", "https://", "src=", "href=", "url(", "@import"] {
        assert!(!page.contains(forbidden), "the page contains {forbidden}");
    }
}

#[test]
fn multi_label_report_has_no_heatmap_and_says_when_there_is_no_training_log() {
    let f = Fixture::load("multi_label.json");
    let truth = f.indicator_truth();
    let metrics = multi_label(&f.labels, &truth, &f.probabilities).unwrap();
    let report = Report {
        title: "multi",
        labels: &f.labels,
        splits: vec![SplitReport {
            name: "test",
            metrics: &metrics,
            roc: roc_curves(&f.labels, &truth, &f.probabilities),
            wrong: Vec::new(),
        }],
        loss_curve: LossCurves::default(),
    };
    let page = render(&report).unwrap();
    assert_eq!(page.matches("<svg").count(), 1);
    assert_eq!(page.matches("class=\"cell\"").count(), 0);
    assert!(page.contains("No training log to show."));
    assert!(page.contains("No wrong examples to show."));
    assert!(page.contains("<th>subset accuracy</th>"));
    // The labels without a defined AUC say so.
    assert!(page.contains("never · AUC undefined"));
    assert!(page.contains("always · AUC undefined"));
}

/// 5,000 labels, 10,000 rows: `metrics.json` keeps the confusion matrix's non-zero cells
/// (not 25 million), and the report shows the 50 largest classes and confusions, saying
/// how many it left out. Sizes bounded, totals exact.
#[test]
fn five_thousand_labels_give_a_bounded_report_and_a_sparse_confusion() {
    let k = 5_000;
    let rows = 10_000;
    let labels: Vec<String> = (0..k).map(|i| format!("label-{i}")).collect();
    // Row r is of class r % k; 70% are predicted right, the rest as the next class.
    let truth: Vec<usize> = (0..rows).map(|r| r % k).collect();
    let mut probabilities = vec![0.5 / (k - 1) as f32; rows * k];
    let mut right = 0;
    for (r, &t) in truth.iter().enumerate() {
        let predicted = if r % 10 < 7 { t } else { (t + 1) % k };
        right += usize::from(predicted == t);
        probabilities[r * k + predicted] = 0.5;
    }
    let metrics = single_label(&labels, &truth, &probabilities).unwrap();
    let TaskMetrics::SingleLabel {
        accuracy,
        confusion_matrix,
        confusion_cells,
        ..
    } = &metrics.task
    else {
        panic!("single-label");
    };
    assert!(confusion_matrix.is_none());
    let cells = confusion_cells.as_ref().unwrap();
    assert!(cells.len() <= rows);
    assert_eq!(cells.iter().map(|c| c[2]).sum::<u64>(), rows as u64);
    let diagonal: u64 = cells.iter().filter(|c| c[0] == c[1]).map(|c| c[2]).sum();
    assert_eq!(diagonal, right as u64);
    assert!((accuracy - right as f64 / rows as f64).abs() < 1e-12);
    let support: u64 = metrics.per_class.iter().map(|c| c.support).sum();
    assert_eq!(support, rows as u64);
    let json = serde_json::to_string(&metrics).unwrap();
    assert!(
        json.len() < 2_000_000,
        "metrics JSON of {} bytes",
        json.len()
    );

    let drawn = metrics.top_classes(pipe_stages::report::CLASSES_SHOWN);
    assert_eq!(drawn.len(), 50);
    let roc =
        pipe_stages::scoring::roc_curves_of(&labels, &one_hot(&truth, k), &probabilities, &drawn);
    let report = Report {
        title: "many labels",
        labels: &labels,
        splits: vec![SplitReport {
            name: "test",
            metrics: &metrics,
            roc,
            wrong: wrong(),
        }],
        loss_curve: LossCurves::default(),
    };
    let html = render(&report).unwrap();
    assert!(html.len() < 1_000_000, "report of {} bytes", html.len());
    assert!(
        html.contains("4950 more left out"),
        "per-class table and ROC say so"
    );
    assert!(html.contains("Most frequent confusions"));
    assert!(
        !html.contains("class=\"heatmap\""),
        "no 5,000 × 5,000 heatmap"
    );
    let confusions = cells.iter().filter(|c| c[0] != c[1]).count();
    assert!(html.contains(&format!("{} more confusions left out", confusions - 50)));
}
