"""The tokenizer rule's document choice (a content-hash sample) and its digit splitting, in process.

Real `tokenizers` training on ~0.6 MB of the standard library plus arithmetic lines;
the CLI end-to-end proofs (early cutoff, pin) are in tests/test_tokenizer.py.
"""
from __future__ import annotations

import glob
import os
import random
import re
import sysconfig

import pytest

from forgebuild.hashing import bytes_digest
from forgebuild.rules.corpus import is_held_out
from forgebuild.rules.tokenizer import HASH_SPACE, Params, chosen, sample_bound, sample_hash, train, unladdered

TRICKY = "x = 12345 + 3.14e10  # café ☕ 😀 \x00 ٣٤ ² 007\n## h ＃＃y\t" + "=" * 40


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Python blocks and sums: digits in code and in arithmetic, where a BPE would merge them."""
    found = []
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:20]:
        with open(path, encoding="utf-8") as f:
            found += [block for block in f.read().split("\n\n\n") if block.strip()]
    rng = random.Random(0)
    sums = ((rng.randrange(1000), rng.randrange(1000)) for _ in range(1000))
    return found + [f"{a}+{b}={a + b}\n" * 3 for a, b in sums]


def digits_per_token(tokenizer) -> int:
    """The most digits any vocabulary entry decodes to."""
    return max(len(re.findall(r"\d", tokenizer.decode([i]))) for i in tokenizer.get_vocab().values())


@pytest.mark.parametrize("model", ["bpe", "unigram", "wordpiece"])
def test_split_digits_gives_every_digit_its_own_token_and_round_trips(texts, model):
    joined = train(Params(corpus="corpus:c", model=model, vocab_size=900), [texts])
    assert digits_per_token(joined) >= 2  # without the option, "12", "45"... are learned from the sums
    split = train(Params(corpus="corpus:c", model=model, vocab_size=900, split_digits=True), [texts])
    assert digits_per_token(split) == 1
    encoded = split.encode(TRICKY)
    assert split.decode(encoded.ids) == TRICKY
    assert [t for t in encoded.tokens if t.isdigit()][:5] == ["1", "2", "3", "4", "5"]
    assert split.encode("123+4567=4690").tokens == (
        ["1", "2", "3", "+", "4", "5", "6", "7", "=", "4", "6", "9", "0"])


@pytest.mark.parametrize("model", ["bpe", "unigram", "wordpiece"])
def test_the_trained_tokenizer_does_not_depend_on_the_order_of_the_documents(texts, model):
    p = Params(corpus="corpus:c", model=model, vocab_size=900, split_digits=True)
    shuffled = texts[:]
    random.Random(1).shuffle(shuffled)
    first = train(p, [texts]).to_str()
    assert train(p, [shuffled[:700], shuffled[700:]]).to_str() == first


def test_characters_the_unigram_trainer_puts_back_get_their_scores_in_text_order():
    # Its hash-set order matched "§" and "ħ" to -14.635944 and -14.636044 one run, the other way the next
    # (3.3 MB, vocab 1200, 2 threads); "¡" is learned at the lowest score, "ab" is not a character.
    one = {"ab": -14.636044, "¡": -14.636044, "§": -14.635944, "ħ": -14.636044, "c": -9.5}
    other = {**one, "§": -14.636044, "ħ": -14.635944}
    assert unladdered(one) == unladdered(other) == {
        "ab": -14.636044, "¡": -14.635944, "§": -14.636044, "ħ": -14.636044, "c": -9.5}


def test_the_sample_is_a_quarter_of_the_documents_and_independent_of_the_corpus_holdout():
    documents = [f"document {i}\n" for i in range(4000)]
    sampled = [t for t in documents if sample_hash(t) < HASH_SPACE // 4]
    assert 0.23 < len(sampled) / len(documents) < 0.27
    # The corpus holds out the lowest BLAKE3(text): an unsalted sample of the lowest quarter
    # would be 40% holdout at holdout = 0.1; salted it is the corpus's 10%.
    held = sum(is_held_out(bytes_digest(t.encode()), 0.1) for t in sampled)
    assert 0.08 < held / len(sampled) < 0.12


def test_a_byte_budget_is_taken_in_hash_order_whatever_the_order_and_ignores_documents_above_it():
    documents = [f"line {i} " * (1 + i % 7) for i in range(600)]
    bound = sample_bound([documents], 0.5, 2000)
    counted = {"documents": 0, "bytes": 0}
    kept = [t for batch in chosen([documents], bound, counted) for t in batch]
    last = max(kept, key=sample_hash)
    assert counted["bytes"] >= 2000 > counted["bytes"] - len(last.encode())  # the one reaching it included
    assert all(sample_hash(t) < HASH_SPACE // 2 for t in kept) and counted["documents"] == len(kept) < 300
    assert sample_bound([documents[::-1][:100], documents[::-1][100:]], 0.5, 2000) == bound
    above = next(t for t in (f"new {i}" for i in range(1000)) if sample_hash(t) >= bound)
    below = next(t for t in (f"new {i}" for i in range(1000)) if sample_hash(t) < bound)
    assert sample_bound([documents + [above]], 0.5, 2000) == bound
    assert sample_bound([documents + [below]], 0.5, 2000) <= bound
    assert sample_bound([documents], 1.0, None) == HASH_SPACE  # everything, nothing hashed
