"""Payload codecs: bytes, text, JSON values and pydantic models.

The content type travels with the message, so a consumer decodes exactly what
the producer encoded; models go over the wire as JSON, so any consumer (or
another language) can read them.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from mqkit.errors import PayloadError

__all__ = ["decode", "encode", "validate"]

BYTES = "bytes"
TEXT = "text"
JSON = "json"


def encode(value: Any) -> tuple[bytes, str]:
    """Turn a payload into (bytes, content type); say what to do if it cannot be."""
    if isinstance(value, bytes):
        return value, BYTES
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value), BYTES
    if isinstance(value, str):
        return value.encode("utf-8"), TEXT
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode("utf-8"), JSON
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8"), JSON
    except (TypeError, ValueError) as exc:
        raise PayloadError(
            f"cannot encode a {type(value).__name__} payload ({exc}); send bytes, str, a "
            "JSON-compatible value (dict, list, number, bool, None) or a pydantic model"
        ) from exc


def decode(value: bytes, content_type: str) -> Any:
    """Decode by content type; unknown types stay bytes rather than guessing."""
    if content_type == TEXT:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError(f"text payload is not valid UTF-8: {exc}") from exc
    if content_type == JSON:
        try:
            return json.loads(value)
        except ValueError as exc:
            raise PayloadError(f"JSON payload does not parse: {exc}") from exc
    return value


def validate(model: type[BaseModel], value: bytes, content_type: str) -> BaseModel:
    """Validate a message into ``model``; PayloadError (reason ``invalid``) if it does not fit."""
    try:
        if content_type in (JSON, TEXT, BYTES):
            return model.model_validate_json(value)
        return model.model_validate(decode(value, content_type))
    except ValidationError as exc:
        raise PayloadError(
            f"payload does not validate as {model.__name__}: {exc.error_count()} error(s): "
            f"{exc.errors()[0]['loc']} {exc.errors()[0]['msg']}"
        ) from exc
