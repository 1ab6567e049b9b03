#!/usr/bin/env python3
"""Checks the sample dataset of the reference pipeline (a CSV with columns `text,label`).

Prints the number of questions per label, their length in words (min, median, mean, max),
how many use LaTeX-style math (`$...$`), and fails (exit 1) on:
- a row whose text is empty or whose label is not one of --labels;
- duplicates: two texts that are equal once lowercased with everything but letters and
  digits removed ("What is pH?" and "what is  ph" are the same question);
- near-duplicates: two texts whose sets of words and adjacent word pairs (lowercased letters
  and digits) share at least --max-similarity (default 0.8) of their union (a reworded
  question in both the train and the test split would flatter every model);
- a label with fewer than --min-per-label rows (0, the default, checks nothing).

--review T lists, without failing, the pairs whose similarity is at least T (say 0.6), to
read by eye.

Usage: python3 scripts/check-sample-data.py [CSV] [--min-per-label N] [--max-similarity S]
       [--review T] [--labels biology,chemistry,math,physics]
"""

import argparse
import csv
import re
import statistics
import sys
from collections import Counter, defaultdict

DEFAULT_CSV = "pipelines/data/student_questions.csv"
DEFAULT_LABELS = "biology,chemistry,math,physics"


def normalise(text):
    """The text lowercased, with everything but letters and digits removed."""
    return re.sub(r"[\W_]+", "", text.lower())


def shingles(text):
    """The set of lowercased words (runs of letters and digits) of a text and of its pairs
    of adjacent words, so word order counts: `1/(1 + x^2)` is not `x^2`."""
    words = re.findall(r"[^\W_]+", text.lower())
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


def similar_pairs(rows, threshold):
    """`(similarity, row, row)` for each pair of rows, not duplicates, whose shingle sets have
    a Jaccard similarity of at least `threshold` and a union of at least 6 shingles."""
    sets = [shingles(text) for _, text, _ in rows]
    keys = [normalise(text) for _, text, _ in rows]
    pairs = []
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            b = sets[j]
            union = len(a | b)
            # Equal once normalised: already reported as a duplicate.
            if keys[i] != keys[j] and union >= 6 and len(a & b) >= threshold * union:
                pairs.append((len(a & b) / union, rows[i], rows[j]))
    return pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", nargs="?", default=DEFAULT_CSV)
    parser.add_argument("--min-per-label", type=int, default=0)
    parser.add_argument("--max-similarity", type=float, default=0.8)
    parser.add_argument("--review", type=float)
    parser.add_argument("--labels", default=DEFAULT_LABELS)
    args = parser.parse_args()
    labels = args.labels.split(",")

    problems = []
    rows = []
    with open(args.csv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["text", "label"]:
            sys.exit(f"{args.csv}: header is {reader.fieldnames}, expected ['text', 'label']")
        for row in reader:
            # Line numbers as an editor shows them (the header is line 1).
            line = reader.line_num
            text, label = (row["text"] or "").strip(), row["label"]
            if not text:
                problems.append(f"{args.csv}:{line}: empty text")
            if label not in labels:
                problems.append(f"{args.csv}:{line}: label {label!r} is not one of {labels}")
            rows.append((line, text, label))

    seen = defaultdict(list)
    for line, text, label in rows:
        seen[normalise(text)].append((line, label))
    for key, where in seen.items():
        if key and len(where) > 1:
            lines = ", ".join(f"{line} ({label})" for line, label in where)
            problems.append(f"{args.csv}: lines {lines} are the same question once normalised")
    threshold = min(args.max_similarity, args.review or args.max_similarity)
    for similarity, (l1, t1, _), (l2, t2, _) in similar_pairs(rows, threshold):
        pair = f"lines {l1} and {l2} share {similarity:.0%} of their words and word pairs:\n  {t1}\n  {t2}"
        if similarity >= args.max_similarity:
            problems.append(f"{args.csv}: {pair}")
        else:
            print(f"review: {pair}")

    counts = Counter(label for _, _, label in rows)
    lengths = [len(text.split()) for _, text, _ in rows]
    latex = sum(1 for _, text, _ in rows if re.search(r"\$[^$]+\$", text))
    print(f"{args.csv}: {len(rows)} questions")
    for label in labels:
        by_label = [len(t.split()) for _, t, l in rows if l == label]
        median = statistics.median(by_label) if by_label else 0
        print(f"  {label:<10} {counts[label]:>5}  median {median:g} words")
        if counts[label] < args.min_per_label:
            problems.append(
                f"{args.csv}: {label} has {counts[label]} rows, fewer than {args.min_per_label}"
            )
    if lengths:
        print(
            f"  words: min {min(lengths)}, median {statistics.median(lengths):g}, "
            f"mean {statistics.mean(lengths):.1f}, max {max(lengths)}"
        )
    print(f"  with LaTeX-style math ($...$): {latex}")

    sys.stdout.flush()
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        sys.exit(1)
    print(f"ok: no duplicates, no pair sharing {args.max_similarity:.0%} of its words and word pairs")


if __name__ == "__main__":
    main()
