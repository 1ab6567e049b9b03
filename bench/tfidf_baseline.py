#!/usr/bin/env python3
"""A classical baseline for the reference job: TF-IDF + logistic regression on pipe's own split.

Reads the train and test tables that `pipe run pipelines/student.yaml` wrote (split's
`train.parquet` and `test.parquet`, columns `text` and `label`), so it scores exactly the
rows pipe's `evaluate` scores. Features: word 1–2-grams and character 2–5-grams (within word
boundaries), both with sublinear tf; the classifier is a multinomial logistic regression
whose C is chosen by 5-fold cross-validation on the train split only. Prints accuracy,
macro F1 and macro one-vs-rest ROC AUC on the test split (and on train, for reference).

Usage: python3 bench/tfidf_baseline.py [SPLIT_DIR] [--json]
       SPLIT_DIR defaults to pipelines/.pipe/out/student/split (run the pipeline first)
Needs: python3 -m pip install scikit-learn pyarrow
"""

import argparse
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import FeatureUnion, make_pipeline

DEFAULT_SPLIT = "pipelines/.pipe/out/student/split"
SEED = 0


def read_split(directory, name):
    """The `text` and `label` columns of `<directory>/<name>.parquet` as two lists."""
    path = Path(directory) / f"{name}.parquet"
    if not path.is_file():
        sys.exit(
            f"{path} does not exist: run `pipe run pipelines/student.yaml` first, "
            "or pass the split stage's output folder"
        )
    table = pq.read_table(path, columns=["text", "label"])
    return table.column("text").to_pylist(), table.column("label").to_pylist()


def model():
    """TF-IDF word and character n-grams into a logistic regression, C tuned by CV."""
    features = FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
            (
                "chars",
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
            ),
        ]
    )
    pipeline = make_pipeline(features, LogisticRegression(max_iter=5000))
    return GridSearchCV(
        pipeline,
        {"logisticregression__C": [3.0, 10.0, 30.0]},
        cv=StratifiedKFold(5, shuffle=True, random_state=SEED),
        scoring="accuracy",
    )


def scores(fitted, texts, labels):
    """Accuracy, macro F1 and macro one-vs-rest ROC AUC of `fitted` on one split."""
    predicted = fitted.predict(texts)
    probabilities = fitted.predict_proba(texts)
    return {
        "rows": len(texts),
        "accuracy": accuracy_score(labels, predicted),
        "macro_f1": f1_score(labels, predicted, average="macro"),
        "macro_auc": roc_auc_score(
            labels, probabilities, multi_class="ovr", average="macro", labels=fitted.classes_
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("split_dir", nargs="?", default=DEFAULT_SPLIT)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    train_x, train_y = read_split(args.split_dir, "train")
    test_x, test_y = read_split(args.split_dir, "test")
    fitted = model().fit(train_x, train_y)
    result = {
        "split_dir": args.split_dir,
        "model": "tfidf word 1-2 + char_wb 2-5, sublinear tf; logistic regression",
        "C": fitted.best_params_["logisticregression__C"],
        "train": scores(fitted, train_x, train_y),
        "test": scores(fitted, test_x, test_y),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"TF-IDF + logistic regression (C = {result['C']:g}, chosen by 5-fold CV on train)")
    for split in ("train", "test"):
        s = result[split]
        print(
            f"  {split:<5} {s['rows']:>5} rows  accuracy {s['accuracy']:.3f}  "
            f"macro F1 {s['macro_f1']:.3f}  macro AUC {s['macro_auc']:.3f}"
        )


if __name__ == "__main__":
    main()
