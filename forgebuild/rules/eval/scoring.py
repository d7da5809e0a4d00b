"""Benchmark rows, generation, scoring, log-likelihoods, perplexity and bootstrap statistics.

Everything here works on a loaded model and tokenizer (any causal LM from transformers) and on
plain Python lists, so the `eval` rule decides caching, files and reports. Torch is imported at
the top: this module is only imported inside a build.
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch

from forgebuild.rules.rows import json_kind as _json_type
from forgebuild.rules.rows import parse_line

KINDS = ("generate", "choice")
METRICS = ("exact_match", "contains", "regex", "numeric")


class BenchmarkError(Exception):
    """A benchmark file the eval cannot use; the message names file:line and the field."""


# ------------------------------------------------------------------ benchmark rows

def read_rows(path: str, kind: str, label: str | None = None, prompt_field: str = "prompt",
              answer_field: str = "answer", choices_field: str = "choices") -> list[dict]:
    """The rows of a JSONL benchmark, checked; `label` is the name errors use (the path by default)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    where = label or path
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        raise BenchmarkError(f"{where}: cannot read ({e.strerror})") from None
    rows = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue

        def fail(message: str, number=number):
            raise BenchmarkError(f"{where}:{number}: {message}")

        try:  # decode per line so a bad byte is reported with its line
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            fail("not UTF-8 text")
        row, problem = parse_line(text)  # the data rules' reader: huge numbers, deep nesting, lone surrogates
        if problem:
            fail(problem)
        for field in (prompt_field, answer_field) + ((choices_field,) if kind == "choice" else ()):
            if field not in row:
                fail(f"field '{field}' is missing")
        prompt = row[prompt_field]
        if not isinstance(prompt, str) or not prompt:
            fail(f"field '{prompt_field}' must be a non-empty string (got {_json_type(prompt)})")
        if kind == "generate":
            rows.append({"prompt": prompt, "answer": generate_answer(row[answer_field], answer_field, fail),
                         "line": number})
        else:
            choices = checked_choices(row[choices_field], choices_field, fail)
            rows.append({"prompt": prompt, "choices": choices,
                         "answer": choice_answer(row[answer_field], choices, answer_field, fail), "line": number})
    if not rows:
        raise BenchmarkError(f"{where} has no rows")
    return rows


def _is_scalar_answer(value) -> bool:
    # bool is an int in Python but true/false is not a benchmark answer; NaN/inf match nothing
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, str) and value.strip() != ""


def generate_answer(value, field: str, fail):
    if _is_scalar_answer(value) or (isinstance(value, list) and value and all(map(_is_scalar_answer, value))):
        return value
    fail(f"field '{field}' must be a non-empty string, a number, or a non-empty list of them "
         f"(got {_json_type(value)})")


def checked_choices(value, field: str, fail) -> list[str]:
    if not isinstance(value, list):
        fail(f"field '{field}' must be a list of strings (got {_json_type(value)})")
    if len(value) < 2:
        fail(f"field '{field}' needs at least 2 choices, got {len(value)}")
    for i, choice in enumerate(value):
        if not isinstance(choice, str) or not choice:
            fail(f"field '{field}' item {i} must be a non-empty string (got {_json_type(choice)})")
    return value


def choice_answer(value, choices: list[str], field: str, fail) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(choices):
            return value
        fail(f"field '{field}' index {value} is out of range for {len(choices)} choices")
    if isinstance(value, str):
        if value in choices:
            return choices.index(value)
        fail(f"answer {value!r} is not one of the choices")
    fail(f"field '{field}' must be a choice index or one of the choices (got {_json_type(value)})")


# ------------------------------------------------------------------ generation

def _device(model) -> torch.device:
    return next(model.parameters()).device


def _eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a sequence: the tokenizer's eos and the generation config's (may be a list)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.discard(None)
    return ids


def _pad_id(tokenizer) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0  # masked out everywhere, so any id will do


def _cache_of(out) -> dict:
    """The key/value cache as the keyword argument that hands it back: transformers 5.2x names it `cache`
    (`past_key_values` is deprecated there, and the only name in earlier versions)."""
    for name in ("cache", "past_key_values"):
        if out.get(name) is not None:
            return {name: out[name]}
    return {}


def cut_at_stop(text: str, stop) -> str:
    """`text` up to the earliest stop string."""
    ends = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[:min(ends)] if ends else text


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, stop=("\n",), batch_size: int = 8,
             temperature: float = 0.0, seed: int = 0) -> list[str]:
    """The completion of each prompt: its new tokens decoded (special tokens skipped), cut at the first stop
    string. Greedy when temperature == 0; otherwise sampling where prompt i has its own generator seeded
    with seed + i, so outputs do not depend on batch size or on the other prompts."""
    if temperature < 0 or max_new_tokens < 0 or batch_size < 1:
        raise ValueError("temperature and max_new_tokens must be >= 0 and batch_size >= 1")
    model.eval()
    outputs = []
    for start in range(0, len(prompts), batch_size):
        outputs += _generate_batch(model, tokenizer, prompts[start:start + batch_size], max_new_tokens,
                                   tuple(stop), temperature, seed + start)
    return outputs


def _left_padded(tokenizer, prompts: list[str], pad: int, device):
    """(ids, attention mask, position ids) of the prompts, padded on the left by hand: the tokenizer is never
    mutated (nothing to restore) and one without a pad token works too. Positions count real tokens only,
    so a padded prompt sees the positions it would see alone. An empty prompt gets one eos/bos token."""
    encoded = [tokenizer(p).input_ids or [_context_token(tokenizer)] for p in prompts]
    width = max(map(len, encoded))
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _pick(logits: torch.Tensor, temperature: float, generators: list[torch.Generator]) -> list[int]:
    """The next token of each row: argmax, or a sample from each row's own generator."""
    if temperature == 0:
        return logits.argmax(-1).tolist()
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return [int(torch.multinomial(probs[i], 1, generator=g)) for i, g in enumerate(generators)]


@torch.inference_mode()
def _generate_batch(model, tokenizer, prompts, max_new_tokens, stop, temperature, seed) -> list[str]:
    device, eos, pad = _device(model), _eos_ids(model, tokenizer), _pad_id(tokenizer)
    ids, mask, positions = _left_padded(tokenizer, prompts, pad, device)
    generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(len(prompts))]
    new, done = [[] for _ in prompts], [False] * len(prompts)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    for step in range(max_new_tokens):
        chosen = _pick(out.logits[:, -1, :], temperature, generators)
        for i, token in enumerate(chosen):
            if done[i] or token in eos:
                done[i] = True
                continue
            new[i].append(token)
            done[i] = any(s in tokenizer.decode(new[i], skip_special_tokens=True) for s in stop if s)
        if all(done) or step == max_new_tokens - 1:
            break
        # Finished rows are fed pad so the batch stays rectangular; what they produce is ignored.
        step_ids = torch.tensor([[pad if d else c] for d, c in zip(done, chosen)], device=device)
        ids, mask = torch.cat([ids, step_ids], 1), torch.cat([mask, mask.new_ones((len(prompts), 1))], 1)
        positions = torch.cat([positions, positions[:, -1:] + 1], 1)
        cache = _cache_of(out)
        if cache:  # the new token only, on top of the cache
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions[:, -1:], use_cache=True,
                        **cache)
        else:  # a model that returns no cache: the whole sequence again
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions)
    return [cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop) for tokens in new]


# ------------------------------------------------------------------ scoring one output

_TRAILING = ".,;:!?"
# A number: optional minus, thousands groups with commas or plain digits, optional decimals.
NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def normalise(text: str) -> str:
    """Stripped, whitespace collapsed, casefolded, trailing . , ; : ! ? removed."""
    return " ".join(str(text).split()).casefold().rstrip(_TRAILING).rstrip()


def _answers(answer) -> list:
    return list(answer) if isinstance(answer, (list, tuple)) else [answer]


def _as_number(value) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if not NUMBER.fullmatch(text):
        raise ValueError(f"the numeric metric needs numeric answers, got {value!r}")
    return float(text.replace(",", ""))


def score_output(output: str, answer, metric: str, pattern: str | None = None, tolerance: float = 0.0) -> float:
    """1.0 when `output` is right for `answer` (a value or a list of acceptable values) under `metric`."""
    answers = _answers(answer)
    if metric == "exact_match":
        # The first non-blank line: a model that answers and then rambles on is still judged on its answer.
        lines = output.strip().splitlines()
        head = normalise(lines[0]) if lines else ""
        hit = any(head == normalise(a) for a in answers)
    elif metric == "contains":
        # Whole word or number, case-insensitive: "4" is not in "42", "42" is not in "3.42" or "1,042".
        text = " ".join(output.split()).casefold()
        hit = any(re.search(rf"(?<!\w)(?<!\d[.,]){re.escape(normalise(a))}(?!\w)(?![.,]\d)", text)
                  for a in answers if normalise(a))
    elif metric == "regex":
        if not pattern:
            raise ValueError("the regex metric needs a pattern")
        hit = re.search(pattern, output) is not None
    elif metric == "numeric":
        found = NUMBER.search(output)
        # A hair of relative slack: 1.1 - 1.0 is 0.10000000000000009 in floating point, and tolerance 0.1 means it.
        hit = found is not None and any(
            abs(float(found.group().replace(",", "")) - value) <= tolerance + 1e-9 * max(1.0, abs(value))
            for value in map(_as_number, answers))
    else:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return 1.0 if hit else 0.0


# ------------------------------------------------------------------ log-likelihoods

def _context_token(tokenizer) -> int:
    """What a sequence with no context of its own is conditioned on: eos, else bos. Eos first because
    forgebuild pretrains on documents packed with eos between them (and no bos by default), so "after
    an eos" is where every training document started; lm-eval's rolling log-likelihood does the same."""
    for token_id in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if token_id is not None:
            return token_id
    raise ValueError("the tokenizer has neither a bos nor an eos token to start a sequence with")


@torch.inference_mode()
def _token_logprobs(model, sequences: list[tuple[list[int], int]], batch_size: int, pad: int) -> list[torch.Tensor]:
    """For each (ids, start): the log-probability of ids[t] given ids[:t] for every t >= start (start >= 1).
    Batched with right padding, which a causal model never looks at."""
    model.eval()
    device, results = _device(model), []
    for begin in range(0, len(sequences), batch_size):
        batch = sequences[begin:begin + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch], device=device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        for row, (tokens, start) in enumerate(batch):
            # log_softmax only over the scored positions: the full batch in float32 can be large
            scores = torch.log_softmax(logits[row, start - 1:len(tokens) - 1].float(), dim=-1)
            targets = torch.tensor(tokens[start:], device=device)
            results.append(scores.gather(-1, targets[:, None])[:, 0].cpu())
    return results


def _continuation(tokenizer, prompt: str, choice: str) -> tuple[list[int], int]:
    """(ids of prompt + choice, index of the choice's first token). The choice is what follows the common
    prefix of tokenize(prompt) and tokenize(prompt + choice), since a merge across the boundary can change
    the prompt's last token."""
    context, whole = tokenizer(prompt).input_ids, tokenizer(prompt + choice).input_ids
    start = min(common_prefix(context, whole), len(whole) - 1)  # at least one scored token
    if start == 0:  # nothing to condition on: prepend eos/bos as context
        return [_context_token(tokenizer)] + whole, 1
    return whole, start


def common_prefix(context: list[int], whole: list[int]) -> int:
    """How many leading ids the two share."""
    start = 0
    while start < min(len(context), len(whole)) and context[start] == whole[start]:
        start += 1
    return start


def choice_scores(model, tokenizer, rows: list[dict], batch_size: int = 8) -> list[dict]:
    """Per row: each choice's log-likelihood given the prompt, the prediction (argmax) and the
    length-normalised prediction (log-likelihood per character of the choice), and whether each is right."""
    sequences = [_continuation(tokenizer, row["prompt"], choice) for row in rows for choice in row["choices"]]
    logprobs = iter(_token_logprobs(model, sequences, batch_size, _pad_id(tokenizer)))
    return [judged(row, [float(next(logprobs).sum()) for _ in row["choices"]]) for row in rows]


def judged(row: dict, lls: list[float]) -> dict:
    """A row's choice log-likelihoods, its prediction (argmax), its length-normalised prediction
    (log-likelihood per character of the choice), and whether each is right."""
    normalised = [ll / len(choice) for ll, choice in zip(lls, row["choices"])]
    pred, pred_norm = _argmax(lls), _argmax(normalised)
    return {"loglikelihoods": lls, "pred": pred, "pred_norm": pred_norm,
            "correct": float(pred == row["answer"]), "correct_norm": float(pred_norm == row["answer"])}


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # ties: the first


def perplexity(model, tokenizer, texts: list[str], seq_len: int, batch_size: int = 8,
               max_documents: int | None = None) -> list[dict]:
    """Per document {"nll": summed token NLL, "tokens": tokens predicted}, in order.

    A document is tokenised as pretraining saw it: text (special-token strings kept as text) followed by
    eos, conditioned on a leading eos (the separator it followed in packed pretraining) when the tokenizer
    adds no bos, so its first token is predicted too. It is cut into windows of seq_len predicted tokens
    WITHOUT overlap: each window starts with fresh context (no sliding stride), so tokens early in a
    window see less context and perplexity comes out somewhat higher than a strided evaluation's.
    Aggregate with bootstrap_ratio(nll, tokens, transform=math.exp)."""
    if seq_len < 1:
        raise ValueError("seq_len must be at least 1")
    texts = texts[:max_documents] if max_documents is not None else texts
    documents, windows = [], []
    for d, text in enumerate(texts):
        ids = tokenizer(text, split_special_tokens=True).input_ids
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        if not ids or ids[0] != tokenizer.bos_token_id:
            ids = [_context_token(tokenizer)] + ids
        documents.append({"nll": 0.0, "tokens": len(ids) - 1})
        # Window k feeds ids[k*L : k*L+L+1] and scores its last L tokens: every token after the first is
        # predicted exactly once, and the model never sees more than L+1 positions.
        for begin in range(0, len(ids) - 1, seq_len):
            windows.append((d, ids[begin:begin + seq_len + 1]))
    logprobs = _token_logprobs(model, [(w, 1) for _, w in windows], batch_size, _pad_id(tokenizer))
    for (d, _), scores in zip(windows, logprobs):
        documents[d]["nll"] -= float(scores.double().sum())
    return documents


# ------------------------------------------------------------------ bootstrap statistics

def _resampled_sums(columns: list[np.ndarray], samples: int, seed: int) -> list[np.ndarray]:
    """Each column's sum over `samples` bootstrap resamples of its n entries. Every column uses the same
    indices (a ratio's numerator and denominator come from the same documents). Chunked so memory stays
    near 16 MB of indices whatever n is."""
    n, rng = len(columns[0]), np.random.default_rng(seed)
    sums = [np.empty(samples) for _ in columns]
    step = max(1, 2_000_000 // n)
    for begin in range(0, samples, step):
        index = rng.integers(0, n, size=(min(step, samples - begin), n))
        for column, out in zip(columns, sums):
            out[begin:begin + len(index)] = column[index].sum(axis=1)
    return sums


def _interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.nanpercentile(values, [2.5, 97.5])  # nan: a resample whose denominator summed to 0
    return float(low), float(high)


def bootstrap_mean(values: list[float], samples: int = 1000, seed: int = 0) -> dict:
    """Mean with a percentile-bootstrap 95% interval: {"value", "low", "high", "n"} (None when n = 0)."""
    data = np.asarray(values, dtype=float)
    if not len(data):
        return {"value": None, "low": None, "high": None, "n": 0}
    (sums,) = _resampled_sums([data], samples, seed)
    low, high = _interval(sums / len(data))
    return {"value": float(data.mean()), "low": low, "high": high, "n": len(data)}


def bootstrap_ratio(numerators: list[float], denominators: list[float], samples: int = 1000, seed: int = 0,
                    transform=None) -> dict:
    """transform(sum numerators / sum denominators) with a 95% interval from resampling whole items
    (documents): perplexity is bootstrap_ratio(nll, tokens, transform=math.exp)."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if len(num) != len(den):
        raise ValueError(f"{len(num)} numerators but {len(den)} denominators")
    if not len(num) or den.sum() == 0:
        return {"value": None, "low": None, "high": None, "n": len(num)}
    transform = transform or (lambda x: x)
    low, high = _interval(_transformed(*_resampled_sums([num, den], samples, seed), transform))
    return {"value": float(transform(num.sum() / den.sum())), "low": low, "high": high, "n": len(num)}


def _transformed(nums: np.ndarray, dens: np.ndarray, transform) -> np.ndarray:
    """transform(num / den) of each resample, nan where the denominator summed to 0: transformed before
    any percentile is taken, which is right for any transform, monotone or not."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = nums / dens
    return np.array([transform(r) if np.isfinite(r) else np.nan for r in ratios], dtype=float)


def paired_difference(a: list[float], b: list[float], samples: int = 1000, seed: int = 0) -> dict:
    """mean(b) - mean(a) over the same examples in the same order, with a paired bootstrap 95% interval;
    significant when the interval excludes 0."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same examples: {len(a)} against {len(b)}")
    stats = bootstrap_mean(np.asarray(b, dtype=float) - np.asarray(a, dtype=float), samples, seed)
    significant = stats["n"] > 0 and (stats["low"] > 0 or stats["high"] < 0)
    return {"diff": stats["value"], "low": stats["low"], "high": stats["high"], "significant": bool(significant),
            "n": stats["n"]}


# ------------------------------------------------------------------ one-sided bounds for gates

def _bound(values: np.ndarray, confidence: float, side: str) -> float:
    """The one-sided percentile-bootstrap bound at `confidence` percent: "lower" is the (100 - c)th
    percentile of the resampled statistic (95% -> the 5th), "upper" the c-th."""
    if side not in ("lower", "upper"):
        raise ValueError(f"side must be lower or upper, got {side!r}")
    return float(np.nanpercentile(values, 100 - confidence if side == "lower" else confidence))


def paired_bound(a: list[float], b: list[float], confidence: float, side: str, samples: int = 1000,
                 seed: int = 0) -> dict:
    """mean(b - a) over the same examples in the same order, with its one-sided bound at `confidence` %
    from resampling the examples (each pair kept together): {"diff", "bound", "n"}."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same examples: {len(a)} against {len(b)}")
    diffs = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if not len(diffs):
        return {"diff": None, "bound": None, "n": 0}
    (sums,) = _resampled_sums([diffs], samples, seed)
    return {"diff": float(diffs.mean()), "bound": _bound(sums / len(diffs), confidence, side), "n": len(diffs)}


def ratio_difference_bound(a: tuple[list, list], b: tuple[list, list], confidence: float, side: str,
                           samples: int = 1000, seed: int = 0, transform=None) -> dict:
    """transform(sum b_num / sum b_den) - transform(sum a_num / sum a_den) where a and b are (numerators,
    denominators) over the same documents, with its one-sided bound at `confidence` %: each resample
    draws the same documents for both (perplexities of one holdout: (nll, tokens), transform=math.exp)."""
    columns = [np.asarray(c, dtype=float) for c in (*a, *b)]
    if len({len(c) for c in columns}) != 1:
        raise ValueError(f"a ratio difference needs the same documents: {len(columns[0])} against {len(columns[2])}")
    transform = transform or (lambda x: x)
    if not len(columns[0]) or not columns[1].sum() or not columns[3].sum():
        return {"diff": None, "bound": None, "n": len(columns[0])}
    an, ad, bn, bd = _resampled_sums(columns, samples, seed)
    diffs = _transformed(bn, bd, transform) - _transformed(an, ad, transform)
    point = transform(columns[2].sum() / columns[3].sum()) - transform(columns[0].sum() / columns[1].sum())
    return {"diff": float(point), "bound": _bound(diffs, confidence, side), "n": len(columns[0])}
