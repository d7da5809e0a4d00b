"""tokenizer: train a byte-level BPE, Unigram or WordPiece tokenizer on a corpus target.

    [tokenizer.bpe]
    corpus = "corpus:mix"      # any KIND:NAME whose artifact holds train/*.parquet with a `text` column
    vocab_size = 4096
    fim = true                 # adds <|fim_prefix|>, <|fim_middle|>, <|fim_suffix|>
    split_digits = true        # every digit its own token (LLaMA, Qwen), for arithmetic and code
    sample = 0.25              # train on a content-hash quarter: a new file changes it with p = 0.25

The artifact is a Hugging Face tokenizer folder (`AutoTokenizer.from_pretrained`
loads it): tokenizer.json, tokenizer_config.json (special tokens and the chat
template), special_tokens_map.json, and stats.json (bytes per token and
vocabulary use on the corpus holdout).

All three models pre-tokenize at byte level (GPT-2's ByteLevel), so any UTF-8
text encodes without an unknown token and decodes back to itself. Training is
made reproducible: two builds of the same inputs give the same bytes whatever
the number of threads or the order of the documents (see docs/rules/tokenizer.md,
"Determinism"). The documents it reads are chosen by a hash of their content
(`sample`, `max_train_bytes`), so adding a document outside that choice leaves
the artifact byte-identical and nothing downstream rebuilds (early cutoff);
`pin` turns any change into a failed build ("Stability").
"""
from __future__ import annotations

import glob
import heapq
import itertools
import json
import os
import re
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forgebuild import limits
from forgebuild.planning.plan import ADDRESS
from forgebuild.rules import runtime

# 2: max_train_bytes takes documents in content-hash order (was corpus order); split_digits, sample, pin
version = "2"

BYTE_ALPHABET = 256  # byte-level pre-tokenization maps every byte to one of 256 characters
# WordPiece marks a piece that continues a word with a prefix. The usual "##" is
# also text ("## Heading" in Markdown) and would decode wrongly; two fullwidth
# number signs (U+FF03) look the same and are outside the byte-level alphabet.
CONTINUATION = "\uff03\uff03"
# WordPiece encodes a longer pre-tokenized word as the unknown token; its greedy
# longest match costs O(n^2) lookups per word, so the limit stays finite.
WORDPIECE_MAX_WORD = 1000
# Unigram scores differ run to run in the last digits (the trainer sums floats in
# hash-map order); rounding to 1e-6 removes noise of ~1e-11 measured on 1 MB.
UNIGRAM_SCORE_DECIMALS = 6
UNIGRAM_LADDER_STEP = 0.0001  # the trainer's score step between the characters it puts back after EM
UNSEEN_CHAR_PENALTY = 1.0  # score below the rarest learned piece, for bytes the corpus never had
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
# Printable ASCII without space: the byte-level decoder maps other characters of a
# special token to other bytes, so the token would not decode to itself.
TOKEN_TEXT = re.compile(r"^[\x21-\x7e]+$")
HUGE_MAX_LENGTH = 1000000000000000019884624838656  # transformers' "no limit" (int(1e30))
# A document's sample hash: BLAKE3 of this prefix and its UTF-8 text, first 64 bits. The
# prefix keeps it independent of the corpus's own split, which holds out the LOWEST
# BLAKE3(text) values: an unsalted sample of the lowest 25% would be mostly holdout.
SAMPLE_SALT = b"forgebuild tokenizer sample\0"
HASH_SPACE = 2 ** 64
DIGEST = re.compile(r"^[0-9a-f]{64}$")

# ChatML, as Qwen and many others use it. The {% generation %} block marks the
# assistant's tokens, so TRL's assistant_only_loss / return_assistant_tokens_mask work.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    corpus: str = Field(description="the corpus target (KIND:NAME); its train split is the training text")
    model: Literal["bpe", "unigram", "wordpiece"] = Field("bpe", description="the tokenization model, all byte-level")
    vocab_size: int = Field(gt=0, le=limits.VOCAB, description="size of the vocabulary, special tokens and the byte alphabet included")
    min_frequency: int = Field(2, ge=0, le=limits.AMOUNT, description="bpe, wordpiece: a pair seen fewer times is never merged")
    max_train_bytes: int | None = Field(
        None, gt=0, le=limits.AMOUNT,
        description="train on documents in content-hash order up to this many UTF-8 bytes; all if unset")
    sample: float = Field(
        1.0, gt=0, le=1,
        description="train (and measure the holdout) on the documents whose content hash falls in this fraction of "
                    "the hash space: a new document changes the tokenizer with this probability")
    pin: str | None = Field(
        None, description="the artifact digest this build must produce (64 hex digits); any other fails the build")
    split_digits: bool = Field(False, description="every digit is its own token: no merge ever joins two digits")
    bos_token: str = Field("<|bos|>", description="beginning-of-sequence token; \"\" for none")
    eos_token: str = Field("<|eos|>", description="end-of-sequence token, also the document separator")
    pad_token: str = Field("<|pad|>", description="padding token; \"\" for none")
    unk_token: str | None = Field(
        None, description="unigram, wordpiece: the unknown token (default \"<|unk|>\"); byte-level BPE has none")
    fim: bool = Field(
        False, description="add the fill-in-the-middle tokens <|fim_prefix|>, <|fim_middle|>, <|fim_suffix|>")
    extra_tokens: list[str] = Field(default_factory=list, description="more special tokens, in this order")
    add_bos: bool = Field(False, description="the tokenizer puts bos_token before every encoded text (LLaMA style)")
    chat_template: str = Field(
        CHATML_TEMPLATE, description="Jinja chat template for apply_chat_template; ChatML by default, \"\" for none")
    threads: int = runtime(0, ge=0, le=limits.THREADS, description="threads for training and encoding; 0 means every core. Not in the key")


# ------------------------------------------------------------------ planning (standard library only)

def unk_of(params: Params) -> str | None:
    if params.model == "bpe":
        return None
    return params.unk_token or "<|unk|>"


def special_tokens(params: Params) -> list[str]:
    """Every special token, in id order (they take ids 0..n-1), each once."""
    chat = [t for t in CHATML_TOKENS if t in params.chat_template]
    named = [unk_of(params), params.pad_token, params.bos_token, params.eos_token]
    found = [t for t in (*named, *chat, *(FIM_TOKENS if params.fim else ()), *params.extra_tokens) if t]
    return list(dict.fromkeys(found))


def alphabet_size(params: Params) -> int:
    # WordPiece needs each byte twice: starting a word and continuing one ("＃＃x").
    return 2 * BYTE_ALPHABET if params.model == "wordpiece" else BYTE_ALPHABET


def inputs(params: Params) -> dict:
    return {"corpus": params.corpus}


def environment(params: Params) -> dict:
    return {"libraries": ["tokenizers"]}


def requires(params: Params) -> dict[str, str]:
    """What the build imports, by the extra that installs it (checked before a build starts)."""
    return {"tokenizers": "data", "pyarrow": "data"}


def check(params: Params) -> list[tuple[str, str]]:
    problems = reference_problems(params, ("corpus",))
    if params.model == "bpe" and params.unk_token is not None:
        problems.append(("unk_token", "byte-level BPE encodes every byte and never needs an unknown token; "
                                      "remove unk_token"))
    if not params.eos_token:
        problems.append(("eos_token", "must not be empty: it ends every document"))
    if params.add_bos and not params.bos_token:
        problems.append(("add_bos", "needs a bos_token"))
    if params.pin is not None and not DIGEST.match(params.pin):
        problems.append(("pin", f"{params.pin!r} is not an artifact digest: 64 hex digits, as "
                                f"`forgebuild show` prints it"))
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = getattr(params, key)
        if value and not TOKEN_TEXT.match(value):
            problems.append((key, f"{value!r}: a special token is printable ASCII without spaces"))
    problems += extra_token_problems(params)
    alphabet, specials = alphabet_size(params), len(special_tokens(params))
    if params.vocab_size <= alphabet + specials:
        problems.append(("vocab_size", f"{params.vocab_size} leaves no room to learn tokens: the {alphabet}-symbol byte "
                                       f"alphabet and {specials} special tokens take {alphabet + specials}; "
                                       f"use at least {alphabet + specials + 1}"))
    template = template_problem(params.chat_template) if params.chat_template != CHATML_TEMPLATE else None
    if template:
        problems.append(("chat_template", template))
    return problems


def reference_problems(params: BaseModel, keys) -> list[tuple[str, str]]:
    problems = []
    for key in keys:
        value = getattr(params, key)
        if not ADDRESS.match(value):
            problems.append((key, f"'{value}' is not a target reference: write KIND:NAME, e.g. '{key}:main'"))
    return problems


def extra_token_problems(params: Params) -> list[tuple[str, str]]:
    problems, seen = [], set()
    named = {params.bos_token, params.eos_token, params.pad_token, unk_of(params)}
    for i, token in enumerate(params.extra_tokens):
        if not TOKEN_TEXT.match(token):
            problems.append((f"extra_tokens.{i}", f"{token!r}: a special token is printable ASCII without spaces"))
        elif token in seen or token in named:
            problems.append((f"extra_tokens.{i}", f"'{token}' is already a special token"))
        seen.add(token)
    return problems


def template_problem(text: str) -> str | None:
    """A Jinja syntax error in a chat template, found while the Forgefile is checked."""
    if not text:
        return None
    try:
        import jinja2  # ~40 ms, only for a template other than the default
        from jinja2.ext import Extension
    except ImportError:  # transformers checks it when the template is used
        return None

    class Generation(Extension):  # transformers' {% generation %} ... {% endgeneration %}
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    try:
        jinja2.Environment(extensions=[Generation, "jinja2.ext.loopcontrols"]).parse(text)
    except jinja2.TemplateSyntaxError as e:
        return f"not a valid Jinja template: {e.message} (template line {e.lineno})"
    return None


# ------------------------------------------------------------------ the corpus contract (shared with `tokens`)

CORPUS_LAYOUT = ("a corpus artifact holds train/part-NNNNN.parquet and holdout/part-NNNNN.parquet "
                 "with a string column 'text'")


def corpus_parts(ctx, address: str, folder: str, split: str, required: bool) -> list[str]:
    """The split's Parquet parts in order; a missing train split is bad input (exit 2)."""
    parts = sorted(glob.glob(os.path.join(folder, split, "*.parquet")))
    if not parts and required:
        present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        raise ctx.bad_input(f"{address} has no {split}/*.parquet "
                            f"(its artifact holds: {', '.join(present) or 'nothing'}); {CORPUS_LAYOUT}")
    return parts


def row_count(parts: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(path).metadata.num_rows for path in parts)


def text_batches(ctx, address: str, folder: str, parts: list[str], rows: int = 1024, threads: bool = False):
    """Lists of document texts, in corpus order, streamed (a corpus may not fit in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in parts:
        name = os.path.relpath(path, folder)
        reader = pq.ParquetFile(path)
        schema = reader.schema_arrow
        if "text" not in schema.names:
            raise ctx.bad_input(f"{address}: {name} has no column 'text' (columns: {', '.join(schema.names)}); "
                                f"{CORPUS_LAYOUT}")
        kind = schema.field("text").type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ctx.bad_input(f"{address}: {name}: column 'text' holds {kind}, not strings; {CORPUS_LAYOUT}")
        for batch in reader.iter_batches(batch_size=rows, columns=["text"], use_threads=threads):
            column = batch.column(0)
            if column.null_count:
                raise ctx.bad_input(f"{address}: {name}: {column.null_count} document(s) with no text (null)")
            yield column.to_pylist()


def use_threads(threads: int) -> int:
    """Set the thread counts before tokenizers starts its pool (rayon reads them once)."""
    n = threads or available_cores()
    os.environ["RAYON_NUM_THREADS"] = str(n)
    # "false" makes encode_batch run in this thread alone: exactly 1 thread when asked for 1
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if n > 1 else "false"
    os.environ["OMP_NUM_THREADS"] = "1"  # nothing here uses OpenMP; it would only oversubscribe the cores
    return n


def available_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the whole machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def log_metrics(ctx, **values) -> None:
    """Timings stay out of the artifact (they would change its digest): build record and log."""
    ctx.metrics(values)
    ctx.log("metrics: " + json.dumps(values, sort_keys=True))


# ------------------------------------------------------------------ building

def build(ctx) -> None:
    p = ctx.params
    threads = use_threads(p.threads)
    folder = ctx.inputs["corpus"]
    train_parts = corpus_parts(ctx, p.corpus, folder, "train", required=True)
    holdout_parts = corpus_parts(ctx, p.corpus, folder, "holdout", required=False)
    if row_count(train_parts) == 0:  # some trainers panic on no text at all
        raise ctx.bad_input(f"{p.corpus}: the train split has no documents")

    def read(parts):
        return text_batches(ctx, p.corpus, folder, parts, threads=threads > 1)

    started = time.perf_counter()
    bound = sample_bound(read(train_parts), p.sample, p.max_train_bytes)
    counted = {"documents": 0, "bytes": 0}
    texts = chosen(read(train_parts), bound, counted)
    first = next(texts, None)
    if first is None:  # the trainers panic on no text at all
        raise ctx.bad_input(f"no train document of {p.corpus} falls in sample = {p.sample:g}; raise sample")
    tokenizer = train(p, itertools.chain([first], texts))
    trained = time.perf_counter() - started

    path = os.path.join(ctx.out, "tokenizer.json")
    tokenizer.save(path, pretty=True)
    write_json(os.path.join(ctx.out, "tokenizer_config.json"), tokenizer_config(p))
    write_json(os.path.join(ctx.out, "special_tokens_map.json"), special_tokens_map(p))

    started = time.perf_counter()
    holdout = holdout_stats(tokenizer, chosen(read(holdout_parts), bound, {"documents": 0, "bytes": 0}))
    stats = {"model": p.model, "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
             "vocab_size_requested": p.vocab_size, "special_tokens": len(special_tokens(p)),
             "train": {"documents": counted["documents"], "bytes": counted["bytes"]}, "holdout": holdout}
    write_json(os.path.join(ctx.out, "stats.json"), stats)
    log_metrics(ctx, threads=threads, train_seconds=round(trained, 3),
                holdout_seconds=round(time.perf_counter() - started, 3),
                train_bytes_per_second=round(counted["bytes"] / max(trained, 1e-9)))
    ctx.log(f"trained {p.model}: vocab {stats['vocab_size']}, {holdout['bytes_per_token']} bytes/token on holdout")
    check_pin(ctx, p, stats)


# ------------------------------------------------------------------ which documents: a content-hash sample

def sample_hash(text: str) -> int:
    """Where a document falls in the hash space [0, 2**64): a function of its text alone."""
    from forgebuild.hashing import bytes_digest

    return int(bytes_digest(SAMPLE_SALT + text.encode("utf-8"))[:16], 16)


def sample_bound(batches, sample: float, max_bytes: int | None) -> int:
    """The hash below which documents are read: `sample` of the hash space, lowered to where
    the documents in hash order reach max_bytes (the one that reaches it included).

    A function of the set of texts, never of their order; a document above the bound
    changes nothing, and one below it can only lower it. Holds only the documents
    within the budget (their hashes and sizes), however big the corpus.
    """
    bound = min(HASH_SPACE, round(sample * HASH_SPACE))
    if max_bytes is None:
        return bound
    heap, total = [], 0  # the lowest-hash documents that reach max_bytes; the highest hash on top (negated)
    for texts in batches:
        for text in texts:
            h = sample_hash(text)
            if h >= bound:
                continue
            size = len(text.encode("utf-8"))
            heapq.heappush(heap, (-h, size))
            total += size
            while total - heap[0][1] >= max_bytes:  # the top is not needed to reach the budget
                total -= heapq.heappop(heap)[1]
            if total >= max_bytes:
                bound = 1 - heap[0][0]
    return bound


def chosen(batches, bound: int, counted: dict):
    """The documents whose sample hash is below `bound`, in corpus order, counting as they pass."""
    for texts in batches:
        kept = texts if bound >= HASH_SPACE else [t for t in texts if sample_hash(t) < bound]
        counted["documents"] += len(kept)
        counted["bytes"] += sum(len(t.encode("utf-8")) for t in kept)
        if kept:
            yield kept


def check_pin(ctx, p: Params, stats: dict) -> None:
    """With `pin`, the artifact must be the pinned one: the digest the store will give this folder."""
    if p.pin is None:
        return
    from forgebuild.hashing import folder_digest

    digest = folder_digest(ctx.out)
    if digest != p.pin:
        train = stats["train"]
        raise ctx.bad_input(
            f"pin: this build gives {digest}, not the pinned {p.pin} (it trained on {train['documents']} documents, "
            f"{train['bytes']} bytes of {p.corpus}); to accept the new tokenizer set pin = \"{digest}\", "
            f"which rebuilds what depends on it; to keep the old one, restore its training documents")


def train(p: Params, texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = special_tokens(p)
    if p.model == "bpe":
        tokenizer = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=p.vocab_size, min_frequency=p.min_frequency, special_tokens=specials,
                                      initial_alphabet=alphabet, show_progress=False)
        decoder = decoders.ByteLevel()
    elif p.model == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=unk_of(p), max_input_chars_per_word=WORDPIECE_MAX_WORD))
        # The trainer numbers a continuation symbol ("＃＃a") when it first meets it, in
        # hash-map order, and breaks ties between equally frequent pairs by those numbers:
        # the vocabulary changed from run to run (18 of 3000 tokens on 1 MB). Declared
        # up front, as special tokens, they get fixed ids; they are made ordinary below.
        continuing = [CONTINUATION + c for c in sorted(alphabet)]
        trainer = trainers.WordPieceTrainer(vocab_size=p.vocab_size, min_frequency=p.min_frequency,
                                            special_tokens=specials + continuing, initial_alphabet=alphabet,
                                            continuing_subword_prefix=CONTINUATION, show_progress=False)
        # WordPiece's decoder joins words with spaces; byte level already carries them (as "Ġ")
        decoder = decoders.Sequence([decoders.WordPiece(prefix=CONTINUATION, cleanup=False),
                                     decoders.Replace(" ", ""), decoders.ByteLevel()])
    else:
        tokenizer = Tokenizer(models.Unigram())
        # No initial_alphabet: the trainer would score unseen characters in hash-set
        # order (a 0.0001 step each); canonical_unigram adds them in a fixed order.
        trainer = trainers.UnigramTrainer(vocab_size=p.vocab_size, special_tokens=specials, unk_token=unk_of(p),
                                          show_progress=False)
        decoder = decoders.ByteLevel()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if p.split_digits:  # digits apart before byte level, so no word (and no merge) holds two of them
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                           tokenizer.pre_tokenizer])
    tokenizer.decoder = decoder
    tokenizer.train_from_iterator(texts, trainer)
    if p.model == "wordpiece":
        tokenizer = without_added(tokenizer, CONTINUATION)
    if p.model == "unigram":
        tokenizer.model = canonical_unigram(tokenizer, specials, unk_of(p), alphabet, p.vocab_size)
    if p.add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{p.bos_token} $A", pair=f"{p.bos_token} $A {p.bos_token}:1 $B:1",
            special_tokens=[(p.bos_token, tokenizer.token_to_id(p.bos_token))])
    return tokenizer


def without_added(tokenizer, prefix: str):
    """The tokenizer with the added tokens starting with `prefix` made ordinary vocabulary again."""
    from tokenizers import Tokenizer

    data = json.loads(tokenizer.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if not t["content"].startswith(prefix)]
    return Tokenizer.from_str(json.dumps(data))


def canonical_unigram(tokenizer, specials: list[str], unk: str, alphabet: list[str], vocab_size: int):
    """The trained Unigram model in an order that does not depend on hash-map iteration.

    Special tokens first (in their declared order), then learned pieces by rounded
    score (highest first, ties by text), then the byte symbols the corpus never
    had, so that every text stays encodable. Room for those is made by dropping
    the lowest-scored learned pieces of more than one symbol.
    """
    from tokenizers import models

    pieces = json.loads(tokenizer.to_str())["model"]["vocab"]
    learned = unladdered({piece: round(score, UNIGRAM_SCORE_DECIMALS) for piece, score in pieces
                          if piece not in specials})
    unseen = [c for c in sorted(alphabet) if c not in learned]
    ranked = sorted(learned.items(), key=lambda item: (-item[1], item[0]))
    room = vocab_size - len(specials) - len(unseen)
    while len(ranked) > room:
        drop = next(i for i in range(len(ranked) - 1, -1, -1) if len(ranked[i][0]) > 1)
        del ranked[drop]
    floor = round(min((s for _, s in ranked), default=0.0) - UNSEEN_CHAR_PENALTY, UNIGRAM_SCORE_DECIMALS)
    vocab = [(t, 0.0) for t in specials] + ranked + [(c, floor) for c in unseen]
    return models.Unigram(vocab, specials.index(unk), False)


def unladdered(learned: dict[str, float]) -> dict[str, float]:
    """The scores of characters on the trainer's ladder given back in text order.

    A character seen in training but pruned by EM is put back with the lowest
    score plus 0.0001 per character already put back, in hash-set order: the
    same characters and scores, matched differently run to run (measured: 2 of
    1,200 pieces swapped on 3.3 MB with 2 threads). Every single character on a
    rung (the lowest score + k * 0.0001, k = 0, 1, ...) is matched with the
    rungs' scores in a fixed order instead: highest score to the first by text.
    """
    scale, step = 10 ** UNIGRAM_SCORE_DECIMALS, round(UNIGRAM_LADDER_STEP * 10 ** UNIGRAM_SCORE_DECIMALS)
    micro = {piece: round(score * scale) for piece, score in learned.items() if len(piece) == 1}
    if not micro:
        return learned
    low, on_ladder, k = min(micro.values()), [], 0
    while rung := [piece for piece, m in micro.items() if abs(m - (low + k * step)) <= 1]:  # +-1: rounding
        on_ladder += rung
        k += 1
    scores = sorted((learned[piece] for piece in on_ladder), reverse=True)
    return {**learned, **dict(zip(sorted(on_ladder), scores))}


def tokenizer_config(p: Params) -> dict:
    """What transformers reads beside tokenizer.json (the format of transformers 4 and 5)."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special_tokens_map(p),
              "add_bos_token": p.add_bos, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "model_max_length": HUGE_MAX_LENGTH}
    if p.chat_template:
        config["chat_template"] = p.chat_template
    return config


def special_tokens_map(p: Params) -> dict:
    named = {"bos_token": p.bos_token, "eos_token": p.eos_token, "pad_token": p.pad_token, "unk_token": unk_of(p)}
    found = {key: value for key, value in named.items() if value}
    extra = [t for t in special_tokens(p) if t not in found.values()]
    if extra:
        found["additional_special_tokens"] = extra
    return found


def holdout_stats(tokenizer, batches) -> dict:
    """Bytes per token and the share of the vocabulary used, on text the tokenizer never saw."""
    tokenizer.encode_special_tokens = True  # "<|eos|>" written in a document is text, not the token
    documents = size = tokens = 0
    seen: set[int] = set()
    for texts in batches:
        for encoding in encode(tokenizer, texts):
            seen.update(encoding.ids)
            tokens += len(encoding.ids)
        documents += len(texts)
        size += sum(len(t.encode("utf-8")) for t in texts)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    return {"documents": documents, "bytes": size, "tokens": tokens,
            "bytes_per_token": round(size / tokens, 4) if tokens else None,
            "vocab_used": len(seen), "vocab_use": round(len(seen) / vocab, 4) if tokens else None}


def encode(tokenizer, texts: list[str]):
    """Batched, parallel encoding without special tokens; without offsets where the library can."""
    fast = getattr(tokenizer, "encode_batch_fast", None)  # tokenizers >= 0.21: skips offset tracking
    return (fast or tokenizer.encode_batch)(texts, add_special_tokens=False)


def write_json(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
