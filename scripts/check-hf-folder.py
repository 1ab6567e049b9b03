#!/usr/bin/env python3
"""Checks that a `model/` folder pipe wrote works in transformers for what people do with it:
`AutoModelForSequenceClassification.from_pretrained`, then a forward on a batch of padded
rows, whose logits must equal those of each row run alone.

    python3 scripts/check-hf-folder.py MODEL_DIR TOKENIZER_JSON [TEXT ...]

Needs torch and transformers (not in CI). Exits 1 when transformers refuses the batch or
the batch's logits differ from the rows' by more than 1e-4.
"""
import sys

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast


def main() -> int:
    model_dir, tokenizer_file, *texts = sys.argv[1:]
    texts = texts or [
        "What is the derivative of x squared?",
        "Which organelle makes ATP in a cell, and why does it matter so much for muscles?",
        "Balance this equation: H2 + O2 -> H2O",
    ]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=tokenizer_file)
    rows = [tokenizer.encode(t) for t in texts]
    pad = model.config.pad_token_id
    longest = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (longest - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask).logits
        alone = [model(input_ids=torch.tensor([r])).logits[0] for r in rows]
    diff = max((batch[i] - alone[i]).abs().max().item() for i in range(len(rows)))
    print(f"{len(rows)} padded rows (longest {longest}, pad id {pad}): logits {tuple(batch.shape)}, "
          f"max difference to each row alone {diff:.2e}")
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
