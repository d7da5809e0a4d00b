"""The `dataset` rule, through the real CLI: formats, validation, policies, sources, splits,
dedup, decontamination, layering and determinism, with exact error texts."""
from __future__ import annotations

import json
import os
import shutil

import pytest

def jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def output(project, name: str, split: str = "train") -> list[dict]:
    text = project.read(f".forge/out/dataset/{name}/{split}.jsonl")
    return [json.loads(line) for line in text.split("\n") if line]  # JSON Lines end at \n only


def meta(project, name: str, file: str) -> dict:
    return json.loads(project.read(f".forge/out/dataset/{name}/{file}.json"))


def digest(project, target: str) -> str:
    summary = project.events(target)[-1]
    return next(t["digest"] for t in summary["targets"] if t["target"] == target)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# ------------------------------------------------------------------ formats

def test_each_format_gives_the_columns_trl_reads(project):
    project.write("data/pc.jsonl", jsonl([{"question": "2+2?", "response": "4", "id": 7, "junk": 1}]))
    project.write("data/chat.jsonl", jsonl([{"messages": [{"role": "system", "content": "Be brief."},
                                                          user("Hi"), assistant("Hello.")]}]))
    project.write("data/pref.jsonl", jsonl([
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 1, "score_rejected": 0.1},
        {"prompt": "3+3?", "chosen": "6", "rejected": "7"},
    ]))
    project.write("data/rl.jsonl", jsonl([{"prompt": "What is 3+4?", "answer": 7}, {"prompt": "Say hi"}]))
    project.write("data/conv.jsonl", jsonl([{"prompt": [user("Hi")], "completion": [assistant("Hello")]}]))
    project.forgefile("""
        [dataset.pc]
        source = "data/pc.jsonl"
        format = "prompt_completion"
        fields = { prompt = "question", completion = "response" }
        keep = ["id"]

        [dataset.chat]
        source = "data/chat.jsonl"
        format = "messages"

        [dataset.pref]
        source = "data/pref.jsonl"
        format = "preference"

        [dataset.rl]
        source = "data/rl.jsonl"
        format = "prompts"

        [dataset.conv]
        source = "data/conv.jsonl"
        format = "prompt_completion"
    """)
    project.run()
    assert output(project, "pc") == [{"prompt": "2+2?", "completion": "4", "id": 7}]  # SFTTrainer
    assert output(project, "chat")[0]["messages"][2] == {"role": "assistant", "content": "Hello."}
    assert output(project, "pref") == [  # DPOTrainer; ODPO's scores kept, null where a pair has none
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 1.0, "score_rejected": 0.1},
        {"prompt": "3+3?", "chosen": "6", "rejected": "7", "score_chosen": None, "score_rejected": None},
    ]
    assert output(project, "rl") == [{"prompt": "What is 3+4?", "answer": "7"},  # GRPOTrainer
                                     {"prompt": "Say hi", "answer": None}]
    assert output(project, "conv") == [{"prompt": [user("Hi")], "completion": [assistant("Hello")]}]
    info = meta(project, "pref", "dataset")
    assert info == {"format": "preference", "conversational": False, "trainer": "DPOTrainer",
                    "columns": ["chosen", "prompt", "rejected", "score_chosen", "score_rejected"],
                    "splits": {"train": {"path": "train.jsonl", "rows": 2, "fraction": 1.0}}}
    assert '"score_chosen": 1.0,' in project.read(".forge/out/dataset/pref/train.jsonl")  # one column type
    assert meta(project, "conv", "dataset")["conversational"] is True
    assert project.read(".forge/out/dataset/pc/train.jsonl") == '{"completion": "4", "id": 7, "prompt": "2+2?"}\n'


def test_format_and_style_are_told_from_the_fields(project):
    project.write("data/pref.jsonl", jsonl([{"prompt": [user("2+2?")], "chosen": [assistant("4")],
                                             "rejected": [assistant("5")]}]))
    project.write("data/qa.jsonl", jsonl([{"q": "2+2?", "a": "4"}]))
    project.forgefile("""
        [dataset.pref]
        source = "data/pref.jsonl"

        [dataset.qa]
        source = "data/qa.jsonl"
        fields = { prompt = "q", completion = "a" }

        [dataset.none]
        source = "data/qa.jsonl"
    """)
    proc = project.run("-k", expect=2)
    assert meta(project, "pref", "dataset")["format"] == "preference"
    assert meta(project, "pref", "dataset")["conversational"] is True
    assert output(project, "qa") == [{"prompt": "2+2?", "completion": "4"}]
    assert ('FAILED  dataset:none: cannot tell the format from the fields (a, q): set format = "prompt_completion", '
            '"messages", "preference" or "prompts", and map your columns with fields = { prompt = "...", ... }'
            in proc.stdout)


ROW_ERRORS = [
    # (target body, file content, the message after "FAILED  dataset:NAME: ")
    ('format = "prompt_completion"', jsonl([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": None}]),
     "data/x.jsonl:2: field 'completion': expected a string, got null"),
    ('format = "prompt_completion"\nfields = { completion = "response" }', jsonl([{"prompt": "a", "response": 3}]),
     "data/x.jsonl:1: field 'response' (completion): expected a string, got a number"),
    ('format = "prompt_completion"', jsonl([{"prompt": " ", "completion": "b"}]),
     "data/x.jsonl:1: field 'prompt': is empty"),
    ('format = "prompt_completion"\nconversational = true', jsonl([{"prompt": [user("a")], "completion": "b"}]),
     "data/x.jsonl:1: field 'completion': expected a list of messages, got a string"),
    ('format = "messages"', jsonl([{"messages": [user("a"), {"role": "bot", "content": "b"}]}]),
     "data/x.jsonl:1: field 'messages[1].role': expected one of system, user, assistant, tool, got \"bot\""),
    ('format = "messages"', jsonl([{"messages": [user("a"), {"role": "assistant"}]}]),
     "data/x.jsonl:1: field 'messages[1].content': expected a string, got null"),
    ('format = "messages"', jsonl([{"messages": [user("a")]}]),
     "data/x.jsonl:1: field 'messages': has no assistant message"),
    ('format = "preference"', jsonl([{"prompt": "a", "chosen": "b", "rejected": "c", "score_chosen": 1}]),
     "data/x.jsonl:1: field 'score_rejected': missing while score_chosen is given (give both scores or neither)"),
    ('format = "preference"', jsonl([{"prompt": "a", "chosen": "b", "rejected": "c", "score_chosen": "high",
                                      "score_rejected": 0}]),
     "data/x.jsonl:1: field 'score_chosen': expected a number, got a string"),
    ('format = "preference"', jsonl([{"prompt": "a", "chosen": "same  answer", "rejected": "same answer"}]),
     "data/x.jsonl:1: field 'rejected': is the same as chosen"),
    ('format = "prompts"', jsonl([{"question": "a"}]),
     "data/x.jsonl:1: no field 'prompt' (fields present: question)"),
    ('format = "prompts"\nfields = { answer = "gold" }', jsonl([{"prompt": "a", "gold": "1"}, {"prompt": "b"}]),
     "data/x.jsonl:2: field 'gold' (answer): missing"),
    ('format = "prompts"', '{"prompt": "a"}\n\n{"prompt": }\n',
     "data/x.jsonl:3: not valid JSON (Expecting value at column 12)"),
]


def test_invalid_rows_name_file_line_and_field_and_exit_2(project):
    body = ""
    for i, (params, data, _) in enumerate(ROW_ERRORS):
        project.write(f"d{i}/x.jsonl", data)
        body += f'[dataset.d{i}]\nsource = "d{i}/x.jsonl"\n{params}\n\n'
    project.forgefile(body)
    proc = project.run("-k", expect=2)
    for i, (_, _, message) in enumerate(ROW_ERRORS):
        assert f"FAILED  dataset:d{i}: {message.replace('data/', f'd{i}/')}\n" in proc.stdout
    assert not os.path.exists(os.path.join(project.root, ".forge/out/dataset"))


def test_drop_policy_drops_and_counts_by_reason(project):
    project.write("data/x.jsonl", jsonl([
        {"prompt": "a", "completion": "1"},
        {"prompt": "b", "completion": None},
        {"prompt": "c"},
        {"prompt": "d", "completion": None},
        {"prompt": "e", "completion": "5"},
    ]) + "not json\n")
    forgefile = """
        [dataset.d]
        source = "data/x.jsonl"
        format = "prompt_completion"
    """
    project.forgefile(forgefile)
    proc = project.run(expect=2)
    assert ("FAILED  dataset:d: data/x.jsonl:2: field 'completion': expected a string, got null "
            "(and 3 more invalid rows, listed in the log)\n") in proc.stdout
    project.forgefile(forgefile + 'invalid = "drop"\n')
    project.run()
    assert [r["prompt"] for r in output(project, "d")] == ["a", "e"]
    stats = meta(project, "d", "stats")
    assert stats["invalid"] == {
        "rows": 4, "policy": "drop",
        "by_reason": {"completion: expected a string, got null": 2, "no field 'completion'": 1, "not valid JSON": 1},
        "examples": ["data/x.jsonl:2: field 'completion': expected a string, got null",
                     "data/x.jsonl:3: no field 'completion' (fields present: prompt)",
                     "data/x.jsonl:4: field 'completion': expected a string, got null",
                     "data/x.jsonl:6: not valid JSON (Expecting value at column 1)"]}
    assert stats["sources"] == {"data/x.jsonl": {"rows_in": 6, "invalid": 4, "duplicates": 0,
                                                 "decontaminated": 0, "rows_out": 2}}
    assert (stats["rows_in"], stats["rows_out"]) == (6, 2)


def test_bad_keys_are_forgefile_errors_before_anything_runs(project):
    project.write("data/x.jsonl", jsonl([{"prompt": "a", "completion": "b"}]))
    project.forgefile("""
        [dataset.a]
        source = "data/x.jsonl"
        format = "mesages"

        [dataset.b]
        source = "data/x.jsonl"
        format = "prompt_completion"
        fields = { promt = "question" }
        splits = { train = 0.8, test = 0.1 }

        [dataset.c]
        source = "data/x.jsonl"
        ngram = 0

        [dataset.d]
        source = "data/x.jsonl"
        invalid = "skip"
        splits = { train = 1.5, "a/b" = -0.5 }
    """)
    proc = project.run(expect=2)
    assert proc.stderr.splitlines() == [
        "Forgefile.toml:4: error: dataset:a: key 'format': expected one of auto, prompt_completion, messages, "
        "preference, prompts, got string \"mesages\" (did you mean 'messages'?)",
        "Forgefile.toml:9: error: dataset:b: key 'fields.promt': unknown record field 'promt' (did you mean "
        "'prompt'?); fields of format prompt_completion: prompt, completion",
        "Forgefile.toml:10: error: dataset:b: key 'splits': fractions must sum to 1, got 0.9",
        "Forgefile.toml:14: error: dataset:c: key 'ngram': expected an integer >= 1, got integer 0",
        "Forgefile.toml:18: error: dataset:d: key 'invalid': expected one of error, drop, got string \"skip\"",
    ]
    assert proc.stdout == "" and not os.path.exists(os.path.join(project.root, ".forge/out"))
    project.forgefile("""
        [dataset.d]
        source = "data/x.jsonl"
        splits = { train = 1.5, "a/b" = -0.5 }
    """)
    assert project.run(expect=2).stderr.splitlines() == [
        "Forgefile.toml:4: error: dataset:d: key 'splits.a/b': a split name is letters, digits, '_', '-' and '.' "
        "(it names a file)",
        "Forgefile.toml:4: error: dataset:d: key 'splits.a/b': a fraction is > 0 and <= 1, got -0.5",
        "Forgefile.toml:4: error: dataset:d: key 'splits.train': a fraction is > 0 and <= 1, got 1.5",
    ]


# ------------------------------------------------------------------ sources

def test_csv_and_parquet_sources(project):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    project.write("data/pref.csv", 'q,good,bad,s_good,s_bad\n"2+2?",4,5,0.9,0.1\n"3+3?",6,7,,\n"x",a,b,high,1\n')
    pq.write_table(pa.table({"messages": [[user("Hi"), assistant("Hello")], [user("Bye"), assistant("Bye!")]],
                             "id": [1, 2]}), os.path.join(project.root, "data/chat-1.parquet"))
    pq.write_table(pa.table({"messages": [[user("Yo"), assistant("Hey")]], "id": [3]}),
                   os.path.join(project.root, "data/chat-2.parquet"))
    project.forgefile("""
        [dataset.pref]
        source = "data/pref.csv"
        format = "preference"
        fields = { prompt = "q", chosen = "good", rejected = "bad", score_chosen = "s_good", score_rejected = "s_bad" }
        invalid = "drop"

        [dataset.chat]
        source = "data/*.parquet"
        keep = ["id"]
    """)
    project.run()
    assert output(project, "pref") == [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 0.9, "score_rejected": 0.1},
    ]
    # an empty CSV cell is a missing value, and a mapped field must be in every row
    assert meta(project, "pref", "stats")["invalid"]["examples"] == [
        "data/pref.csv:3: field 's_good' (score_chosen): expected a value, got an empty string",
        "data/pref.csv:4: field 's_good' (score_chosen): expected a number, got \"high\"",
    ]
    assert [(r["id"], r["messages"][0]["content"]) for r in output(project, "chat")] == [(1, "Hi"), (2, "Bye"), (3, "Yo")]
    assert list(meta(project, "chat", "stats")["sources"]) == ["data/chat-1.parquet", "data/chat-2.parquet"]


def test_dataset_from_dataset(project):
    project.write("data/raw.jsonl", jsonl([
        {"q": "What is two plus two?", "a": "4", "id": 1},
        {"q": "What is two plus two?", "a": "four", "id": 2},
        {"q": "Name a colour", "a": None, "id": 3},
        {"q": "Name a fruit", "a": "apple", "id": 4},
    ]))
    project.forgefile("""
        [dataset.raw]
        source = "data/raw.jsonl"
        fields = { prompt = "q", completion = "a" }
        keep = ["id"]
        invalid = "drop"

        [dataset.clean]
        source = "dataset:raw"
        dedup = "prompt"

        [dataset.wrong]
        source = "dataset:raw"
        format = "preference"

        [dataset.evals]
        source = "data/evals.jsonl"

        [dataset.fair]
        source = "dataset:raw"
        decontaminate = "dataset:evals"
        ngram = 3
    """)
    project.write("data/evals.jsonl", jsonl([{"prompt": "Name a fruit, any fruit", "answer": "pear"}]))
    proc = project.run("-k", expect=2)
    assert "FAILED  dataset:wrong: dataset:raw has format prompt_completion; this dataset's format is preference\n" \
        in proc.stdout
    # the upstream's extra columns come along; its rows are named by target and file
    assert output(project, "clean") == [{"prompt": "What is two plus two?", "completion": "4", "id": 1},
                                        {"prompt": "Name a fruit", "completion": "apple", "id": 4}]
    stats = meta(project, "clean", "stats")
    assert stats["sources"] == {"dataset:raw": {"rows_in": 3, "invalid": 0, "duplicates": 1,
                                                "decontaminated": 0, "rows_out": 2}}
    assert "duplicate: dataset:raw/train.jsonl:2: duplicate of dataset:raw/train.jsonl:1" in \
        project.read(".forge/logs/dataset/clean.log")
    # a dataset target is a benchmark too
    assert [r["id"] for r in output(project, "fair")] == [1, 2]
    assert meta(project, "fair", "stats")["decontaminated"]["by_benchmark"] == {"dataset:evals": 1}


# ------------------------------------------------------------------ splits, dedup, decontamination

def test_splits_are_stable_when_rows_are_added(project):
    project.write("data/x.jsonl", jsonl({"prompt": f"question {i}", "answer": str(i)} for i in range(300)))
    forgefile = """
        [dataset.d]
        source = "data/x.jsonl"
        splits = { train = 0.8, test = 0.2 }
    """
    project.forgefile(forgefile)
    project.run()

    def assignment():
        return {r["prompt"]: split for split in ("train", "test") for r in output(project, "d", split)}

    before = assignment()
    assert 40 <= list(before.values()).count("test") <= 80
    assert meta(project, "d", "stats")["splits"] == {"test": list(before.values()).count("test"),
                                                     "train": list(before.values()).count("train")}
    project.write("data/x.jsonl", jsonl({"prompt": f"question {i}", "answer": str(i)} for i in range(400, -1, -1)))
    project.run()
    after = assignment()
    assert len(after) == 401 and all(after[p] == split for p, split in before.items())
    # the table's order is not part of the key, and does not change the assignment
    project.forgefile(forgefile.replace("train = 0.8, test = 0.2", "test = 0.2, train = 0.8"))
    assert "fresh" in project.run("status").stdout


def test_split_by_prompt_keeps_a_prompts_answers_together_and_chat_prompts_dedup(project):
    project.write("data/x.jsonl", jsonl({"prompt": f"question {i}", "completion": f"answer {k}"}
                                        for i in range(60) for k in range(3)))
    project.write("data/chat.jsonl", jsonl([
        {"messages": [user("Hi"), assistant("Hello"), user("Bye"), assistant("Ciao")]},
        {"messages": [user("Hi"), assistant("Hello"), user("Bye"), assistant("See you")]},  # same prompt
        {"messages": [user("Hi"), assistant("Hey")]},
    ]))
    project.forgefile("""
        [dataset.grouped]
        source = "data/x.jsonl"
        split_by = "prompt"
        splits = { train = 0.5, test = 0.5 }

        [dataset.chat]
        source = "data/chat.jsonl"
        dedup = "prompt"
    """)
    project.run()
    splits_of: dict[str, set] = {}
    for split in ("train", "test"):
        for r in output(project, "grouped", split):
            splits_of.setdefault(r["prompt"], set()).add(split)
    assert len(splits_of) == 60 and all(len(s) == 1 for s in splits_of.values())
    assert {next(iter(s)) for s in splits_of.values()} == {"train", "test"}
    assert [r["messages"][-1]["content"] for r in output(project, "chat")] == ["Ciao", "Hey"]


def test_dedup_exact_and_by_prompt(project):
    project.write("data/x.jsonl", jsonl([
        {"prompt": "Name a colour", "completion": "blue", "id": 1},
        {"prompt": "Name  a colour ", "completion": "blue", "id": 2},  # same after normalisation
        {"prompt": "Name a colour", "completion": "red", "id": 3},
        {"prompt": "Name a fruit", "completion": "pear", "id": 4},
    ]))
    project.forgefile("""
        [dataset.exact]
        source = "data/x.jsonl"
        keep = ["id"]
        dedup = "exact"

        [dataset.prompt]
        source = "data/x.jsonl"
        keep = ["id"]
        dedup = "prompt"

        [dataset.none]
        source = "data/x.jsonl"
    """)
    project.run()
    assert [r["id"] for r in output(project, "exact")] == [1, 3, 4]
    assert [r["id"] for r in output(project, "prompt")] == [1, 4]
    assert len(output(project, "none")) == 4
    assert meta(project, "prompt", "stats")["duplicates"] == {"rows": 2, "by": "prompt"}


def test_decontamination_removes_the_planted_rows_and_reruns_when_a_benchmark_changes(project):
    clean = [{"prompt": f"Tell me fact number {i} about the ocean", "completion": "It is wet.", "id": i}
             for i in range(20)]
    planted = [
        {"prompt": "Quick: If Sam has 3 apples and eats one, how many apples are left? Thanks!",
         "completion": "2", "id": 100},
        {"prompt": "Solve", "completion": "IF SAM HAS 3 APPLES AND EATS ONE how many apples", "id": 101},
        {"prompt": "What is 17 times 3 plus the square of four?", "completion": "67", "id": 102},
    ]
    project.write("data/sft.jsonl", jsonl(clean[:10] + planted[:2] + clean[10:] + planted[2:]))
    bench = [{"prompt": "If Sam has 3 apples and eats one, how many apples are left?", "answer": "2"}]
    project.write("bench/arith.jsonl", jsonl(bench))
    project.write("bench/notes.txt", "Nothing here overlaps the training data at all.\n")
    project.forgefile("""
        [dataset.sft]
        source = "data/sft.jsonl"
        keep = ["id"]
        decontaminate = ["bench/arith.jsonl", "bench/notes.txt"]
        ngram = 6
    """)
    project.run()
    assert [r["id"] for r in output(project, "sft")] == list(range(20)) + [102]
    assert meta(project, "sft", "stats")["decontaminated"] == {
        "rows": 2, "ngram": 6, "by_benchmark": {"bench/arith.jsonl": 2, "bench/notes.txt": 0}}
    assert "decontaminated: data/sft.jsonl:11: shares a 6-word sequence with bench/arith.jsonl" in \
        project.read(".forge/logs/dataset/sft.log")
    # the benchmarks are inputs: a new benchmark question re-runs decontamination
    project.write("bench/arith.jsonl", jsonl(bench + [{"prompt": "What is 17 times 3 plus the square of four?"}]))
    assert project.run("explain", "dataset:sft").stdout == "dataset:sft: stale\n  - input bench/arith.jsonl changed\n"
    assert project.build() == {"dataset:sft": "built"}
    assert [r["id"] for r in output(project, "sft")] == list(range(20))
    assert meta(project, "sft", "stats")["decontaminated"]["by_benchmark"] == {"bench/arith.jsonl": 3,
                                                                               "bench/notes.txt": 0}


def test_nothing_left_is_bad_input(project):
    project.write("data/x.jsonl", jsonl([{"prompt": "a b c d", "completion": None}]))
    project.forgefile('[dataset.d]\nsource = "data/x.jsonl"\nformat = "prompt_completion"\ninvalid = "drop"\n')
    proc = project.run(expect=2)
    assert ("FAILED  dataset:d: no records left: 1 rows read, 1 invalid, 0 duplicates, 0 decontaminated\n"
            in proc.stdout)


# ------------------------------------------------------------------ output

def test_two_clean_builds_give_the_same_digest(project):
    rows = [{"prompt": f"Frage {i}: wie heißt die Zahl {i}?", "completion": f"Sie heißt {i} ✓", "id": i}
            for i in range(50)]
    project.write("data/x.jsonl", jsonl(rows + rows[:5]))
    project.write("bench/b.jsonl", jsonl([{"prompt": "Frage 3: wie heißt die Zahl 3?"}]))
    project.forgefile("""
        [dataset.d]
        source = "data/x.jsonl"
        keep = ["id"]
        dedup = "exact"
        decontaminate = "bench/b.jsonl"
        ngram = 6
        splits = { train = 0.7, validation = 0.1, test = 0.2 }
    """)
    first = digest(project, "dataset:d")
    shutil.rmtree(os.path.join(project.root, ".forge"))
    assert digest(project, "dataset:d") == first
    stats = meta(project, "d", "stats")
    assert (stats["duplicates"]["rows"], stats["decontaminated"]["rows"], stats["rows_out"]) == (5, 1, 49)
    assert sorted(os.listdir(os.path.join(project.root, ".forge/out/dataset/d"))) == [
        "dataset.json", "stats.json", "test.jsonl", "train.jsonl", "validation.jsonl"]


def test_output_loads_with_datasets(project):
    datasets = pytest.importorskip("datasets")
    project.write("data/x.jsonl", jsonl({"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(20)))
    project.forgefile('[dataset.d]\nsource = "data/x.jsonl"\nsplits = { train = 0.5, test = 0.5 }\n')
    project.run()
    folder = os.path.join(project.root, ".forge/out/dataset/d")
    loaded = datasets.load_dataset("json", data_files={s: os.path.join(folder, f"{s}.jsonl") for s in ("train", "test")})
    assert loaded["train"].column_names == ["chosen", "prompt", "rejected"]
    assert loaded["train"].num_rows + loaded["test"].num_rows == 20


def test_pyarrow_version_is_in_the_key_only_when_parquet_may_be_read(project):
    project.write("data/x.jsonl", jsonl([{"prompt": "a"}]))
    project.forgefile('[dataset.j]\nsource = "data/x.jsonl"\n\n[dataset.p]\nsource = "data/*"\n')
    project.run()
    materials = {}
    for name in os.listdir(os.path.join(project.root, ".forge/records")):
        record = json.loads(project.read(f".forge/records/{name}"))
        materials[record["target"]] = record["material"]["env"]["libraries"]
    assert materials["dataset:j"] == {}
    assert list(materials["dataset:p"]) == ["pyarrow"]


def test_json_lines_rows_that_used_to_raise_are_bad_rows_named_by_line(project):
    # U+2028 / U+0085 in a string split the line (splitlines); a 5,000-digit number raised AttributeError,
    # 100,000 brackets RecursionError, a lone surrogate UnicodeEncodeError when the split was written
    good = {"prompt": "a\u2028b", "completion": "c\u0085d"}
    project.write("data/x.jsonl", "\n".join([
        json.dumps(good, ensure_ascii=False),
        '{"prompt": "p", "completion": ' + "7" * 5000 + "}",
        '{"prompt": "p", "completion": "c", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"prompt": "\\ud800", "completion": "c"}',
        '{"prompt": "q", "completion": NaN}',
    ]) + "\n")
    project.forgefile('[dataset.keep]\nsource = "data/x.jsonl"\nformat = "prompt_completion"\ninvalid = "drop"\n\n'
                      '[dataset.strict]\nsource = "data/x.jsonl"\nformat = "prompt_completion"\n')
    proc = project.run("-k", expect=2)
    assert ("FAILED  dataset:strict: data/x.jsonl:2: not valid JSON (a number of 5000 digits; at most 4300 are read) "
            "(and 3 more invalid rows, listed in the log)\n") in proc.stdout
    assert output(project, "keep") == [good]
    log = project.read(".forge/logs/dataset/strict.log")
    for line in ["data/x.jsonl:3: not valid JSON (arrays or objects nested too deep)",
                 "data/x.jsonl:4: a string holds a lone surrogate (a \\uD800-\\uDFFF escape without its pair): "
                 "not valid Unicode",
                 "data/x.jsonl:5: not valid JSON (NaN is not a JSON value)"]:
        assert line in log, log
