"""Safetensors files read and compared without loading them: one header reader, tensors in bounded chunks.

`read_header` parses a file's JSON header (names, dtypes, shapes, byte offsets, metadata); the
values are read from those offsets a chunk at a time as float64 (bfloat16 widened by hand), so
neither torch nor the safetensors package is needed and memory stays bounded whatever the model's
size. Two comparisons use them: `weight_diff` (`forgebuild diff`: norms per tensor and per layer)
and `compare_safetensors` (`verify --rebuild`: which tensors are not bitwise equal, and by how much).
"""
from __future__ import annotations

import json
import math
import re

TOP_TENSORS = 10             # most-changed tensors and layers kept (every tensor is listed)
CHUNK_ELEMENTS = 1 << 19     # tensor elements read at a time (4 MiB as float64 per side)
# header dtype -> numpy dtype of its raw bytes (BF16 read as uint16 and widened to float32)
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}
# header dtype -> the name torch gives it (what `verify --rebuild` reports)
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
               "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
               "U64": "uint64", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def read_header(path: str) -> tuple[dict, dict]:
    """(name -> {"dtype", "shape", "start", "end"} with absolute byte offsets, the header's metadata)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file")
        size = int.from_bytes(head, "little")
        if size > 100 << 20:
            raise ValueError(f"{path}: not a safetensors file (header of {size} bytes)")
        header = json.loads(f.read(size))
    base = 8 + size
    index = {name: {"dtype": info["dtype"], "shape": list(info["shape"]), "start": base + info["data_offsets"][0],
                    "end": base + info["data_offsets"][1]}
             for name, info in header.items() if name != "__metadata__"}
    return index, header.get("__metadata__") or {}


def _chunks(path: str, info: dict, elements: int = CHUNK_ELEMENTS):
    """The tensor as float64 arrays of at most `elements` values, read one at a time."""
    import numpy as np

    raw = np.dtype(DTYPES[info["dtype"]])
    for data in _raw_chunks(path, info, elements * raw.itemsize):
        values = np.frombuffer(data, dtype=raw)
        if info["dtype"] == "BF16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        yield values.astype(np.float64)


def _raw_chunks(path: str, info: dict, size: int = 8 << 20):
    """The tensor's bytes, `size` at a time."""
    with open(path, "rb") as f:
        f.seek(info["start"])
        left = info["end"] - info["start"]
        while left > 0:
            data = f.read(min(size, left))
            if not data:
                raise ValueError(f"{path}: truncated tensor data")
            left -= len(data)
            yield data


def _same_bytes(path_a: str, info_a: dict, path_b: str, info_b: dict) -> bool:
    return all(x == y for x, y in zip(_raw_chunks(path_a, info_a), _raw_chunks(path_b, info_b)))


def finite(x):
    """x, or None for an infinity or NaN (JSON has neither)."""
    return x if x is None or math.isfinite(x) else None


# ------------------------------------------------------------------ verify --rebuild: bitwise

def compare_safetensors(a: str, b: str) -> dict:
    """Per-tensor differences between two safetensors files.

    {"tensors": [one entry per tensor that is not bitwise equal], "equal": how many are,
    "metadata_changed": bool}. An entry: name, change ("values", "dtype", "shape", "added",
    "removed"), shape, rebuilt_shape, dtype, rebuilt_dtype and, when the shapes agree, numel,
    differing (values not equal; NaN equals NaN), max_abs_diff, l2_diff (the L2 norm of the
    difference), relative (l2_diff over the L2 norm of the first tensor) and nan_mismatch.
    """
    (index_a, meta_a), (index_b, meta_b) = read_header(a), read_header(b)
    tensors, equal = [], 0
    for name in sorted(index_a.keys() | index_b.keys()):
        ia, ib = index_a.get(name), index_b.get(name)
        if ib is None:
            tensors.append({"name": name, "change": "removed", "shape": ia["shape"], "dtype": _dtype_name(ia)})
            continue
        if ia is None:
            tensors.append({"name": name, "change": "added", "rebuilt_shape": ib["shape"],
                            "rebuilt_dtype": _dtype_name(ib)})
            continue
        entry = {"name": name, "shape": ia["shape"], "rebuilt_shape": ib["shape"], "dtype": _dtype_name(ia),
                 "rebuilt_dtype": _dtype_name(ib)}
        if entry["shape"] != entry["rebuilt_shape"]:
            tensors.append({**entry, "change": "shape"})
            continue
        if ia["dtype"] == ib["dtype"] and _same_bytes(a, ia, b, ib):
            equal += 1
            continue
        entry["change"] = "values" if ia["dtype"] == ib["dtype"] else "dtype"
        entry.update(_value_diff(a, ia, b, ib, name))
        tensors.append(entry)
    return {"tensors": tensors, "equal": equal, "metadata_changed": meta_a != meta_b}


def _dtype_name(info: dict) -> str:
    return DTYPE_NAMES.get(info["dtype"], info["dtype"].lower())


def _value_diff(path_a: str, ia: dict, path_b: str, ib: dict, name: str) -> dict:
    """Counts and norms of the difference of two same-shaped tensors, chunk by chunk."""
    import numpy as np

    for info in (ia, ib):
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{name}: its values in dtype {info['dtype']} are not compared")
    numel = differing = nan_mismatch = 0
    max_abs = l2 = base = 0.0
    for x, y in zip(_chunks(path_a, ia), _chunks(path_b, ib)):
        numel += x.size
        differing += int(np.count_nonzero(~((x == y) | (np.isnan(x) & np.isnan(y)))))
        nan_mismatch += int(np.count_nonzero(np.isnan(x) ^ np.isnan(y)))
        both = np.isfinite(x) & np.isfinite(y)
        diff = (y - x)[both]
        max_abs = max(max_abs, float(np.max(np.abs(diff)))) if diff.size else max_abs
        l2 += float(np.sum(diff * diff))
        base += float(np.sum(x[both] ** 2))
    l2, base = math.sqrt(l2), math.sqrt(base)
    found = {"numel": numel, "differing": differing, "max_abs_diff": finite(max_abs), "l2_diff": finite(l2),
             "relative": finite(l2 / base) if base > 0 else None}
    if nan_mismatch:
        found["nan_mismatch"] = nan_mismatch
    return found


# ------------------------------------------------------------------ forgebuild diff: norms

def tensor_norms(path_a: str, info_a: dict, path_b: str, info_b: dict, elements: int = CHUNK_ELEMENTS) -> dict:
    """Sums of squares of a, b and a - b over two same-shaped tensors, chunk by chunk.

    Both sides are read `elements` values at a time (whatever their dtypes), so chunks pair up.
    """
    import numpy as np

    sa = sb = sd = 0.0
    for a, b in zip(_chunks(path_a, info_a, elements), _chunks(path_b, info_b, elements)):
        if len(a) != len(b):
            raise ValueError("tensor data of different lengths")
        sa += float(np.dot(a, a))
        sb += float(np.dot(b, b))
        np.subtract(a, b, out=a)
        sd += float(np.dot(a, a))
    return {"old": sa, "new": sb, "diff": sd}


def _layer(name: str) -> str:
    m = re.match(r"^(.*?(?:^|\.)(?:layers|layer|h|blocks|block)\.\d+)\.", name)
    if m:
        return m.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name


def weight_diff(old_paths: list[str], new_paths: list[str], top: int = TOP_TENSORS,
                elements: int = CHUNK_ELEMENTS) -> dict:
    """Tensor by tensor, over every tensor of the safetensors files of each side (shards merged by name).

    Memory stays bounded by a few chunks of `elements` values, whatever the tensor sizes.
    Each tensor: {"name", "layer", "change" (changed, same, reshaped, added, removed, unsupported),
    "shape_old", "shape_new", "dtype_old", "dtype_new", "old_l2", "new_l2", "diff_l2", "relative"}
    with relative = ||old - new|| / ||old|| (None when ||old|| is 0 and something changed).
    """
    index_a = {name: (p, info) for p in old_paths for name, info in read_header(p)[0].items()}
    index_b = {name: (p, info) for p in new_paths for name, info in read_header(p)[0].items()}
    tensors, layers = [], {}
    for name in sorted(index_a.keys() | index_b.keys()):
        (pa, ia), (pb, ib) = index_a.get(name, (None, None)), index_b.get(name, (None, None))
        t = {"name": name, "layer": _layer(name), "shape_old": ia and ia["shape"], "shape_new": ib and ib["shape"],
             "dtype_old": ia and ia["dtype"], "dtype_new": ib and ib["dtype"],
             "old_l2": None, "new_l2": None, "diff_l2": None, "relative": None}
        tensors.append(t)
        if ia is None or ib is None:
            t["change"] = "added" if ia is None else "removed"
            continue
        if ia["shape"] != ib["shape"]:
            t["change"] = "reshaped"
            continue
        if ia["dtype"] not in DTYPES or ib["dtype"] not in DTYPES:
            same = ia["dtype"] == ib["dtype"] and _same_bytes(pa, ia, pb, ib)
            t["change"] = "same" if same else "unsupported"
            continue
        sums = tensor_norms(pa, ia, pb, ib, elements)
        t["old_l2"], t["new_l2"], t["diff_l2"] = (math.sqrt(sums[k]) for k in ("old", "new", "diff"))
        t["relative"] = t["diff_l2"] / t["old_l2"] if t["old_l2"] > 0 else (0.0 if t["diff_l2"] == 0 else None)
        t["change"] = "same" if t["diff_l2"] == 0 else "changed"
        layer = layers.setdefault(t["layer"], {"layer": t["layer"], "tensors": 0, "changed": 0, "old": 0.0, "diff": 0.0})
        layer["tensors"] += 1
        layer["changed"] += t["change"] == "changed"
        layer["old"] += sums["old"]
        layer["diff"] += sums["diff"]
    counts = {c: sum(t["change"] == c for t in tensors)
              for c in ("changed", "same", "reshaped", "added", "removed", "unsupported")}
    total_old = sum(layer["old"] for layer in layers.values())
    total_diff = sum(layer["diff"] for layer in layers.values())
    layer_rows = []
    for layer in layers.values():
        old, diff = math.sqrt(layer["old"]), math.sqrt(layer["diff"])
        layer_rows.append({"layer": layer["layer"], "tensors": layer["tensors"], "changed": layer["changed"],
                           "old_l2": old, "diff_l2": diff,
                           "relative": diff / old if old > 0 else (0.0 if diff == 0 else None)})
    order = lambda row: (-(row["relative"] if row["relative"] is not None else math.inf), -(row["diff_l2"] or 0.0))
    layer_rows.sort(key=lambda r: (order(r), r["layer"]))
    ranked = sorted((t for t in tensors if t["change"] == "changed"), key=lambda t: (order(t), t["name"]))
    return {"counts": counts, "tensors": tensors, "top": [t["name"] for t in ranked[:top]],
            "layers": layer_rows[:top], "total": {
                "old_l2": math.sqrt(total_old), "diff_l2": math.sqrt(total_diff),
                "relative": math.sqrt(total_diff) / math.sqrt(total_old) if total_old > 0 else None}}
