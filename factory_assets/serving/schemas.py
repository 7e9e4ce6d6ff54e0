"""The JSON wire format: request/response models (they make the OpenAPI schema) and how answers are rendered.

Every error answer is ``{"error": <short code>, "detail": <message>}`` (:func:`error_response`).
"""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from factory_assets.serving.config import MAX_BATCH, MAX_K, MAX_USER_ID
from factory_assets.serving.scorer import Recommendation


class BatchRequest(BaseModel):
    user_ids: list[str] = Field(min_length=1, max_length=MAX_BATCH)
    k: int = Field(10, ge=1, le=MAX_K)
    exclude_purchased: bool | None = None


class RollbackRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)
    to_version: int | None = Field(None, ge=1)


class Item(BaseModel):
    item_id: str
    score: float


class RecommendationOut(BaseModel):
    user_id: str
    items: list[Item]
    model_version: int
    fallback: bool


class BatchOut(BaseModel):
    results: list[RecommendationOut]
    model_version: int


def error_response(status: int, code: str, detail) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def valid_user_id(user_id: str) -> bool:
    return 1 <= len(user_id) <= MAX_USER_ID and user_id.isprintable()


def recommendation_json(rec: Recommendation, version: int) -> dict:
    return {
        "user_id": rec.user_id,
        "items": [{"item_id": i, "score": s} for i, s in zip(rec.item_ids, rec.scores)],
        "model_version": version,
        "fallback": rec.fallback,
    }


def json_bytes(content) -> bytes:
    """JSON bytes exactly as Starlette's ``JSONResponse`` renders them (UTF-8, compact, no NaN)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")
