"""JSON Schema of the Forgefile, from the same pydantic models that validate it (for editors and agents)."""
from __future__ import annotations

from pydantic import TypeAdapter

from forgebuild.planning.forgefile import ForgeSettings
from forgebuild.rules import load_rules


def forgefile_schema() -> dict:
    properties = {"forge": ForgeSettings.model_json_schema()}
    for kind, rule in sorted(load_rules().items()):
        params = TypeAdapter(rule.Params).json_schema()
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
