"""JSON Schema of the Forgefile, from the same pydantic models that validate it (for editors and agents)."""
from __future__ import annotations

from pydantic import TypeAdapter

from forgebuild.planning.forgefile import ForgeSettings, Resources
from forgebuild.rules import load_rules


# keys every kind's table takes beside its rule's params (planning/forgefile.py, planning/matrix.py)
COMMON_KEYS = {
    "resources": Resources.model_json_schema(),
    "matrix": {"type": "object", "description": "a grid of cells: dotted param path -> the values to sweep",
               "additionalProperties": {"type": "array", "minItems": 1,
                                        "items": {"type": ["string", "number", "boolean"]}}},
    "matrix_with": {"type": "string", "description": "one cell of this target per cell of that matrix target"},
}


def forgefile_schema() -> dict:
    properties = {"forge": ForgeSettings.model_json_schema()}
    for kind, rule in sorted(load_rules().items()):
        params = _with_common_keys(TypeAdapter(rule.Params).json_schema())
        properties[kind] = {
            "type": "object",
            "description": (rule.__doc__ or "").strip().split("\n")[0],
            "additionalProperties": params,
            "propertyNames": {"pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*$"},
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Forgefile",
        "description": "forgebuild Forgefile: [forge] settings and one [KIND.NAME] table per target",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }


def _with_common_keys(schema: dict) -> dict:
    """The rule's schema with COMMON_KEYS in each table it describes (each recipe's, for a union)."""
    tables = [schema] if "properties" in schema else [
        schema["$defs"][alt["$ref"].rsplit("/", 1)[-1]] for alt in schema.get("oneOf", schema.get("anyOf", []))
        if "$ref" in alt]
    for table in tables:
        table["properties"] = {**table["properties"], **COMMON_KEYS}
    return schema
