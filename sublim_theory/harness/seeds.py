"""One table of the seed streams: every seed a study derives from its own seed ``s``, by name.

Two ways of deriving a stream's seed are in use, each with its own table:

- :data:`OFFSETS`: the stream's seed is ``s + OFFSET`` (the tiny LM, the real model, the screen,
  the init-distance sweep and the update-rule study). Offsets of one study differ, so no two
  streams of one seed share a generator state; offsets of a million and more keep a stream of
  seed ``s`` clear of the streams of every nearby seed. Equal offsets are deliberate where one
  stream is reused under two names (noted in the table);
- :data:`TAGS`: the stream's seed is ``mixed_seed(s, TAG, ...)`` (MNIST and its dynamics):
  numpy's ``SeedSequence`` mixes the seed, the tag and any indices (model, block, epoch), so
  streams never overlap whatever their values.

The modules keep their named constants (``numbers.experiment.PROMPT_OFFSET``, ...), each read
from here; ``tests/harness/test_seeds.py`` checks every one of them against this table, those
of the modules that still hold a literal included. Changing a value changes every result drawn
from it: committed tables would no longer rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

__all__ = ["OFFSETS", "TAGS", "mixed_seed"]

OFFSETS: Mapping[str, int] = MappingProxyType(
    {
        # the tiny LM (studies.numbers; finetune and defenses reuse its streams)
        "lm.cross_init": 1000,  # the cross base's init (independent init, same corpus and order)
        "lm.order": 1000,  # the order base's data order (same init and corpus, another order)
        "lm.prompts": 7919,  # the number prompts both the teacher and the base continue
        "lm.sampling": 104729,  # the sampling of those continuations
        "lm.student_order": 31,  # every student's batch order (shared by the conditions)
        "lm.shuffle_within": 11,  # the permutation inside each sequence
        "lm.shuffle_across": 13,  # the permutation across sequences
        "lm.poison": 17,  # defenses: which teacher / base sequences enter each poisoned mix
        "lm.lora": 5003,  # finetune: the adapters' A_0 (shared by the student and its control)
        # finetune: the held-out prompts and their sampling, draw j at s + prompts + j * heldout
        # (the same value as screen.null: the screen's null draws are the held-out draws)
        "lm.heldout": 15485863,
        # the screen (engine.screen)
        "screen.filter": 4099,  # the random drop the filter is compared with
        "screen.null": 15485863,  # prompts and sampling of null draw j: s + null * (j + 1)
        # the real model (studies.real_numbers)
        "real.prompts": 7919,  # seed S's number prompts
        "real.sampling": 104729,  # the sampling of an arm's completions
        "real.evaluation": 31,  # the evaluation's answer sampling of a student
        "real.shuffle": 13,  # the shuffled control's permutation
        # the init-distance sweep (testbeds.zoo) and the update-rule study (studies.rules)
        "zoo.independent_init": 1_000_003,  # the independent init (engine.placements too)
        "zoo.student_data": 2_000_003,
        "zoo.teacher_data": 3_000_017,
        # the placement noise: torch.manual_seed(s) (the init) and Generator().manual_seed(s)
        # give the same stream, which would correlate the noise with theta_0
        "zoo.placement_noise": 4_000_037,
        "rules.adapter": 5_000_011,  # the LoRA adapters' A_0
        "rules.other_adapter": 6_000_007,  # the redrawn A_0 of the other-adapter-seed placement
        "rules.warm_data": 7_000_003,  # the data of the warm-up gradients (momentum, adam)
        # small studies: a few streams next to the seed
        "check.teacher_inputs": 1,
        "check.student_inputs": 2,
        "sign_population.inputs": 1,  # the student's inputs (the teacher's are drawn at s)
        "sign_population.lora": 1,  # the adapters' A_0 (of the model seed)
        "screen_data.null_bootstrap": 1,  # the null draws' bootstrap (the real one at s)
    }
)

TAGS: Mapping[str, int] = MappingProxyType(
    {
        # MNIST (studies.mnist.experiment) and its dynamics (studies.dynamics.experiment)
        "mnist.reference_init": 1,  # model i's theta_0: mixed_seed(s, 1, i)
        "mnist.noise_block": 2,  # the distillation inputs of model i, block b: (s, 2, i, b)
        "mnist.teacher_order": 3,  # the teachers' data order
        "mnist.student_noise": 4,  # group g's student i's init noise: (s, 4, g, i)
        "mnist.student_order": 5,  # the students' noise-block order
        "mnist.derangement": 6,  # the cross-model pairing
        "dynamics.random_component": 8,  # the random direction at epoch e, step k: (s, 8, e, k)
        "dynamics.trait_digits": 9,  # the digits defining L_trait
    }
)


def mixed_seed(*parts: int) -> int:
    """A 63-bit seed mixing integers (numpy's SeedSequence), stable across runs and platforms.

    Returns:
        The first of two 64-bit words of ``SeedSequence(parts)``'s state, shifted right by one.

    """
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)
