"""The corpus rule, driven through the real CLI: curation counts on planted fixtures, real text from the
standard library, record sources, holdout stability, per-file caching, mixing, determinism, bad input."""
from __future__ import annotations

import csv
import glob
import json
import os
import random
import shutil
import sysconfig

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forgebuild.hashing import bytes_digest, file_digest

PARAGRAPH = " ".join(
    f"word{i % 37} sentence{i % 11} about the corpus rule and its curation number {i}" for i in range(25))
NEAR = PARAGRAPH.replace("number 12", "numeral 12")  # one word changed in ~300 words
PII = """Write to alice@example.com or to bob.smith@mail.example.org.
The server at 192.168.1.20 talks to 2001:db8:85a3::8a2e:370:7334 daily.
aws_access_key_id = AKIAIOSFODNN7EXAMPLE
github token ghp_abcdefghijklmnopqrstuvwxyz0123456789
api_key = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
slack: xoxb-1234567890-abcdefghijkl
Version 3.11, the time 12:30 and x[1::2] are not addresses; @decorators are not emails.
"""


def stdlib_files(n: int, skip: int = 0) -> list[str]:
    """Real text: small UTF-8 modules of the running Python's standard library."""
    found = []
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        if 2_000 < os.path.getsize(path) < 30_000:
            try:
                open(path, encoding="utf-8").read()
            except UnicodeDecodeError:
                continue
            found.append(path)
    return found[skip:skip + n]


def copy_stdlib(project, folder: str, n: int, skip: int = 0) -> list[str]:
    os.makedirs(os.path.join(project.root, folder), exist_ok=True)
    names = []
    for path in stdlib_files(n, skip):
        shutil.copy(path, os.path.join(project.root, folder, os.path.basename(path)))
        names.append(f"{folder}/{os.path.basename(path)}")
    return names


def write_bytes(project, rel: str, data: bytes) -> None:
    path = os.path.join(project.root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def plant(project) -> None:
    """Known duplicates, near-duplicates, PII, a binary file, bad UTF-8 and documents each filter drops."""
    project.write("data/planted/a.txt", PARAGRAPH)
    project.write("data/planted/a_copy.txt", PARAGRAPH)
    project.write("data/planted/a_near.txt", NEAR)
    project.write("data/planted/pii.txt", PII)
    project.write("data/planted/short.txt", "hi\n")
    project.write("data/planted/symbols.txt", "#$%^&*()!{}[]<>|~" * 20 + " ok\n")
    project.write("data/planted/drop.txt", "please DROPME now, this document is long enough\n")
    write_bytes(project, "data/planted/bad.txt", b"caf\xe9 au lait is a drink that is long enough\n")
    write_bytes(project, "data/planted/blob.bin", b"\x00\x01\x02binary\x00" * 10)


PLANTED = """
[corpus.planted]
sources = ["data/planted/*"]
encoding_errors = "replace"
min_chars = 10
exclude = ["DROPME"]
max_symbol_ratio = 0.5
pii = true
dedup = "near"
"""


def out(project, address: str) -> str:
    kind, name = address.split(":")
    return os.path.join(project.root, ".forge", "out", kind, name)


def stats(project, address: str) -> dict:
    with open(os.path.join(out(project, address), "stats.json"), encoding="utf-8") as f:
        return json.load(f)


def rows(project, address: str, split: str = "train") -> list[dict]:
    found = []
    for path in sorted(glob.glob(os.path.join(out(project, address), split, "part-*.parquet"))):
        found += pq.read_table(path).to_pylist()
    return found


def shard_digests(project, address: str) -> dict[str, str]:
    folder = out(project, address)
    return {os.path.relpath(p, folder): file_digest(p)
            for p in glob.glob(os.path.join(folder, "*", "part-*.parquet"))}


def log(project, address: str) -> str:
    return project.read(f".forge/logs/{address.replace(':', '/')}.log")


# ------------------------------------------------------------------ curation

def test_planted_fixtures_give_exact_counts(project):
    plant(project)
    project.forgefile(PLANTED)
    assert project.build() == {"corpus:planted": "built"}
    s = stats(project, "corpus:planted")
    chain = [(f["filter"], f["documents_in"], f["documents_out"]) for f in s["filters"]]
    assert chain == [("min_chars", 8, 7), ("exclude", 7, 6), ("max_symbol_ratio", 6, 5),
                     ("dedup_exact", 5, 4), ("dedup_near", 4, 3)]
    for before, after in zip(s["filters"], s["filters"][1:]):  # each step reads what the one before kept
        assert (before["documents_out"], before["characters_out"]) == (after["documents_in"], after["characters_in"])
    assert s["read"]["documents"] == 8
    assert s["duplicates"] == {"exact": 1, "near": 1}
    assert s["pii"] == {"EMAIL": 2, "IP": 2, "SECRET": 4}
    assert s["binary_files"] == {"count": 1, "files": ["data/planted/blob.bin"]}
    assert s["encoding"] == {"policy": "replace", "replacements": 1, "files": {"data/planted/bad.txt": 1}}
    assert s["sources"] == {"files": 9, "text_files": 9, "record_files": 0, "corpora": []}
    kept = rows(project, "corpus:planted")
    assert sorted(r["source"] for r in kept) == ["data/planted/a.txt", "data/planted/bad.txt", "data/planted/pii.txt"]
    assert s["output"]["train"] == {"documents": 3, "characters": sum(len(r["text"]) for r in kept), "shards": 3}
    assert s["filters"][-1]["characters_out"] == s["output"]["train"]["characters"]
    scrubbed = next(r["text"] for r in kept if r["source"].endswith("pii.txt"))
    assert scrubbed.splitlines() == [
        "Write to <EMAIL> or to <EMAIL>.",
        "The server at <IP> talks to <IP> daily.",
        "aws_access_key_id = <SECRET>",
        "github token <SECRET>",
        'api_key = "<SECRET>"',
        "slack: <SECRET>",
        "Version 3.11, the time 12:30 and x[1::2] are not addresses; @decorators are not emails.",
    ]
    assert next(r["text"] for r in kept if r["source"].endswith("bad.txt")).startswith("caf\ufffd au lait")
    assert "warning: data/planted/blob.bin: binary file" in log(project, "corpus:planted")


def test_artifact_contract(project):
    copy_stdlib(project, "data/std", 12)
    project.forgefile('[corpus.std]\nsources = ["data/std/*.py"]\nholdout = 0.3\n')
    project.build()
    folder = out(project, "corpus:std")
    assert sorted(os.listdir(folder)) == ["holdout", "stats.json", "train"]
    for path in glob.glob(os.path.join(folder, "*", "*")):
        assert os.path.basename(path).startswith("part-") and path.endswith(".parquet")
        table = pq.read_table(path)
        assert table.schema.names == ["text", "id", "source"]
        assert all(t == pa.string() for t in table.schema.types)
        for row in table.to_pylist():
            assert row["id"] == bytes_digest(row["text"].encode())
            assert row["source"].startswith("data/std/")
            with open(os.path.join(project.root, row["source"]), encoding="utf-8") as f:
                assert row["text"] == f.read()  # NFC and nothing else by default: stdlib sources come through whole
    s = stats(project, "corpus:std")
    assert s["output"]["train"]["documents"] + s["output"]["holdout"]["documents"] == 12
    assert s["output"]["holdout"]["documents"] == len(rows(project, "corpus:std", "holdout")) > 0


def test_record_sources_jsonl_csv_parquet(project):
    project.write("data/rec/a.jsonl", "".join(json.dumps({"body": f"jsonl document {i} " * 3, "n": i}) + "\n"
                                              for i in range(5)) + "\n")
    with open(os.path.join(project.root, "data/rec/b.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["n", "body"])
        writer.writerows([[i, f"csv document {i}, with a comma"] for i in range(4)])
    pq.write_table(pa.table({"body": [f"parquet document {i}" for i in range(3)] + [None]}),
                   os.path.join(project.root, "data/rec/c.parquet"))
    project.forgefile('[corpus.rec]\nsources = ["data/rec/*"]\ntext_field = "body"\n')
    project.build()
    s = stats(project, "corpus:rec")
    assert s["sources"] == {"files": 3, "text_files": 0, "record_files": 3, "corpora": []}
    assert s["read"]["documents"] == 13
    assert s["filters"][0] == {"filter": "min_chars", "documents_in": 13, "characters_in": s["read"]["characters"],
                               "documents_out": 12, "characters_out": s["read"]["characters"]}  # the null text
    by_source = {}
    for r in rows(project, "corpus:rec"):
        by_source.setdefault(r["source"], []).append(r["text"])
    assert {k: len(v) for k, v in by_source.items()} == {"data/rec/a.jsonl": 5, "data/rec/b.csv": 4,
                                                          "data/rec/c.parquet": 3}
    assert sorted(by_source["data/rec/b.csv"])[0] == "csv document 0, with a comma"


# ------------------------------------------------------------------ bad input

def test_missing_text_field_lists_the_fields_present(project):
    project.write("data/docs.jsonl", '{"body": "a", "id": 1}\n')
    project.forgefile('[corpus.docs]\nsources = ["data/docs.jsonl"]\n')
    proc = project.run(expect=2)
    assert "FAILED  corpus:docs: data/docs.jsonl:1: no field 'text' (fields present: body, id)\n" in proc.stdout


def test_bad_utf8_names_file_and_byte_offset(project):
    write_bytes(project, "data/bad.txt", b"line one\ncaf\xe9\n")
    project.forgefile('[corpus.t]\nsources = ["data/*.txt"]\n')
    proc = project.run(expect=2)
    assert ('FAILED  corpus:t: data/bad.txt:2: not UTF-8 at byte offset 12 '
            '(set encoding_errors = "replace" to replace bad bytes)\n') in proc.stdout


def test_empty_corpus_after_filters_shows_the_counts(project):
    project.write("data/a.txt", "short\n")
    project.write("data/b.txt", "short\n")
    write_bytes(project, "data/c.txt", b"\x00binary")
    project.forgefile('[corpus.tiny]\nsources = ["data/*.txt"]\nmin_chars = 100\ndedup = "exact"\n')
    proc = project.run(expect=2)
    assert ("FAILED  corpus:tiny: no documents left after curation: 2 documents read from 3 sources "
            "(1 binary file skipped); min_chars 2 -> 0; dedup_exact 0 -> 0\n") in proc.stdout
    assert not os.path.lexists(out(project, "corpus:tiny"))


def test_forgefile_errors_come_before_anything_runs(project):
    project.write("data/a.txt", "a document\n")
    project.forgefile("""\
[corpus.a]
sources = ["data/*.txt"]

[corpus.m1]
mix = { "corpus:a" = -1, "corpus:m2" = 2 }

[corpus.m2]
mix = { "corpus:a" = 0 }

[corpus.m3]
mix = { "run:x" = 1 }
size = { documents = 5, characters = 5 }

[corpus.m4]
mix = { "corpus:a" = 1 }
holdout = 0.1
replacement = true

[corpus.s]
sources = ["data/*.txt", "run:x"]
dedup = "exakt"

[run.x]
cmd = "touch ran"
""")
    proc = project.run(expect=2)
    assert proc.stderr.splitlines() == [
        "Forgefile.toml:5: error: corpus:m1: key 'mix.corpus:a': expected a weight >= 0, got -1",
        "Forgefile.toml:8: error: corpus:m2: key 'mix': all weights are 0: at least one must be > 0",
        "Forgefile.toml:11: error: corpus:m3: key 'mix.run:x': a mix takes corpus targets (corpus:NAME), not 'run:x'",
        "Forgefile.toml:12: error: corpus:m3: key 'size': give exactly one of documents or characters",
        "Forgefile.toml:16: error: corpus:m4: key 'holdout': applies to sources; a mix samples corpora that are "
        "already curated",
        "Forgefile.toml:17: error: corpus:m4: key 'replacement': sampling with replacement needs a size",
        "Forgefile.toml:21: error: corpus:s: key 'dedup': expected 'none', 'exact', 'near' or a table, "
        'got string "exakt"',
    ]
    assert not os.path.exists(os.path.join(project.root, "ran"))
    assert not os.path.exists(os.path.join(project.root, ".forge", "out"))
    project.forgefile('[corpus.s]\nsources = ["data/*.txt", "tokenizer:x"]\n\n[tokenizer.x]\ncorpus = "corpus:a"\nvocab_size = 300\n\n'
                      '[corpus.a]\nsources = ["data/*.txt"]\n')
    assert project.run(expect=2).stderr == ("Forgefile.toml:2: error: corpus:s: key 'sources[1]': 'tokenizer:x' is "
                                            "neither a corpus nor a run target; sources are files, globs, corpus:NAME "
                                            "and run:NAME\n")


def test_a_run_targets_output_files_are_sources(project):
    """A generator script's files become documents (text and records alike), labelled by the target."""
    project.write("gen.py", "import os, sys\nout = sys.argv[1]\nos.makedirs(out + '/docs')\n"
                            "for i in range(int(sys.argv[2])):\n"
                            "    open(f'{out}/docs/d{i}.txt', 'w').write(f'generated document number {i}')\n"
                            "open(out + '/rows.jsonl', 'w').write('{\"text\": \"a record document\"}\\n')\n")
    project.write("data/own.txt", "a document of the project")
    project.forgefile('[run.gen]\ncmd = "python3 {in.script} {out} {params.n}"\ninputs = { script = "gen.py" }\n'
                      'params = { n = 3 }\noutputs = ["docs", "rows.jsonl"]\n\n'
                      '[corpus.c]\nsources = ["data/*.txt", "run:gen"]\n')
    project.build("corpus:c")
    table = pq.read_table(glob.glob(os.path.join(project.root, ".forge/out/corpus/c/train/*.parquet")))
    assert sorted(zip(table["source"].to_pylist(), table["text"].to_pylist())) == [
        ("data/own.txt", "a document of the project"),
        *[(f"run:gen/docs/d{i}.txt", f"generated document number {i}") for i in range(3)],
        ("run:gen/rows.jsonl", "a record document")]
    project.forgefile(project.read("Forgefile.toml").replace("n = 3", "n = 4"))
    assert project.build("corpus:c") == {"run:gen": "built", "corpus:c": "built"}
    assert len(pq.read_table(glob.glob(os.path.join(project.root, ".forge/out/corpus/c/train/*.parquet")))) == 6


# ------------------------------------------------------------------ incremental and stable

def test_adding_a_file_processes_that_file_only_and_keeps_other_shards(project):
    copy_stdlib(project, "data/std", 40)
    project.forgefile('[corpus.std]\nsources = ["data/std/*.py"]\ndedup = "near"\nholdout = 0.1\npii = true\n')
    project.build()
    assert "corpus: 40 source units: 40 processed, 0 from the cache" in log(project, "corpus:std")
    before = shard_digests(project, "corpus:std")
    holdout_before = {r["id"] for r in rows(project, "corpus:std", "holdout")}
    train_before = {r["id"] for r in rows(project, "corpus:std")}
    [added] = copy_stdlib(project, "data/std", 1, skip=40)
    assert project.build() == {"corpus:std": "built"}
    assert "corpus: 41 source units: 1 processed, 40 from the cache" in log(project, "corpus:std")
    after = shard_digests(project, "corpus:std")
    changed = {name for name in after if before.get(name) != after[name]}
    assert len(changed) == 1 and len(set(before) - set(after)) == 0  # the new document's shard only
    holdout_after = {r["id"] for r in rows(project, "corpus:std", "holdout")}
    train_after = {r["id"] for r in rows(project, "corpus:std")}
    assert holdout_before <= holdout_after and train_before <= train_after  # nobody moved across the split
    assert len(holdout_after | train_after) == 41
    # thresholds act on cached facts: changing one processes no file again
    project.forgefile('[corpus.std]\nsources = ["data/std/*.py"]\ndedup = "near"\nholdout = 0.1\npii = true\n'
                      'min_chars = 5000\nworkers = 1\n')
    project.build()
    assert "corpus: 41 source units: 0 processed, 41 from the cache" in log(project, "corpus:std")
    project.forgefile('[corpus.std]\nsources = ["data/std/*.py"]\ndedup = "near"\nholdout = 0.1\npii = true\n'
                      'min_chars = 5000\nworkers = 2\n')
    assert project.build() == {"corpus:std": "cached"}  # workers is runtime-only


def test_holdout_is_decided_by_document_hash(project):
    copy_stdlib(project, "data/std", 30)
    project.forgefile('[corpus.std]\nsources = ["data/std/*.py"]\nholdout = 0.3\n')
    project.build()
    held = {r["id"] for r in rows(project, "corpus:std", "holdout")}
    assert held == {r["id"] for r in rows(project, "corpus:std", "holdout") + rows(project, "corpus:std")
                    if int(r["id"][:16], 16) < 0.3 * 2**64}
    # another corpus reading this one keeps its holdout held out, with itself as the source
    project.forgefile('[corpus.std]\nsources = ["data/std/*.py"]\nholdout = 0.3\n\n'
                      '[corpus.again]\nsources = ["corpus:std"]\nnormalize = "NFKC"\n')
    project.build()
    assert {r["id"] for r in rows(project, "corpus:again", "holdout")} == held
    assert {r["source"] for r in rows(project, "corpus:again")} == {"corpus:std"}
    assert stats(project, "corpus:again")["holdout"] == {"fraction": 0.0, "from_source_corpora": len(held)}


def test_two_clean_builds_give_byte_identical_output(project):
    plant(project)
    copy_stdlib(project, "data/std", 10)
    project.forgefile(PLANTED + '\n[corpus.std]\nsources = ["data/std/*.py"]\nholdout = 0.2\n\n'
                      '[corpus.mix]\nmix = { "corpus:std" = 2, "corpus:planted" = 1 }\nsize = { documents = 50 }\n')
    first = {t["target"]: t["digest"] for t in project.events()[-1]["targets"]}
    shutil.rmtree(os.path.join(project.root, ".forge"))
    second = {t["target"]: t["digest"] for t in project.events()[-1]["targets"]}
    assert first == second and None not in first.values()


# ------------------------------------------------------------------ mixing

def write_docs(project, rel: str, n: int, seed: int, word: str) -> None:
    rng = random.Random(seed)
    project.write(rel, "".join(json.dumps({"text": f"{word} {i} " + "x" * rng.randint(40, 400)}) + "\n"
                               for i in range(n)))


MIX_SOURCES = """
[corpus.a]
sources = ["data/a.jsonl"]
holdout = 0.1

[corpus.b]
sources = ["data/b.jsonl"]
holdout = 0.1
"""


@pytest.mark.parametrize("size, replacement", [
    ("{ documents = 1000 }", False),
    ("{ characters = 150_000 }", False),
    ("{ characters = 150_000 }", True),
])
def test_mix_proportions_within_one_percent(project, size, replacement):
    write_docs(project, "data/a.jsonl", 300, 1, "alpha")
    write_docs(project, "data/b.jsonl", 100, 2, "beta")
    project.forgefile(MIX_SOURCES + f'\n[corpus.mix]\nmix = {{ "corpus:a" = 0.7, "corpus:b" = 0.3 }}\n'
                      f'size = {size}\nreplacement = {"true" if replacement else "false"}\n')
    project.build()
    s = stats(project, "corpus:mix")["mix"]
    unit = "characters" if "characters" in size else "documents"
    assert s["unit"] == unit and s["requested"] == {"corpus:a": 0.7, "corpus:b": 0.3}
    train = rows(project, "corpus:mix")
    amount = {a: sum(len(r["text"]) if unit == "characters" else 1 for r in train if r["source"] == a)
              for a in ("corpus:a", "corpus:b")}
    total = sum(amount.values())
    for address, wanted in (("corpus:a", 0.7), ("corpus:b", 0.3)):
        assert abs(amount[address] / total - wanted) < 0.01
        assert s["realised"][address] == round(amount[address] / total, 6)
    if unit == "documents":
        assert total == 1000
    else:
        assert abs(total - 150_000) / 150_000 < 0.01
    held = rows(project, "corpus:mix", "holdout")  # components' holdouts, same proportions, never repeated
    assert held and len({r["id"] for r in held}) == len(held)
    assert not {r["id"] for r in held} & {r["id"] for r in train}


def test_mix_without_replacement_upsamples_whole_epochs(project):
    write_docs(project, "data/a.jsonl", 300, 1, "alpha")
    write_docs(project, "data/b.jsonl", 100, 2, "beta")
    project.forgefile(MIX_SOURCES + '\n[corpus.mix]\nmix = { "corpus:a" = 1, "corpus:b" = 1 }\n'
                      'size = { documents = 500 }\n')
    project.build()
    b_train = stats(project, "corpus:b")["output"]["train"]["documents"]
    counts = {}
    for r in rows(project, "corpus:mix"):
        if r["source"] == "corpus:b":
            counts[r["id"]] = counts.get(r["id"], 0) + 1
    epochs, rest = divmod(250, b_train)
    assert sorted(set(counts.values())) == ([epochs] if rest == 0 else [epochs, epochs + 1])
    assert sum(n == epochs + 1 for n in counts.values()) == rest


def test_record_texts_lone_surrogates_and_wrong_types(project):
    project.write("data/r.jsonl", '{"text": "a lone \\ud800 surrogate from a JSON escape"}\n{"text": null}\n')
    project.forgefile('[corpus.r]\nsources = ["data/r.jsonl"]\n')
    proc = project.run(expect=2)
    assert ("FAILED  corpus:r: data/r.jsonl:1: field 'text' holds a lone surrogate "
            '(set encoding_errors = "replace" to replace it)\n') in proc.stdout
    project.forgefile('[corpus.r]\nsources = ["data/r.jsonl"]\nencoding_errors = "replace"\n')
    project.build()
    assert [r["text"] for r in rows(project, "corpus:r")] == ["a lone \ufffd surrogate from a JSON escape"]
    assert stats(project, "corpus:r")["encoding"]["replacements"] == 1
    project.write("data/r.jsonl", '{"text": "fine"}\n{"text": 5}\n')
    proc = project.run(expect=2)
    assert "FAILED  corpus:r: data/r.jsonl:2: field 'text' is int, not text\n" in proc.stdout


def test_a_near_dedup_threshold_datasketch_cannot_band_is_bad_input(project):
    # was "build raised ValueError: The number of bands are too small (b < 2)" from datasketch
    project.write("data/a.txt", PARAGRAPH)
    project.forgefile('[corpus.n]\nsources = ["data/*.txt"]\ndedup = { near = { threshold = 1.0, num_perm = 16 } }\n')
    proc = project.run(expect=2)
    assert ("FAILED  corpus:n: dedup.near: datasketch finds no LSH banding for threshold 1 with num_perm 16 "
            "(The number of bands are too small (b < 2)); lower the threshold or raise num_perm\n") in proc.stdout


def test_json_lines_rows_are_read_as_the_format_says(project):
    # U+2028 and U+0085 inside strings split lines under str.splitlines(); a 5,000-digit number raised
    # AttributeError ('ValueError' object has no attribute 'msg'); 100,000 brackets raised RecursionError
    project.write("data/sep.jsonl", '{"text": "one\u2028line\u0085still"}\n{"text": "two"}\n')
    project.write("data/big.jsonl", '{"text": "a"}\n{"text": "b", "n": ' + "1" * 5000 + "}\n")
    project.write("data/deep.jsonl", '{"text": "a", "n": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    project.write("data/nan.jsonl", '{"text": "a", "score": NaN}\n')
    project.forgefile('[corpus.sep]\nsources = ["data/sep.jsonl"]\n\n[corpus.big]\nsources = ["data/big.jsonl"]\n\n'
                      '[corpus.deep]\nsources = ["data/deep.jsonl"]\n\n[corpus.nan]\nsources = ["data/nan.jsonl"]\n')
    proc = project.run("-k", expect=2)
    assert "built   corpus:sep" in proc.stdout
    assert "FAILED  corpus:big: data/big.jsonl:2: not valid JSON (a number of 5000 digits; at most 4300 are read)\n" \
        in proc.stdout
    assert "FAILED  corpus:deep: data/deep.jsonl:1: not valid JSON (arrays or objects nested too deep)\n" in proc.stdout
    assert "FAILED  corpus:nan: data/nan.jsonl:1: not valid JSON (NaN is not a JSON value)\n" in proc.stdout
    texts = sorted(t for part in glob.glob(os.path.join(project.root, ".forge/out/corpus/sep/*/*.parquet"))
                   for t in pq.read_table(part).column("text").to_pylist())
    assert texts == ["one\u2028line\u0085still", "two"]
