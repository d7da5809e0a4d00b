"""An in-toto Statement with a SLSA-style provenance predicate for every artifact, and its check
when an artifact built elsewhere (a remote cache) is about to be reused.

The statement names the artifact (subject: the tree digest and each file's digest), what it
was made from (resolvedDependencies: every source file and dependency artifact with its
digest), how (externalParameters: rule, version, params, seed; the action key) and by what
(builder: forgebuild's version). It is stored as a blob beside the artifact; the cache entry
names it. Reusing a remote entry checks that its statement describes this very action: the
same key, the same materials as the local plan computes, and the entry's own digests. An
entry whose statement is missing or disagrees is not reused.

Digests are BLAKE3-256 (forgebuild's content digests), under in-toto's DigestSet name `blake3`.
"""
from __future__ import annotations

import json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/forgebuild/forgebuild/build/v1"
DIGEST = "blake3"


def statement(address: str, key: str, mat: dict, entry: dict, record: dict) -> dict:
    from forgebuild import __version__

    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": address, "digest": {DIGEST: entry["digest"]}},
                    *({"name": f"{address}/{f['path']}", "digest": {DIGEST: f["digest"]}} for f in entry["files"])],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"target": address, "rule": mat["rule"], "version": mat["version"],
                                       "params": mat["params"], "seed": mat["seed"]},
                "internalParameters": {"action_key": key, "environment": mat["env"]},
                "resolvedDependencies": materials(mat),
            },
            "runDetails": {
                "builder": {"id": f"forgebuild/{__version__}"},
                "metadata": {"invocationId": record.get("id"), "startedOn": record.get("started")},
            },
        },
    }


def materials(mat: dict) -> list[dict]:
    """Every input with its digest: files by project-relative path, targets by address."""
    found = []
    for key, entries in sorted(mat["inputs"].items()):
        for kind, name, digest in entries:
            found.append({"name": name, "digest": {DIGEST: digest}, "annotations": {"key": key, "kind": kind}})
    return found


def encode(stmt: dict) -> bytes:
    return json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode()


def problem(stmt, address: str, key: str, mat: dict, entry: dict) -> str | None:
    """Why a statement does not vouch for this entry as this action, or None when it does."""
    if not isinstance(stmt, dict) or stmt.get("_type") != STATEMENT_TYPE or stmt.get("predicateType") != PREDICATE_TYPE:
        return "its provenance is not an in-toto statement"
    definition = stmt.get("predicate", {}).get("buildDefinition", {})
    if definition.get("internalParameters", {}).get("action_key") != key:
        return "its provenance names another action key"
    if definition.get("resolvedDependencies") != materials(mat):
        return "its provenance lists other materials than this build's inputs"
    subjects = {s.get("name"): s.get("digest", {}).get(DIGEST) for s in stmt.get("subject", [])}
    expected = {address: entry["digest"], **{f"{address}/{f['path']}": f["digest"] for f in entry["files"]}}
    if subjects != expected:
        return "its provenance names other artifact digests"
    return None
