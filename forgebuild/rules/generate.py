"""generate: samples from a model target (issue 15; being written)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

version = "0"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="the model target that generates")


def inputs(params: Params) -> dict:
    return {"model": params.model}


def build(ctx) -> None:
    raise ctx.failure("generate is not built yet")
