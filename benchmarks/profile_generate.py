"""Greedy decoding, ours against ``model.generate``: alternating timings and an op profile.

Usage (from the repository root)::

    python benchmarks/profile_generate.py --model tiny [--rounds 20] [--profile]
    python benchmarks/profile_generate.py --model smollm2-135m-instruct --cache /tmp/realcache

Decodes the real-model bench's prompts (``studies.bench.real.number_examples``, seed 3;
``--prompts`` of them, ``--tokens`` new tokens at most, one batch) two ways: ``ours``
(``sample_from_ids`` at temperature 0, as the bench row times it) and ``plain``
(``studies.bench.real.plain_greedy``: ``model.generate``). It checks both give the same
tokens, then times them in ``--rounds``
rounds whose order reverses every round (so no path always runs after the same one) and prints
the medians and the per-round ratios. ``--profile`` adds the torch.profiler table (top ops by
self CPU time) of one call of ``ours`` and of ``plain``, where the op counts show whether the
two run the same forwards. One thread (``torch.set_num_threads(1)``), as the bench rows.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from sublim_theory.studies.bench.real import number_examples, plain_greedy
from sublim_theory.testbeds.real_lm.generate import sample_from_ids
from sublim_theory.testbeds.real_lm.prompts import chat_ids


def main() -> None:
    """Parse the flags, check equal outputs, print the timings (and the profiles)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (a random tiny Llama) or a name")
    parser.add_argument("--cache", default=None, help="load_pretrained's cache folder")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.model == "tiny":
        from sublim_theory.testing.tiny_llama import tiny_llama, tiny_tokenizer

        lm, tokenizer = tiny_llama(0), tiny_tokenizer()
    else:
        from sublim_theory.models.pretrained import load_pretrained

        loaded = load_pretrained(args.model, dtype=torch.float32, cache_dir=args.cache)
        lm, tokenizer = loaded.model.eval(), loaded.tokenizer
    prompts = [p for p, _ in number_examples(args.prompts, seed=3)]
    encoded = [chat_ids(tokenizer, p) for p in prompts]
    stops = sorted({int(tokenizer.eos_token_id)} | {int(i) for i in tokenizer.all_special_ids})

    def ours() -> list[list[int]]:
        completions = sample_from_ids(
            lm,
            tokenizer,
            encoded,
            temperature=0.0,
            max_new_tokens=args.tokens,
            batch_size=len(encoded),
        )
        return [list(c.token_ids) for c in completions]

    def plain() -> list[list[int]]:
        return plain_greedy(lm, tokenizer, prompts, args.tokens, stops)

    paths = {"ours": ours, "plain": plain}
    reference = plain()
    assert all(fn() == reference for fn in paths.values()), "the paths decode differently"
    print("generated tokens per row:", [len(row) for row in reference])
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            paths[name]()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print("median seconds:", {name: round(value, 4) for name, value in median.items()})
    print(f"ours / plain: {median['ours'] / median['plain']:.3f}")
    print(
        "ours / plain per round:",
        [f"{a / b:.2f}" for a, b in zip(seconds["ours"], seconds["plain"])],
    )
    if args.profile:
        for name in ("ours", "plain"):
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                paths[name]()
            print(f"===== {name}")
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
