"""The images rule in process: one image's normalisation (deterministic PNG bytes, modes, sizes, limits),
the Forgefile's error texts, and generated broken rows and images, each named by file, line and field."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from forgebuild.rules.picture import BadImage, Normalisation, normalised_png
from unitlab import Lab, lab  # noqa: F401  (a fixture)

PLAIN = Normalisation("RGB", None, None, "bicubic", 10_000, 4096, 1)


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def picture(colour=(200, 40, 40), size=(24, 12)) -> Image.Image:
    image = Image.new("RGB", size, (255, 255, 255))
    image.paste(colour, (2, 2, 10, 10))
    return image


# ------------------------------------------------------------------ one image

def test_the_same_pixels_give_the_same_bytes_whatever_the_file_held():
    text = PngImagePlugin.PngInfo()
    text.add_text("Software", "a camera")
    forms = [encoded(picture()), encoded(picture(), compress_level=1, pnginfo=text), encoded(picture(), "BMP"),
             encoded(picture().convert("RGBA"), "PNG", icc_profile=b"")]
    pngs = {normalised_png(data, PLAIN) for data in forms}
    assert len(pngs) == 1
    assert decoded(pngs.pop()).tobytes() == picture().tobytes()


def test_modes_composite_transparency_on_white():
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent black: dropping alpha would make it black
    as_rgb = decoded(normalised_png(encoded(clear), PLAIN))
    assert (as_rgb.mode, as_rgb.getpixel((0, 0))) == ("RGB", (255, 255, 255))
    as_grey = decoded(normalised_png(encoded(clear), Normalisation("L", None, None, "bicubic", 10_000, 4096, 1)))
    assert (as_grey.mode, as_grey.getpixel((0, 0))) == ("L", 255)
    kept = decoded(normalised_png(encoded(clear), Normalisation("RGBA", None, None, "bicubic", 10_000, 4096, 1)))
    assert kept.getpixel((0, 0)) == (0, 0, 0, 0)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": a phone's portrait photo, stored on its side
    assert decoded(normalised_png(encoded(picture(size=(24, 12)), exif=exif), PLAIN)).size == (12, 24)


def test_resize_to_a_size_or_down_to_a_longest_side():
    exact = Normalisation("RGB", (10, 10), None, "nearest", 10_000, 4096, 1)
    assert decoded(normalised_png(encoded(picture()), exact)).size == (10, 10)
    longest = Normalisation("RGB", None, 12, "bicubic", 10_000, 4096, 1)
    assert decoded(normalised_png(encoded(picture(size=(24, 12))), longest)).size == (12, 6)
    assert decoded(normalised_png(encoded(picture(size=(8, 4))), longest)).size == (8, 4)  # never scaled up


@pytest.mark.parametrize("data, how, message", [
    (b"hello", PLAIN, "is not an image (cannot identify image file)"),
    (encoded(picture())[:50], PLAIN, "is not a readable image (Truncated File Read)"),
    (encoded(picture()), Normalisation("RGB", None, None, "bicubic", 40, 4096, 1),
     f"is larger than image.max_bytes = 40 ({len(encoded(picture()))} bytes)"),
    (encoded(picture()), Normalisation("RGB", None, None, "bicubic", 10_000, 200, 1),
     "has more pixels than image.max_pixels = 200 (24x12 = 288)"),
    (encoded(picture()), Normalisation("RGB", None, None, "bicubic", 10_000, 4096, 16),
     "has a side shorter than image.min_side = 16 (24x12 pixels)"),
    # an eXIf chunk that is no TIFF: exif_transpose raised SyntaxError past every check (found by byte flips)
    (encoded(picture(), exif=b"Exif\x00\x00MX\x00*\x00\x00\x00\x08"), PLAIN,
     "has unreadable EXIF data (not a TIFF file (header b'MX\\x00*\\x00\\x00\\x00\\x08' not valid))"),
])
def test_each_limit_and_each_broken_file_says_what_is_wrong(data, how, message):
    with pytest.raises(BadImage) as e:
        normalised_png(data, how)
    assert str(e.value) == message


FORMATS = {fmt: encoded(picture(), fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


@settings(max_examples=300, deadline=None)
@given(fmt=st.sampled_from(sorted(FORMATS)), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                            min_size=1, max_size=6), cut=st.integers(0, 10**6))
def test_damaged_files_of_every_format_are_refused_or_read_never_raise(fmt, flips, cut):
    data = bytearray(FORMATS[fmt])
    for at, value in flips:
        data[at % len(data)] = value
    data = bytes(data[:max(1, cut % (len(data) + 1))])
    try:
        png = normalised_png(data, PLAIN)
    except BadImage as e:
        assert str(e).startswith(("is not an image", "is not a readable image", "has unreadable EXIF data",
                                  "has more pixels", "has a side shorter", "is larger than")), str(e)
    else:
        assert decoded(png).mode == "RGB"


# ------------------------------------------------------------------ the Forgefile

def test_bad_keys_are_forgefile_errors_with_line_target_and_key(lab):
    lab.write("data/qa.jsonl", "")
    lab.write("Forgefile.toml", """\
        [images.a]
        source = "data/qa.jsonl"
        format = "vqa"
        fields = { image = "file", questoin = "q" }
        resize = { width = 16, height = 16 }
        max_side = 8
        prompt = "Say it."
        keep = ["file"]

        [images.b]
        source = "dataset:d"
        images = "run:r"
        format = "caption"

        [images.c]
        source = "data/qa.jsonl"
        format = "caption"
        resize = { width = 16, hight = 70000 }

        [dataset.d]
        source = "data/qa.jsonl"

        [run.r]
        cmd = "true"
    """)
    code, out = lab.build("images:a", "images:b", "images:c")
    assert code == 2
    assert out.splitlines() == [
        "Forgefile.toml:4: error: images:a: key 'fields.questoin': unknown record field 'questoin' (did you mean "
        "'question'?); fields of format vqa: image, question, answer, choices",
        "Forgefile.toml:6: error: images:a: key 'max_side': give resize or max_side, not both",
        "Forgefile.toml:7: error: images:a: key 'prompt': is the user's text of a caption record; format vqa reads "
        "its text from the rows",
        "Forgefile.toml:8: error: images:a: key 'keep[0]': 'file' is the column of record field image, not an "
        "extra one",
        "Forgefile.toml:11: error: images:b: key 'source': dataset:d holds records, not rows with image columns: "
        "read files or a run target's output",
        "Forgefile.toml:12: error: images:b: key 'images': names image files, folders or globs, not a target (a "
        "source target's own images need no key)",
        "Forgefile.toml:18: error: images:c: key 'resize.height': missing required key",
        "Forgefile.toml:18: error: images:c: key 'resize.hight': unknown key",
    ]


# ------------------------------------------------------------------ generated broken rows

GOOD = encoded(picture())


def _truncated(cut):
    return {"value": "img/bad.png", "files": {"data/img/bad.png": GOOD[:cut]},
            "says": re.compile(r"image 'img/bad\.png' is not (an image \(cannot identify image file\)|a readable "
                               r"image \(.+\))")}


BROKEN = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyz ", min_size=0, max_size=40).map(lambda junk: {
        "value": "img/bad.png", "files": {"data/img/bad.png": junk.encode()},
        "says": "image 'img/bad.png' is not an image (cannot identify image file)"}),
    # A PNG ends in IEND's 4-byte CRC; a file cut inside that CRC (the last 1-4 bytes) still holds every
    # pixel, and PIL decodes it whole, as browsers do: only cuts before it lose the image.
    st.integers(0, len(GOOD) - 5).map(_truncated),
    st.just({"value": "img/none.png", "files": {},
             "says": "image 'img/none.png' is not found (no file data/img/none.png)"}),
    st.integers(2, 5).map(lambda up: {"value": "../" * up + "x.png", "files": {},
                                      "says": f"image '{'../' * up}x.png' is outside the project"}),
    st.just({"value": "/etc/hosts", "files": {},
             "says": "image '/etc/hosts' is an absolute path: write it relative to data/qa.jsonl"}),
    st.just({"value": "../other/x.png", "files": {"other/x.png": GOOD},
             "says": "image '../other/x.png' is not an input of this target (other/x.png): name its folder in "
                     "images, e.g. images = \"other/\""}),
    st.sampled_from([(3, "a number"), (None, "null"), (True, "a boolean"), ({"url": "x"}, "an object")])
    .map(lambda case: {"value": case[0], "files": {}, "says": f"expected an image path or bytes, got {case[1]}"}),
    st.sampled_from([("", "is an empty string"), ([], "is an empty list")])
    .map(lambda case: {"value": case[0], "files": {}, "says": case[1]}),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(broken=BROKEN, line=st.integers(1, 4), column=st.sampled_from(["image", "file", "picture"]))
def test_generated_broken_rows_fail_with_file_line_and_field(tmp_path_factory, broken, line, column):
    lab = Lab(str(tmp_path_factory.mktemp("broken")))
    rows = [{column: "img/good.png", "question": "Colour?", "answer": "red"} for _ in range(3)]
    rows.insert(line - 1, {column: broken["value"], "question": "Colour?", "answer": "red"})
    lab.write("data/qa.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    for rel, data in {"data/img/good.png": GOOD, **broken["files"]}.items():
        os.makedirs(os.path.dirname(os.path.join(lab.root, rel)), exist_ok=True)
        with open(os.path.join(lab.root, rel), "wb") as f:
            f.write(data)
    fields = f'fields = {{ image = "{column}" }}\n' if column != "image" else ""
    lab.write("Forgefile.toml", f'[images.q]\nsource = "data/qa.jsonl"\nimages = "data/img/"\nformat = "vqa"\n{fields}')
    with contextlib.chdir(lab.root):
        code, out = lab.build()
    assert code == 2, out
    field = f"field '{column}'" + (" (image)" if column != "image" else "")
    [failed] = [line for line in out.splitlines() if line.startswith("FAILED  images:q: ")]
    where, says = f"FAILED  images:q: data/qa.jsonl:{line}: {field}: ", failed.split(f"{field}: ", 1)[-1]
    assert failed.startswith(where), out
    assert says == broken["says"] if isinstance(broken["says"], str) else broken["says"].fullmatch(says), out
    assert "Traceback" not in out


# ------------------------------------------------------------------ row errors of each format

def rows(*items) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


IMAGE_PART = {"type": "image"}
ASK = {"type": "text", "text": "Colour?"}
ROW_ERRORS = [  # (params, the row, the message after "FAILED  images:eN: ")
    ('format = "messages"', rows({"messages": [{"role": "user", "content": [IMAGE_PART, IMAGE_PART, ASK]},
                                               {"role": "assistant", "content": "red"}], "images": ["good.png"]}),
     "data/x.jsonl:1: field 'images': 1 image given for 2 image parts"),
    ('format = "messages"', rows({"messages": [{"role": "user", "content": [{"type": "image", "image": "good.png"},
                                                                            ASK]},
                                               {"role": "assistant", "content": "red"}], "images": ["good.png"]}),
     "data/x.jsonl:1: field 'images': images are given both here and in the image parts: give them in one place"),
    ('format = "messages"', rows({"messages": [{"role": "user", "content": [{"type": "image", "image": "good.png"},
                                                                            IMAGE_PART, ASK]},
                                               {"role": "assistant", "content": "red"}]}),
     "data/x.jsonl:1: field 'messages': 1 of 2 image parts name their image: name it in every part, or list them "
     "all in the images column"),
    ('format = "messages"', rows({"messages": [{"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": "red"}]}),
     "data/x.jsonl:1: field 'messages': has no image part ({\"type\": \"image\"})"),
    ('format = "messages"', rows({"messages": [{"role": "user", "content": [IMAGE_PART, ASK]}],
                                  "images": ["good.png"]}),
     "data/x.jsonl:1: field 'messages': has no assistant message"),
    ('format = "messages"', rows({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
     "data/x.jsonl:1: field 'messages[0].content[0].type': expected \"text\" or \"image\", got \"audio\""),
    ('format = "vqa"\nfields = { choices = "options" }',
     rows({"image": "good.png", "question": "Colour?", "answer": "red", "options": ["blue", "green"]}),
     "data/x.jsonl:1: field 'answer': \"red\" is not one of the choices"),
    ('format = "vqa"', rows({"image": "good.png", "question": "Colour?", "answer": "red", "choices": ["red"]}),
     "data/x.jsonl:1: field 'choices': expected a list of two or more choices, got a list of 1"),
    ('format = "preference"', rows({"image": ["good.png"], "prompt": "Colour?", "chosen": "red", "rejected": "red "}),
     "data/x.jsonl:1: field 'rejected': is the same as chosen"),
    ('format = "caption"', rows({"image": [], "caption": "x"}), "data/x.jsonl:1: field 'image': is an empty list"),
    ('format = "caption"', rows({"picture": "good.png", "caption": "x"}),
     "data/x.jsonl:1: no field 'image' (fields present: caption, picture)"),
]


def test_each_format_names_the_bad_row_and_field(lab):
    from PIL import Image as PilImage

    body = ""
    for i, (params, data, _) in enumerate(ROW_ERRORS):
        lab.write(f"e{i}/x.jsonl", data)
        PilImage.new("RGB", (8, 8)).save(os.path.join(lab.root, f"e{i}/good.png"))
        body += f'[images.e{i}]\nsource = "e{i}/"\n{params}\n\n'
    lab.write("Forgefile.toml", body)
    code, out = lab.build("-k")
    assert code == 2
    for i, (_, _, message) in enumerate(ROW_ERRORS):
        assert f"FAILED  images:e{i}: {message.replace('data/', f'e{i}/')}\n" in out, out


def test_parquet_bytes_and_a_run_targets_paths_are_named_too(lab):
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(lab.root, "data"))
    pq.write_table(pa.table({"image": [GOOD, b"GIF89a broken"], "caption": ["a", "b"]}),
                   os.path.join(lab.root, "data/x.parquet"))
    pq.write_table(pa.table({"image": [GOOD], "caption": ["a"], "raw": [b"\x00"]}), os.path.join(lab.root, "k.parquet"))
    lab.write("gen.py", """\
        import json, sys
        open(sys.argv[1] + "/rows.jsonl", "w").write(json.dumps({"image": "../x.png", "caption": "c"}) + "\\n")
    """)
    lab.write("Forgefile.toml", """\
        [images.p]
        source = "data/x.parquet"
        format = "caption"

        [run.gen]
        cmd = "python3 {in.script} {out}"
        inputs = { script = "gen.py" }

        [images.r]
        source = "run:gen"
        format = "caption"

        [images.k]
        source = "k.parquet"
        format = "caption"
        keep = ["raw"]
    """)
    code, out = lab.build("-k")
    assert code == 2
    assert ("FAILED  images:p: data/x.parquet:2: field 'image': image of 13 bytes is not an image (cannot identify "
            "image file)\n" in out), out
    assert ("FAILED  images:r: run:gen/rows.jsonl:1: field 'image': image '../x.png' is outside run:gen's "
            "output\n" in out)
    assert "FAILED  images:k: k.parquet:1: field 'raw': holds bytes, which a JSON record cannot keep\n" in out
