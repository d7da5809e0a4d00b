"""The `images` rule through the real CLI: every format from JSONL + PNG folders, Parquet bytes and a
run target's output; the artifact the contract fixes; a changed image rebuilding only itself; broken
images with exact messages; dedup and split stability."""
from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image, ImageDraw

from forgebuild.hashing import file_digest
from test_corpus import write_bytes

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 30), "blue": (30, 30, 220), "yellow": (230, 200, 20)}


def shape_png(colour: str, count: int = 1, size: int = 32, fmt: str = "PNG") -> bytes:
    """`count` squares of one colour on white: the pictures of the issue's example task."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for i in range(count):
        x = 2 + 10 * i
        draw.rectangle([x, 10, x + 7, 17], fill=COLOURS[colour])
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def artifact(project, name: str) -> str:
    return os.path.join(project.root, ".forge/out/images", name)


def records(project, name: str, split: str = "train") -> list[dict]:
    with open(os.path.join(artifact(project, name), f"{split}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def meta(project, name: str, file: str) -> dict:
    with open(os.path.join(artifact(project, name), f"{file}.json"), encoding="utf-8") as f:
        return json.load(f)


def log(project, name: str) -> str:
    return project.read(f".forge/logs/images/{name}.log")


def user(n_images: int, text: str) -> dict:
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def shapes_folder(project, n: int = 8) -> list[dict]:
    """data/shapes/: img/NN.png (colour i % 4, i // 4 + 1 squares) and qa.jsonl, one question per image."""
    rows = []
    for i in range(n):
        colour = list(COLOURS)[i % 4]
        write_bytes(project, f"data/shapes/img/{i:02d}.png", shape_png(colour, i // 4 + 1))
        rows.append({"file": f"img/{i:02d}.png", "q": "What colour is the shape?", "answer": colour})
    project.write("data/shapes/qa.jsonl", jsonl(rows))
    return rows


# ------------------------------------------------------------------ the artifact and every format

def test_vqa_from_a_folder_gives_the_contract_artifact(project):
    rows = shapes_folder(project)
    project.write("data/shapes/qa.jsonl", jsonl([*rows, rows[0]]))  # an exact duplicate, dropped
    project.forgefile("""
        [images.shapes]
        source = "data/shapes/"
        format = "vqa"
        fields = { image = "file", question = "q" }
        resize = { width = 16, height = 16 }
        splits = { train = 0.5, test = 0.5 }
    """)
    assert project.build() == {"images:shapes": "built"}
    folder = artifact(project, "shapes")
    got = records(project, "shapes") + records(project, "shapes", "test")
    assert sorted(r["answer"] for r in got) == sorted(r["answer"] for r in rows)
    for record in got:
        assert record == {"images": record["images"], "answer": record["answer"], "choices": None,
                          "messages": [user(1, "What colour is the shape?"), assistant(record["answer"])]}
        [rel] = record["images"]
        path = os.path.join(folder, rel)
        assert rel == f"images/{file_digest(path)}.png"  # named by the digest of its PNG bytes
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (16, 16))
    assert sorted(os.listdir(folder)) == ["dataset.json", "images", "stats.json", "test.jsonl", "train.jsonl"]
    assert len(os.listdir(os.path.join(folder, "images"))) == 8
    info = meta(project, "shapes", "dataset")
    assert info["kind"] == "images" and info["format"] == "vqa" and info["images"] == 8
    assert info["columns"] == ["answer", "choices", "images", "messages"]
    assert {name: s["rows"] for name, s in info["splits"].items()} == {
        "train": len(records(project, "shapes")), "test": len(records(project, "shapes", "test"))}
    stats = meta(project, "shapes", "stats")
    assert (stats["rows_in"], stats["rows_out"], stats["duplicates"]) == (9, 8, {"by": "exact", "rows": 1})
    assert stats["images"]["distinct"] == 8 and stats["images"]["sizes"] == {"16x16": 8}
    assert stats["sources"] == {"data/shapes/qa.jsonl": {"rows_in": 9, "invalid": 0, "duplicates": 1,
                                                         "rows_out": 8}}
    # from an empty cache (every image decoded and encoded again), bit for bit the same artifact
    assert "verified: 1 target rebuilt bit for bit" in project.run("verify", "--rebuild").stdout


def test_caption_messages_preference_parquet_and_a_run_target(project):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for colour in ("red", "blue"):
        write_bytes(project, f"pics/{colour}.png", shape_png(colour))
    write_bytes(project, "pics/blue.jpg", shape_png("blue", fmt="JPEG"))
    project.write("data/captions.jsonl", jsonl([{"image": "../pics/red.png", "caption": "A red square."}]))
    project.write("data/chat.jsonl", jsonl([
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "image", "image": "../pics/red.png"},
                                                   {"type": "image", "image": "../pics/blue.png"},
                                                   {"type": "text", "text": "Which is red?"}]},
                      {"role": "assistant", "content": "The first."}]},
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "blue"}]}],
         "images": ["../pics/blue.jpg"]}]))
    project.write("data/pref.jsonl", jsonl([{"image": "../pics/red.png", "prompt": "Colour?", "chosen": "red",
                                             "rejected": "blue"}]))
    # HF datasets writes an Image feature as a struct {bytes, path}; plain binary columns work too
    pq.write_table(pa.table({"img": [{"bytes": shape_png("green"), "path": "g.png"}, {"bytes": None,
                                                                                       "path": "../pics/red.png"}],
                             "q": ["Colour?", "Colour?"], "answer": ["green", "red"],
                             "options": [["green", "red"], ["green", "red"]]}), f"{project.root}/data/qa.parquet")
    project.write("gen.py", """
        import json, os, sys
        from PIL import Image
        out = sys.argv[1]
        os.makedirs(f"{out}/pics")
        Image.new("L", (20, 10), 80).save(f"{out}/pics/grey.png")
        open(f"{out}/rows.jsonl", "w").write(json.dumps({"image": "pics/grey.png", "caption": "grey"}) + "\\n")
    """)
    project.forgefile("""
        [images.captions]
        source = "data/captions.jsonl"
        images = "pics/"
        format = "caption"
        prompt = "What is shown?"
        mode = "L"

        [images.chat]
        source = "data/chat.jsonl"
        images = "pics/"
        format = "messages"

        [images.pref]
        source = "data/pref.jsonl"
        images = ["pics/*.png"]
        format = "preference"

        [images.qa]
        source = "data/qa.parquet"
        images = "pics/red.png"
        format = "vqa"
        fields = { image = "img", question = "q", choices = "options" }
        max_side = 16

        [run.gen]
        cmd = "python3 {in.script} {out}"
        inputs = { script = "gen.py" }

        [images.generated]
        source = "run:gen"
        format = "caption"
    """)
    project.build()
    [caption] = records(project, "captions")
    assert caption["messages"] == [user(1, "What is shown?"), assistant("A red square.")]
    with Image.open(os.path.join(artifact(project, "captions"), caption["images"][0])) as image:
        assert image.mode == "L"
    first, second = records(project, "chat")
    assert first["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert first["messages"][1]["content"][:2] == [{"type": "image"}, {"type": "image"}]
    assert len(set(first["images"])) == 2 and first["answer"] == "The first."
    assert second["answer"] == "blue" and len(second["images"]) == 1
    [pair] = records(project, "pref")
    assert {k: pair[k] for k in ("prompt", "chosen", "rejected", "answer")} == {
        "prompt": [user(1, "Colour?")], "chosen": [assistant("red")], "rejected": [assistant("blue")],
        "answer": "red"}
    assert pair["images"] == first["images"][:1]  # red.png, normalised alike: one file, one name
    qa = records(project, "qa")
    assert [(r["answer"], r["choices"]) for r in qa] == [("green", ["green", "red"]), ("red", ["green", "red"])]
    assert meta(project, "qa", "stats")["images"]["sizes"] == {"16x16": 2}  # 32x32 scaled to max_side
    [grey] = records(project, "generated")
    assert grey["answer"] == "grey" and meta(project, "generated", "stats")["images"]["sizes"] == {"20x10": 1}


# ------------------------------------------------------------------ incremental

def test_a_changed_image_rebuilds_the_target_and_processes_that_image_only(project):
    shapes_folder(project)
    project.forgefile("""
        [images.shapes]
        source = "data/shapes/"
        format = "vqa"
        fields = { image = "file", question = "q" }
        splits = { train = 0.5, test = 0.5 }
    """)
    project.build()
    assert "images: 8 distinct images: 8 processed, 0 from the cache" in log(project, "shapes")
    before = {r["answer"] + r["images"][0]: split for split in ("train", "test")
              for r in records(project, "shapes", split)}
    assert project.build() == {"images:shapes": "cached"}  # nothing changed: a no-op
    write_bytes(project, "data/shapes/img/03.png", shape_png("yellow", 3))
    assert project.run("explain", "images:shapes").stdout.splitlines() == [
        "images:shapes: stale", "  - input data/shapes/img/03.png changed"]
    assert project.build() == {"images:shapes": "built"}
    assert "images: 8 distinct images: 1 processed, 7 from the cache" in log(project, "shapes")
    after = {r["answer"] + r["images"][0]: split for split in ("train", "test")
             for r in records(project, "shapes", split)}
    assert len(set(before.items()) & set(after.items())) == 7  # the others kept their split
    assert "images" in json.loads(project.run("schema").stdout)["properties"]


def test_a_pool_of_workers_gives_the_artifact_one_worker_gives(tmp_path):
    """150 pictures (three memo batches of 64), two of them broken and dropped, normalised by one process and
    by two: the same artifact, byte for byte; `workers` is a runtime setting, so changing it rebuilds nothing."""
    from conftest import Project
    from forgebuild.hashing import folder_digest

    digests = []
    for workers in (1, 2):
        project = Project(str(tmp_path / f"w{workers}"))
        rows = []
        for i in range(150):
            data = b"not picture %d" % i if i in (7, 99) else shape_png(list(COLOURS)[i % 4], 1 + i % 3, size=24 + i)
            write_bytes(project, f"data/img/{i:03d}.png", data)
            rows.append({"image": f"img/{i:03d}.png", "question": "What colour?", "answer": list(COLOURS)[i % 4]})
        project.write("data/qa.jsonl", jsonl(rows))
        project.forgefile(f"""
            [images.shapes]
            source = "data/"
            format = "vqa"
            invalid = "drop"
            max_side = 32
            splits = {{ train = 0.8, test = 0.2 }}
            workers = {workers}
        """)
        assert project.build() == {"images:shapes": "built"}
        assert "images: 150 distinct images: 150 processed, 0 from the cache" in log(project, "shapes")
        assert meta(project, "shapes", "stats")["rows_out"] == 148
        assert ("150 images to normalise in 3 batches, 2 processes" in log(project, "shapes")) == (workers == 2)
        digests.append(folder_digest(project.run("path", "images:shapes").stdout.strip()))
    project.forgefile(project.read("Forgefile.toml").replace("workers = 2", "workers = 1"))
    assert project.build() == {"images:shapes": "cached"}
    assert digests[0] == digests[1]


# ------------------------------------------------------------------ broken images

def test_a_broken_image_fails_with_file_line_field_and_exit_2(project):
    rows = shapes_folder(project, 4)
    write_bytes(project, "data/shapes/img/01.png", b"not a picture")
    write_bytes(project, "data/shapes/img/02.png", shape_png("blue")[:60])  # cut short
    forgefile = """
        [images.shapes]
        source = "data/shapes/"
        format = "vqa"
        fields = { image = "file", question = "q" }
    """
    project.forgefile(forgefile)
    proc = project.run(expect=2)
    assert ("FAILED  images:shapes: data/shapes/qa.jsonl:2: field 'file' (image): image 'img/01.png' is not an "
            "image (cannot identify image file) (and 1 more invalid row, listed in the log)\n") in proc.stdout
    assert ("invalid: data/shapes/qa.jsonl:3: field 'file' (image): image 'img/02.png' is not a readable image "
            "(Truncated File Read)") in log(project, "shapes")
    project.forgefile(forgefile + 'invalid = "drop"\n')
    project.build()
    assert [r["answer"] for r in records(project, "shapes")] == [rows[0]["answer"], rows[3]["answer"]]
    assert meta(project, "shapes", "stats")["invalid"]["by_reason"] == {
        "image: is not a readable image": 1, "image: is not an image": 1}


# ------------------------------------------------------------------ dedup and splits

def test_dedup_by_image_and_splits_keep_an_images_questions_together(project):
    rows = []
    for i in range(12):
        colour = list(COLOURS)[i % 4]
        write_bytes(project, f"data/img/{i:02d}.png", shape_png(colour, i // 4 + 1))
        rows += [{"image": f"img/{i:02d}.png", "question": "Colour?", "answer": colour},
                 {"image": f"img/{i:02d}.png", "question": "How many?", "answer": str(i // 4 + 1)}]
    write_bytes(project, "data/img/copy.png", shape_png("red", 1))  # the same pixels as 00.png under another name
    rows.append({"image": "img/copy.png", "question": "Colour?", "answer": "red"})
    project.write("data/qa.jsonl", jsonl(rows))
    project.forgefile("""
        [images.all]
        source = "data/qa.jsonl"
        images = "data/img/"
        format = "vqa"
        splits = { train = 0.5, test = 0.5 }

        [images.one]
        source = "data/qa.jsonl"
        images = "data/img/"
        format = "vqa"
        dedup = "image"
    """)
    project.build()
    train, test = records(project, "all"), records(project, "all", "test")
    assert len(train) + len(test) == 24  # the copy's row is an exact duplicate of 00.png's first
    assert not {r["images"][0] for r in train} & {r["images"][0] for r in test}  # no image in both splits
    assert train and test
    assert len(os.listdir(os.path.join(artifact(project, "all"), "images"))) == 12
    assert [r["messages"][0]["content"][1]["text"] for r in records(project, "one")] == ["Colour?"] * 12
    assert meta(project, "one", "stats")["duplicates"] == {"by": "image", "rows": 13}


@pytest.mark.parametrize("split_by", ["image", "record"])
def test_adding_rows_moves_no_record_to_another_split(project, split_by):
    rows = shapes_folder(project, 12)
    forgefile = f"""
        [images.s]
        source = "data/shapes/"
        format = "vqa"
        fields = {{ image = "file", question = "q" }}
        split_by = "{split_by}"
        splits = {{ train = 0.5, test = 0.5 }}
    """
    project.forgefile(forgefile)
    project.build()
    before = {json.dumps(r, sort_keys=True): s for s in ("train", "test") for r in records(project, "s", s)}
    write_bytes(project, "data/shapes/img/99.png", shape_png("green", 3))
    project.write("data/shapes/qa.jsonl", jsonl([{"file": "img/99.png", "q": "What colour?", "answer": "green"},
                                                *rows]))
    project.build()
    after = {json.dumps(r, sort_keys=True): s for s in ("train", "test") for r in records(project, "s", s)}
    assert len(after) == 13 and all(after[k] == s for k, s in before.items())
