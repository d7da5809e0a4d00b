"""The `tokenizer` and `tokens` rules, end to end through the real CLI, on ~0.6 MB of Python's own sources.

Until the `corpus` rule lands, a `run` target writes the corpus layout those rules
read: train/part-NNNNN.parquet and holdout/part-NNNNN.parquet (text, id, source).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import ENV, Project
from forgebuild.hashing import bytes_digest
from forgebuild.rules.corpus import is_held_out
from forgebuild.rules.tokenizer import HASH_SPACE, sample_hash

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_BYTES = 600_000
MAX_FILE_BYTES = 60_000  # many small files rather than a few big ones: more documents


@pytest.fixture(scope="module")
def stdlib_text(tmp_path_factory) -> str:
    """A folder of real text: standard-library modules, in name order, up to ~0.6 MB."""
    folder = tmp_path_factory.mktemp("stdlib")
    total = 0
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            continue
        shutil.copyfile(path, folder / os.path.basename(path))
        total += size
        if total >= CORPUS_BYTES:
            break
    return str(folder)


MAKE_CORPUS = '''
"""The corpus layout: documents are top-level blocks of the sources; every 10th goes to holdout."""
import json, os, sys
import pyarrow as pa, pyarrow.parquet as pq

out, paths = sys.argv[1], sorted(sys.argv[2:])
documents = []
for path in paths:
    text = open(path, encoding="utf-8").read()
    for n, block in enumerate(b for b in text.split("\\n\\n\\n") if b.strip()):
        documents.append((f"{os.path.basename(path)}#{n}", block + "\\n"))
if os.environ.get("FORGE_PARAM_INJECT"):
    documents.insert(0, ("inject#0", os.environ["FORGE_PARAM_INJECT"]))
splits = {"train": [d for i, d in enumerate(documents) if i % 10 != 9],
          "holdout": [d for i, d in enumerate(documents) if i % 10 == 9]}
for split, rows in splits.items():
    if os.environ.get("FORGE_PARAM_REVERSE"):  # the same documents in the other order
        rows = rows[::-1]
    os.makedirs(os.path.join(out, split))
    for part, start in enumerate(range(0, len(rows), 400)):
        chunk = rows[start:start + 400]
        table = pa.table({"text": [t for _, t in chunk], "id": [i for i, _ in chunk], "source": ["stdlib"] * len(chunk)})
        pq.write_table(table, os.path.join(out, split, f"part-{part:05d}.parquet"))
with open(os.path.join(out, "stats.json"), "w") as f:
    json.dump({split: len(rows) for split, rows in splits.items()}, f)
'''

CORPUS_TARGET = f'''
[run.stdlib]
cmd = ["{sys.executable}", "{{in.script}}", "{{out}}", "{{in.src}}"]
inputs = {{ script = "make_corpus.py", src = "src/*.py" }}
'''


class ForgeProject(Project):
    """A project with helpers to read its outputs."""

    def out(self, address: str, name: str = "") -> str:
        return os.path.join(self.root, ".forge", "out", *address.split(":"), name)

    def json(self, address: str, name: str) -> dict:
        with open(self.out(address, name), encoding="utf-8") as f:
            return json.load(f)

    def digests(self, *args) -> dict[str, str]:
        summary = self.events(*args)[-1]
        return {t["target"]: t["digest"] for t in summary["targets"]}


@pytest.fixture
def proj(tmp_path, stdlib_text):
    project = ForgeProject(str(tmp_path))
    shutil.copytree(stdlib_text, tmp_path / "src")
    project.write("make_corpus.py", MAKE_CORPUS)
    return project


def python(code: str, cwd: str) -> str:
    """Run code in a fresh interpreter (transformers and numpy stay out of the test process)."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ------------------------------------------------------------------ tokenizer

BPE = CORPUS_TARGET + '''
[tokenizer.bpe]
corpus = "run:stdlib"
vocab_size = 600
fim = true
extra_tokens = ["<|tool|>"]
'''


def test_bpe_folder_loads_in_transformers_round_trips_and_applies_the_chat_template(proj):
    proj.forgefile(BPE)
    assert proj.build() == {"run:stdlib": "built", "tokenizer:bpe": "built"}
    folder = proj.out("tokenizer:bpe")
    assert sorted(os.listdir(folder)) == ["special_tokens_map.json", "stats.json", "tokenizer.json", "tokenizer_config.json"]
    assert proj.json("tokenizer:bpe", "special_tokens_map.json") == {
        "bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
                                      "<|fim_suffix|>", "<|tool|>"]}
    out = python(f'''
import json
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained({folder!r})
text = open(sorted(__import__("glob").glob("src/*.py"))[3]).read()[:3000] + "\\n## heading\\n\\tcafé ☕ 😀 \\x00"
ids = t(text)["input_ids"]
messages = [{{"role": "system", "content": "Be brief."}}, {{"role": "user", "content": "2+2?"}},
            {{"role": "assistant", "content": "4"}}]
chat = t.apply_chat_template(messages, tokenize=False)
prompt = t.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
masked = t.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
answer = [i for i, m in zip(masked["input_ids"], masked["assistant_masks"]) if m]
print(json.dumps({{"round_trip": t.decode(ids) == text, "len": len(t), "chat": chat, "prompt": prompt,
                  "answer": t.decode(answer), "ids": [t.pad_token_id, t.bos_token_id, t.eos_token_id],
                  "im": t.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|fim_suffix|>", "<|tool|>"]),
                  "bos_added": ids[:1] == [t.bos_token_id]}}))
''', proj.root)
    found = json.loads(out.splitlines()[-1])
    assert found["round_trip"] and found["len"] == 600
    assert found["chat"] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                             "<|im_start|>assistant\n4<|im_end|>\n")
    assert found["prompt"].endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert found["answer"] == "4<|im_end|>"  # assistant-only loss sees the answer and its end token
    assert found["ids"] == [0, 1, 2] and found["im"] == [3, 4, 7, 8]  # special tokens first, in a fixed order
    assert not found["bos_added"]  # add_bos = false: the tokenizer adds nothing
    stats = proj.json("tokenizer:bpe", "stats.json")
    assert stats["vocab_size"] == 600 and stats["vocab_size_requested"] == 600 and stats["special_tokens"] == 9
    assert 2.0 < stats["holdout"]["bytes_per_token"] < 4.0  # ~2.9 for Python source at this vocabulary size
    assert 0.5 < stats["holdout"]["vocab_use"] <= 1.0
    assert stats["train"]["documents"] > 200 and stats["holdout"]["documents"] > 20


MODELS = CORPUS_TARGET + '''
[tokenizer.bpe]
corpus = "run:stdlib"
vocab_size = 1000
threads = {threads}

[tokenizer.uni]
corpus = "run:stdlib"
model = "unigram"
vocab_size = 1000
threads = {threads}

[tokenizer.wp]
corpus = "run:stdlib"
model = "wordpiece"
vocab_size = 1000
threads = {threads}
'''


def test_two_clean_builds_give_identical_digests_for_every_model_and_thread_count(proj):
    proj.forgefile(MODELS.replace("{threads}", "1"))
    first = proj.digests()
    shutil.rmtree(os.path.join(proj.root, ".forge"))
    proj.forgefile(MODELS.replace("{threads}", "2"))
    assert proj.digests() == first


@pytest.mark.parametrize("model", ["unigram", "wordpiece"])
def test_unigram_and_wordpiece_are_lossless_too(proj, model):
    proj.forgefile(CORPUS_TARGET + f'''
[tokenizer.t]
corpus = "run:stdlib"
model = "{model}"
vocab_size = 800
add_bos = true
''')
    proj.build()
    folder = proj.out("tokenizer:t")
    out = python(f'''
import json
from tokenizers import Tokenizer
t = Tokenizer.from_file({folder!r} + "/tokenizer.json")
text = open(sorted(__import__("glob").glob("src/*.py"))[3]).read()[:3000] + "\\n## heading\\n###x ＃＃y\\tcafé ☕ 😀 \\x00 " + "=" * 300
e = t.encode(text)
print(json.dumps({{"round_trip": t.decode(e.ids) == text, "unk": e.ids.count(t.token_to_id("<|unk|>")),
                  "first": e.tokens[0], "size": t.get_vocab_size()}}))
''', proj.root)
    found = json.loads(out)
    assert found == {"round_trip": True, "unk": 0, "first": "<|bos|>", "size": 800}
    assert proj.json("tokenizer:t", "special_tokens_map.json")["unk_token"] == "<|unk|>"
    config = proj.json("tokenizer:t", "tokenizer_config.json")
    assert config["add_bos_token"] is True and config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_split_digits_gives_transformers_one_token_per_digit(proj):
    proj.forgefile(CORPUS_TARGET + '''
[tokenizer.digits]
corpus = "run:stdlib"
vocab_size = 600
split_digits = true
''')
    proj.build()
    out = python(f'''
import json
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained({proj.out("tokenizer:digits")!r})
text = "x = 1024 + 365.25  # ٣٤ 2²\\n"
print(json.dumps({{"tokens": t.tokenize("123+4567=4690"), "round_trip": t.decode(t(text)["input_ids"]) == text,
                  "digits": max(sum(c.isdigit() for c in t.decode([i])) for i in range(len(t)))}}))
''', proj.root)
    assert json.loads(out) == {"tokens": list("123+4567=4690"), "round_trip": True, "digits": 1}


SAMPLED = CORPUS_TARGET + '''
[tokenizer.bpe]
corpus = "run:stdlib"
vocab_size = 600
sample = 0.5
max_train_bytes = 150000
threads = 1

[tokenizer.uni]
corpus = "run:stdlib"
model = "unigram"
vocab_size = 600
sample = 0.5
max_train_bytes = 150000
threads = 1

[tokenizer.wp]
corpus = "run:stdlib"
model = "wordpiece"
vocab_size = 600
sample = 0.5
max_train_bytes = 150000
threads = 1
'''


def test_a_sampled_tokenizer_does_not_depend_on_the_order_of_the_documents(proj):
    proj.forgefile(SAMPLED)
    first = proj.digests()
    trained = proj.json("tokenizer:bpe", "stats.json")
    assert 150_000 <= trained["train"]["bytes"] < 150_000 + MAX_FILE_BYTES
    corpus = proj.json("run:stdlib", "stats.json")  # the holdout below the same hash bound: 7 of 27 here
    assert 0 < trained["holdout"]["documents"] < corpus["holdout"] and trained["train"]["documents"] < corpus["train"]
    proj.forgefile(SAMPLED.replace('inputs = {', 'params = { reverse = "1" }\ninputs = {'))
    again = proj.digests()
    assert again["run:stdlib"] != first["run:stdlib"]  # other bytes, the same documents
    assert {k: v for k, v in again.items() if k != "run:stdlib"} == {k: v for k, v in first.items() if k != "run:stdlib"}


STABLE = '''
[corpus.code]
sources = ["src/*.py"]
holdout = 0.1

[corpus.notes]
sources = ["notes/*.txt"]

[tokenizer.bpe]
corpus = "corpus:code"
vocab_size = 500
sample = 0.5
{pin}
[tokens.code]
corpus = "corpus:code"
tokenizer = "tokenizer:bpe"
seq_len = 64

[tokens.notes]
corpus = "corpus:notes"
tokenizer = "tokenizer:bpe"
seq_len = 64
'''


def new_source(in_sample: bool) -> str:
    """A file whose made-up words a tokenizer trained on it would learn: in the sample's half of the
    hash space (and in the corpus's train split) or outside it."""
    for i in range(1000):
        text = f"def qzv_{i}(zqx):\n    return zqx.qzvqzv_{i}(zqx) + 'zqxzqx'\n" * 200
        inside = sample_hash(text) < HASH_SPACE // 2 and not is_held_out(bytes_digest(text.encode()), 0.1)
        if inside if in_sample else sample_hash(text) >= HASH_SPACE // 2:
            return text
    raise AssertionError("no such text in 1000 tries")


def test_a_new_source_outside_the_sample_leaves_the_tokenizer_and_what_depends_on_it_alone(proj):
    proj.write("notes/a.txt", "Notes: 12 apples, 7 pears.\n" * 50)
    proj.forgefile(STABLE.replace("{pin}", ""))
    first = proj.digests()
    proj.write("src/zz_added_outside.py", new_source(in_sample=False))
    assert proj.build() == {"corpus:code": "built", "corpus:notes": "cached", "tokenizer:bpe": "built",
                            "tokens:code": "built", "tokens:notes": "cached"}  # early cutoff at the tokenizer
    assert proj.digests()["tokenizer:bpe"] == first["tokenizer:bpe"]

    pinned = STABLE.replace("{pin}", f'pin = "{first["tokenizer:bpe"]}"\n')
    proj.forgefile(pinned)
    assert proj.build()["tokens:notes"] == "cached"  # the pin holds: rebuilt to the same bytes
    proj.write("src/zz_added_inside.py", new_source(in_sample=True))
    proc = proj.run("-k", expect=2)
    [failed] = [line for line in proc.stdout.splitlines() if line.startswith("FAILED  ")]
    new = failed.split("this build gives ")[1][:64]
    trained = proj.json("tokenizer:bpe", "stats.json")["train"]  # still the pinned build's
    assert failed == (
        f"FAILED  tokenizer:bpe: pin: this build gives {new}, not the pinned {first['tokenizer:bpe']} (it trained "
        f"on {trained['documents'] + 1} documents, {trained['bytes'] + len(new_source(True))} bytes of corpus:code); "
        f"to accept the new tokenizer set pin = \"{new}\", which rebuilds what depends on it; to keep the old one, "
        f"restore its training documents")
    proj.forgefile(STABLE.replace("{pin}", f'pin = "{new}"\n'))
    assert proj.build() == {"corpus:code": "cached", "corpus:notes": "cached", "tokenizer:bpe": "built",
                            "tokens:code": "built", "tokens:notes": "built"}
    assert proj.digests()["tokenizer:bpe"] == new != first["tokenizer:bpe"]


# ------------------------------------------------------------------ tokens

TOKENS = BPE + '''
[tokens.x]
corpus = "run:stdlib"
tokenizer = "tokenizer:bpe"
seq_len = 64
'''


def test_tokens_are_packed_documents_with_separators_and_a_memmap_layout(proj):
    proj.forgefile(TOKENS)
    digests = proj.digests()
    folder = proj.out("tokens:x")
    assert sorted(os.listdir(folder)) == ["holdout.bin", "meta.json", "stats.json", "train.bin"]
    meta, stats = proj.json("tokens:x", "meta.json"), proj.json("tokens:x", "stats.json")
    assert meta["tokenizer"] == {"target": "tokenizer:bpe", "digest": digests["tokenizer:bpe"]}
    assert meta["corpus"] == {"target": "run:stdlib", "digest": digests["run:stdlib"]}
    assert (meta["dtype"], meta["byteorder"], meta["seq_len"], meta["packing"]) == ("uint16", "little", 64, "concat")
    assert (meta["vocab_size"], meta["pad_id"], meta["bos_id"], meta["eos_id"]) == (600, 0, 1, 2)
    for split in ("train", "holdout"):
        s = stats[split]
        assert os.path.getsize(os.path.join(folder, f"{split}.bin")) == 2 * s["tokens"] == 2 * 64 * s["sequences"]
        assert meta["splits"][split] == {"file": f"{split}.bin", "sequences": s["sequences"], "tokens": s["tokens"]}
        # concat: only the last, incomplete row is dropped
        assert s["document_tokens"] == s["tokens"] + s["remainder_tokens"] and 0 <= s["remainder_tokens"] < 64
        assert s["padding_tokens"] == 0
    out = python(f'''
import json, numpy as np, pyarrow.parquet as pq
from tokenizers import Tokenizer
meta = json.load(open({folder!r} + "/meta.json"))
rows = np.memmap({folder!r} + "/train.bin", dtype=meta["dtype"], mode="r").reshape(-1, meta["seq_len"])
t = Tokenizer.from_file({proj.out("tokenizer:bpe", "tokenizer.json")!r})
texts = pq.read_table(sorted(__import__("glob").glob({proj.out("run:stdlib")!r} + "/train/*.parquet"))[0])["text"].to_pylist()
expected = []
for text in texts[:5]:
    expected += t.encode(text, add_special_tokens=False).ids + [meta["eos_id"]]
flat = rows.reshape(-1)
print(json.dumps({{"prefix": flat[:len(expected)].tolist() == expected, "eos": int((flat == meta["eos_id"]).sum()),
                  "max": int(flat.max()), "shape": list(rows.shape)}}))
''', proj.root)
    found = json.loads(out)
    assert found["prefix"]  # document 1, eos, document 2, eos, ... in corpus order
    assert found["shape"] == [stats["train"]["sequences"], 64] and found["max"] < 600
    # one eos per document, except any that fell into the dropped remainder
    assert stats["train"]["documents"] - 1 <= found["eos"] <= stats["train"]["documents"]


def test_tokens_output_does_not_depend_on_threads(proj):
    proj.forgefile(TOKENS + "threads = 1\n")
    first = proj.digests("tokens:x")
    proj.forgefile(TOKENS + "threads = 2\nbatch_documents = 7\n")
    assert proj.run("status").stdout.count("fresh ") == 3  # runtime-only: nothing to rebuild
    assert proj.digests("-B", "tokens:x") == first  # rebuilt from scratch, 2 threads: the same bytes
    [record] = [e for e in proj.events("show", "tokens:x") if e["event"] == "record"]
    assert record["metrics"]["threads"] == 2 and record["metrics"]["tokens_per_second"] > 0


def test_tokens_pad_packing_starts_every_document_on_a_new_row(proj):
    proj.forgefile(BPE + '''max_train_bytes = 100000

[tokens.padded]
corpus = "run:stdlib"
tokenizer = "tokenizer:bpe"
seq_len = 128
add_bos = true
packing = "pad"
''')
    proj.build()
    trained = proj.json("tokenizer:bpe", "stats.json")["train"]
    assert 100_000 <= trained["bytes"] < 100_000 + MAX_FILE_BYTES and trained["documents"] < 100
    stats = proj.json("tokens:padded", "stats.json")["train"]
    assert stats["remainder_tokens"] == 0 and stats["split_documents"] > 0
    assert stats["tokens"] == stats["document_tokens"] + stats["padding_tokens"]
    out = python(f'''
import numpy as np
rows = np.memmap({proj.out("tokens:padded", "train.bin")!r}, dtype="uint16", mode="r").reshape(-1, 128)
starts = (rows[:, 0] == 1).sum()  # bos
ends = rows[:, -1]
print(int(starts), int((rows == 0).sum()))
''', proj.root)
    starts, pads = map(int, out.split())
    assert starts == stats["documents"] and pads == stats["padding_tokens"]


def test_special_token_text_inside_a_document_is_plain_text(proj):
    proj.forgefile(TOKENS.replace('inputs = {', 'params = { inject = "see <|eos|> and <|im_start|>" }\ninputs = {'))
    proj.build()
    out = python(f'''
import numpy as np
flat = np.memmap({proj.out("tokens:x", "train.bin")!r}, dtype="uint16", mode="r")
first_eos = int(np.argmax(flat == 2))
print(first_eos, int((flat[:first_eos] == 3).sum()))
''', proj.root)
    first_eos, im_start = map(int, out.split())
    assert first_eos > 8 and im_start == 0  # the injected first document ends at its own eos, not at the text


def test_explain_names_the_tokenizer_and_training_changes_never_retokenize(proj):
    train = f'''
[run.train]
cmd = ["{sys.executable}", "-c", "import sys; open(sys.argv[1] + '/m', 'w').write(sys.argv[2]); sys.exit(sys.argv[2] == 'crash')", "{{out}}", "{{params.lr}}"]
inputs = {{ data = "tokens:x" }}
params = {{ lr = "{{lr}}" }}
'''
    proj.forgefile(TOKENS + train.replace("{lr}", "0.1"))
    proj.build()
    proj.forgefile(TOKENS + train.replace("{lr}", "0.2"))
    assert proj.build() == {"run:stdlib": "cached", "tokenizer:bpe": "cached", "tokens:x": "cached", "run:train": "built"}
    proj.forgefile(TOKENS + train.replace("{lr}", "crash"))
    assert proj.build(expect=1)["tokens:x"] == "cached"
    proj.forgefile(TOKENS.replace("vocab_size = 600", "vocab_size = 700") + train.replace("{lr}", "0.2"))
    explained = proj.run("explain", "tokens:x").stdout
    assert explained.startswith("tokens:x: stale\n  - dependency tokenizer:bpe is stale\n")
    assert "tokenizer:bpe: stale\n  - param vocab_size 600 -> 700" in explained
    assert "tokens:x" in proj.run("graph").stdout
    proj.forgefile(TOKENS + train.replace("{lr}", "0.2"))  # back to 600: everything is in the cache
    assert "stale" not in proj.run("status").stdout


# ------------------------------------------------------------------ errors

def test_forgefile_mistakes_are_reported_with_file_line_target_and_key(proj):
    proj.forgefile(CORPUS_TARGET + '''
[tokenizer.a]
corpus = "data/corpus"
vocab_size = 260
unk_token = "<unk>"
extra_tokens = ["<|eos|>", "<my tok>"]

[tokenizer.b]
corpus = "run:stdlib"
model = "wordpiece"
vocab_size = 515
chat_template = "{% for m in messages %}{{ m.content }"

[tokenizer.c]
corpus = "run:stdlib"
model = "sentencepiece"
vocab_size = 1000

[tokens.d]
corpus = "run:stdlib"
tokenizer = "tokenizer:b"
seq_len = 0

[tokens.e]
corpus = "run:stdlib"
tokenizer = "tokenizr:b"
seq_len = 8
add_eos = false
''')
    proc = proj.run(expect=2)
    assert proc.stderr.splitlines() == [
        "Forgefile.toml:7: error: tokenizer:a: key 'corpus': 'data/corpus' is not a target reference: "
        "write KIND:NAME, e.g. 'corpus:main'",
        "Forgefile.toml:7: error: tokenizer:a: key 'corpus': no such file 'data/corpus'",
        "Forgefile.toml:8: error: tokenizer:a: key 'vocab_size': 260 leaves no room to learn tokens: the 256-symbol "
        "byte alphabet and 6 special tokens take 262; use at least 263",
        "Forgefile.toml:9: error: tokenizer:a: key 'unk_token': byte-level BPE encodes every byte and never needs an "
        "unknown token; remove unk_token",
        "Forgefile.toml:10: error: tokenizer:a: key 'extra_tokens[0]': '<|eos|>' is already a special token",
        "Forgefile.toml:10: error: tokenizer:a: key 'extra_tokens[1]': '<my tok>': a special token is printable "
        "ASCII without spaces",
        "Forgefile.toml:15: error: tokenizer:b: key 'vocab_size': 515 leaves no room to learn tokens: the 512-symbol "
        "byte alphabet and 4 special tokens take 516; use at least 517",
        "Forgefile.toml:16: error: tokenizer:b: key 'chat_template': not a valid Jinja template: unexpected '}' "
        "(template line 1)",
        "Forgefile.toml:20: error: tokenizer:c: key 'model': expected one of bpe, unigram, wordpiece, "
        'got string "sentencepiece"',
        "Forgefile.toml:26: error: tokens:d: key 'seq_len': expected an integer >= 1, got integer 0",
        "Forgefile.toml:30: error: tokens:e: key 'tokenizer': no target 'tokenizr:b' (did you mean 'tokenizer:b'?)",
        "Forgefile.toml:32: error: tokens:e: key 'add_eos': with packing \"concat\" and neither add_bos nor add_eos, "
        "documents run into each other with nothing between them",
    ]
    schema = proj.run("schema").stdout
    assert '"tokenizer"' in schema and '"tokens"' in schema and '"vocab_size"' in schema and '"seq_len"' in schema


def test_a_malformed_pin_and_an_empty_sample_are_bad_input(proj):
    proj.forgefile(CORPUS_TARGET + '''
[tokenizer.t]
corpus = "run:stdlib"
vocab_size = 400
pin = "abc"
''')
    assert proj.run(expect=2).stderr.splitlines() == [
        "Forgefile.toml:9: error: tokenizer:t: key 'pin': 'abc' is not an artifact digest: 64 hex digits, as "
        "`forgebuild show` prints it"]
    proj.forgefile(CORPUS_TARGET + '''
[tokenizer.t]
corpus = "run:stdlib"
vocab_size = 400
sample = 1e-9
''')
    failed = [line for line in proj.run(expect=2).stdout.splitlines() if line.startswith("FAILED  ")]
    assert failed == ["FAILED  tokenizer:t: no train document of run:stdlib falls in sample = 1e-09; raise sample"]


def test_bad_corpus_or_tokenizer_artifacts_are_bad_input(proj):
    proj.forgefile(CORPUS_TARGET + f'''
[run.empty]
cmd = "echo '{{}}' > {{out}}/stats.json"

[run.numbers]
cmd = ["{sys.executable}", "-c", "import pyarrow as pa, pyarrow.parquet as pq, os, sys; os.mkdir(sys.argv[1] + '/train'); pq.write_table(pa.table({{'text': [1, 2]}}), sys.argv[1] + '/train/part-00000.parquet')", "{{out}}"]

[tokenizer.none]
corpus = "run:empty"
vocab_size = 400

[tokenizer.numbers]
corpus = "run:numbers"
vocab_size = 400

[tokenizer.nobos]
corpus = "run:stdlib"
vocab_size = 400
bos_token = ""

[tokens.y]
corpus = "run:stdlib"
tokenizer = "tokenizer:nobos"
seq_len = 16
add_bos = true
''')
    proc = proj.run("-k", expect=2)
    failed = sorted(line for line in proc.stdout.splitlines() if line.startswith("FAILED  "))
    assert failed == [
        "FAILED  tokenizer:none: run:empty has no train/*.parquet (its artifact holds: stats.json); a corpus artifact "
        "holds train/part-NNNNN.parquet and holdout/part-NNNNN.parquet with a string column 'text'",
        "FAILED  tokenizer:numbers: run:numbers: train/part-00000.parquet: column 'text' holds int64, not strings; a "
        "corpus artifact holds train/part-NNNNN.parquet and holdout/part-NNNNN.parquet with a string column 'text'",
        "FAILED  tokens:y: add_bos = true needs the tokenizer's bos token, and tokenizer:nobos has none (no bos_token "
        "of its vocabulary in special_tokens_map.json or tokenizer_config.json)",
    ]


def test_planning_never_imports_the_heavy_libraries(proj):
    proj.forgefile(TOKENS)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "forgebuild", "status"], cwd=proj.root,
                          capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "pydantic" in imported  # the Forgefile was validated, rules and all
    assert not imported & {"tokenizers", "transformers", "numpy", "pyarrow", "jinja2"}


# ------------------------------------------------------------------ through a real corpus target

def test_end_to_end_from_a_corpus_target(proj):
    proj.forgefile('''
[corpus.code]
sources = ["src/*.py"]
holdout = 0.1

[tokenizer.bpe]
corpus = "corpus:code"
vocab_size = 500

[tokens.x]
corpus = "corpus:code"
tokenizer = "tokenizer:bpe"
seq_len = 128
''')
    assert proj.build() == {"corpus:code": "built", "tokenizer:bpe": "built", "tokens:x": "built"}
    corpus = proj.json("corpus:code", "stats.json")
    tokens = proj.json("tokens:x", "stats.json")
    holdout = proj.json("tokenizer:bpe", "stats.json")["holdout"]
    assert tokens["train"]["documents"] + tokens["holdout"]["documents"] == len(os.listdir(os.path.join(proj.root, "src")))
    assert tokens["holdout"]["documents"] == holdout["documents"] > 0
    assert tokens["train"]["sequences"] > 100 and corpus
