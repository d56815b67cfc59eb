"""The HTTP contract of the endpoint: request and response models (pydantic, strict)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.serve.config import MAX_K


class SearchRequest(BaseModel):
    """``{"query": "..."}`` or ``{"queries": [...]}``; unknown fields are rejected (422).

    Strict: no coercion (``"exact": "yes"``, ``"k": 10.5`` or ``"k": true`` are 422), and
    numbers must be finite (NaN, and literals like ``1e400`` that overflow to infinity, are 422).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    query: str | None = Field(None, description="One query text.")
    queries: list[str] | None = Field(None, description="Several query texts, answered in order.")
    k: int = Field(10, ge=1, le=MAX_K, description="Results per query.")
    exact: bool = Field(False, description="Exact dot-product search instead of the blocked index.")
    query_cut: int | None = Field(None, ge=1, le=4096,
                                  description="Blocked index: query terms visited.")
    heap_factor: float | None = Field(None, gt=0, le=100.0, allow_inf_nan=False,
                                      description="Blocked index: block skipping factor.")
    filter: dict[str, Any] | None = Field(
        None, description='Only documents whose fields match: term, terms, range, exists, and, '
                          'or, not (README "Filters, stored fields, explain"), e.g. '
                          '{"range": {"year": {"gte": 2020}}}. Invalid: 422; too large: 413.')
    fields: list[str] | None = Field(
        None, description="Fields to return with each hit (kept at index time with --field).")
    explain: bool = Field(False, description="Return each hit's term contributions.")
    explain_terms: int | None = Field(
        None, ge=1, description="Most contributions per explained hit, largest first "
                                "(default and upper bound: the server's max_explain_terms).")
    allow_partial: bool | None = Field(
        None, description="Answer from the shards that responded when some did not "
                          "(default: the server's on_shard_failure policy).")

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("query is empty")
        return value

    @field_validator("queries")
    @classmethod
    def _queries_not_blank(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("queries is empty")
            blank = [i for i, q in enumerate(value) if not q.strip()]
            if blank:
                raise ValueError(f"queries {blank[:5]} are empty")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> "SearchRequest":
        if (self.query is None) == (self.queries is None):
            raise ValueError("give exactly one of 'query' and 'queries'")
        return self

    def texts(self) -> list[str]:
        return [self.query] if self.query is not None else list(self.queries)


class TermContribution(BaseModel):
    token: str
    term_id: int
    query_weight: float
    doc_weight: float
    contribution: float = Field(description="query_weight * doc_weight; a hit's contributions "
                                            "sum to its score (unless capped by explain_terms).")


class QueryHits(BaseModel):
    doc_ids: list[str]
    scores: list[float]
    fields: list[dict[str, Any]] | None = Field(
        None, description="With 'fields': per hit, the requested fields (null when absent).")
    explain: list[list[TermContribution]] | None = Field(
        None, description="With 'explain': per hit, its term contributions, largest first.")


class Timing(BaseModel):
    encode_ms: float
    search_ms: float
    total_ms: float


class SearchResponse(BaseModel):
    generation: int = Field(description="The index generation that answered (one per response).")
    k: int
    exact: bool
    results: list[QueryHits] = Field(description="One entry per query, in request order.")
    shards: list[str] = Field(description="Shards that answered.")
    partial: bool = Field(description="True when some shards did not answer in time.")
    missing_shards: list[str]
    timing: Timing


class ReloadResponse(BaseModel):
    generation: int
    previous: int
    switched: bool
    route_version: int
