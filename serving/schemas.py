"""Request and response bodies of the recommendation API, with their limits.

Strict types on purpose: ``"3"``, ``3.5`` and ``true`` are not item ids, and a
client that sends them has a bug we should report rather than guess around.
Checks that need the model (is this id known?) live in ``serving.recommender``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

MAX_HISTORY = 10_000  # items per request; the model reads only its max_len most recent
MAX_K = 1_000
MAX_CANDIDATES = 2_048
MAX_BODY_BYTES = 1 << 20  # 1 MiB: a 10k-item history with timestamps fits with room to spare

ItemId = Annotated[StrictInt, Field(ge=0)]
History = Annotated[list[ItemId], Field(min_length=1, max_length=MAX_HISTORY)]
Timestamps = Annotated[list[StrictInt], Field(min_length=1, max_length=MAX_HISTORY)]


class _Request(BaseModel):
    # Unknown fields are errors: a misspelt "exclude_histroy" must not be silently ignored.
    model_config = ConfigDict(extra="forbid")

    history: History = Field(description="item ids, oldest first")
    timestamps: Timestamps | None = Field(
        default=None, description="unix seconds per history item (HSTU's time bias uses them)"
    )

    @model_validator(mode="after")
    def _timestamps_match_history(self):
        if self.timestamps is not None and len(self.timestamps) != len(self.history):
            raise ValueError(
                f"timestamps has {len(self.timestamps)} entries but history has "
                f"{len(self.history)}: give one per history item, or none"
            )
        return self


class RecommendRequest(_Request):
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 10
    exclude_history: StrictBool = True


class RecommendResponse(BaseModel):
    items: list[int]
    scores: list[float]
    model_version: str | None


class RankRequest(_Request):
    candidates: Annotated[list[ItemId], Field(min_length=1, max_length=MAX_CANDIDATES)]
    candidate_timestamp: StrictInt | None = Field(
        default=None, description="when the candidates would be shown; default: last timestamp"
    )


class RankResponse(BaseModel):
    scores: list[float] = Field(description="one per candidate, in request order")
    method: str = Field(description="'target_aware' (ranking head) or 'retrieval' (dot product)")
    model_version: str | None


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str | None = Field(
        default=None, description="models:/NAME@ALIAS, models:/NAME/VERSION or a run folder"
    )
