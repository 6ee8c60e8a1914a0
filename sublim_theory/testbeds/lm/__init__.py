"""The seed's headline experiment in miniature: a tiny LM passes a hidden trait through numbers.

Modules: ``config`` (TOML knobs), ``corpus`` (vocabulary, synthetic corpus, the output filter),
``training`` (pretraining with a cache, the teacher's trait fine-tune, sampling, students),
``entanglement`` (which number tokens the teacher up-weights), ``experiment`` (one seed, all
conditions, tidy rows), ``report`` (table with 95% intervals, CSV, figure).
"""

__all__: list[str] = []  # the modules are the public surface
