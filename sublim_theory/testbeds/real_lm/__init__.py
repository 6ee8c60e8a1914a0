"""The paper's number experiment on a real pretrained chat LM (SmolLM2-135M-Instruct).

Library functions, one concern per module: ``prompts`` (text, filter, grammar), ``generate``
(batched sampling, free or grammar-constrained), ``train`` (students and the fine-tuned teacher),
``evaluate`` (animal share and log-probability), ``forecast`` (the first-order power check),
``classifier`` (telling teacher numbers from base numbers), ``controls`` (shuffled numbers, the
in-context control), ``statistics`` (intervals). Every function takes (model, tokenizer).
"""

__all__: list[str] = []  # the modules are the public surface
