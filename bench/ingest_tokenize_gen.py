#!/usr/bin/env python3
"""Writes a CSV of N rows (default 120,000) of ~80-character questions over 4 labels.

Usage: ingest_tokenize_gen.py OUT.csv [N]
Deterministic: the same N gives the same file.
"""
import csv
import random
import sys

SUBJECTS = {
    "physics": ["a falling ball", "light in water", "a spinning top", "heat in a metal bar", "sound in air"],
    "math": ["a prime number", "the area of a circle", "a quadratic root", "an infinite series", "a right triangle"],
    "biology": ["a dividing cell", "a leaf in autumn", "the human heart", "a growing seed", "an insect wing"],
    "history": ["the printing press", "an old trade route", "a medieval castle", "the first railway", "a lost empire"],
}
OPENERS = ["Why does", "How can we explain", "What happens to", "Can you describe", "How would you measure"]
ENDINGS = ["when the conditions change?", "in everyday life, exactly?", "according to the textbook?",
           "if we look more closely?", "over a long period of time?", "in a simple classroom test?"]


def main() -> None:
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 120_000
    rng = random.Random(42)
    labels = sorted(SUBJECTS)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "label"])
        for i in range(n):
            label = labels[i % 4]
            q = f"{rng.choice(OPENERS)} {rng.choice(SUBJECTS[label])} behave, case {i}, {rng.choice(ENDINGS)}"
            w.writerow([i, q, label])


if __name__ == "__main__":
    main()
