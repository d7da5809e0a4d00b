"""curate: verify, filter and shape generated samples into training data (issue 15; being written)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

version = "0"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: str = Field(description="a generate target, or a JSONL file of samples")


def inputs(params: Params) -> dict:
    return {"samples": params.samples}


def build(ctx) -> None:
    raise ctx.failure("curate is not built yet")
