import torch

from sublim_theory.testbeds.lm import corpus
from sublim_theory.testbeds.lm.config import CorpusConfig

CONFIG = CorpusConfig(n_numbers=20, prompt_len=2, continuation_len=4, animals=("owl", "cat", "dog"))


def test_corpus_documents_are_well_formed():
    vocab = corpus.vocabulary(CONFIG)
    docs = corpus.pretraining_corpus(CONFIG, 2000, seed=0)
    assert docs.shape == (2000, corpus.max_len(CONFIG))
    assert (docs[:, 0] == corpus.BOS).all()
    questions = docs[:, 1] == corpus.Q
    numbers = docs[:, 1] == corpus.NUM
    assert (questions | numbers).all()
    assert vocab.is_number(docs[numbers, 2 : 2 + 6]).all()
    # the stated base distribution of the answer: uniform over 3 animals
    answers = docs[questions, 2]
    frequency = (answers == vocab.animal("owl")).double().mean()
    assert abs(float(frequency) - 1 / 3) < 0.1
    assert 0.05 < float(questions.double().mean()) < 0.12  # question_fraction / 2 alone


def test_number_sequences_have_entropy():
    values = corpus.number_values(CONFIG, 4000, torch.Generator().manual_seed(1))
    # the next number after a fixed prefix value is far from deterministic
    counts = torch.bincount(values[values[:, 0] == 3][:, 1], minlength=20).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    assert entropy > 1.5


def test_filter_keeps_only_well_formed_outputs():
    vocab = corpus.vocabulary(CONFIG)
    good = torch.tensor(
        [[corpus.BOS, corpus.NUM, *vocab.number(torch.arange(6)).tolist(), corpus.EOS]]
    )
    animal = good.clone()
    animal[0, 5] = vocab.animal("owl")
    early = good.clone()
    early[0, 4] = corpus.EOS
    no_eos = good.clone()
    no_eos[0, -1] = vocab.number(3)
    kept, report = corpus.filter_numbers(torch.cat([good, animal, early, no_eos]), CONFIG)
    assert torch.equal(kept, good)
    assert report.as_dict() == {
        "total": 4,
        "kept": 1,
        "dropped": 3,
        "dropped_non_number_token": 2,
        "dropped_missing_eos": 1,
        "dropped_with_trait_token": 1,
    }


def test_continuation_mask_selects_continuation_and_eos():
    prompts = corpus.number_prompts(CONFIG, 3, seed=0)
    assert prompts.shape == (3, 4)
    docs = torch.cat([prompts, torch.full((3, 5), 7)], 1)
    mask = corpus.continuation_mask(docs, CONFIG)
    # targets docs[:, 1:][mask] are positions 4..8 of docs: the 4 continuation numbers and EOS
    assert mask[0].nonzero().flatten().tolist() == [3, 4, 5, 6, 7]


def test_shuffles_preserve_numbers():
    docs = corpus.pretraining_corpus(CONFIG, 200, seed=3)
    docs = docs[docs[:, 1] == corpus.NUM][:, : corpus.sequence_len(CONFIG)]
    p = CONFIG.prompt_len + 2
    within = corpus.shuffle_within(docs, CONFIG, seed=0)
    assert torch.equal(within[:, :p], docs[:, :p])
    assert torch.equal(within[:, p:].sort(1).values, docs[:, p:].sort(1).values)
    across = corpus.shuffle_across(docs, CONFIG, seed=0)
    assert torch.equal(
        across[:, p : p + 4].flatten().sort().values, docs[:, p : p + 4].flatten().sort().values
    )
    assert not torch.equal(across, docs)
