"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.

OpenAI's clients read ``error.message`` from this shape (``openai.BadRequestError`` etc.), so every
error the server returns, including FastAPI's validation errors and unknown routes, uses it.
"""
from __future__ import annotations

import json

INVALID_REQUEST = "invalid_request_error"


class APIError(Exception):
    """Raised by request handling; turned into an OpenAI-shaped JSON error response."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = INVALID_REQUEST):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type


def error_body(message: str, *, param: str | None = None, code: str | None = None,
               type: str = INVALID_REQUEST) -> bytes:
    """The JSON bytes of an OpenAI error object."""
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


def json_type(value) -> str:
    """JSON's name for a decoded value, with its article ("a number"), for messages about what was sent."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable message (and the offending parameter) from pydantic/FastAPI validation errors."""
    if not errors:
        return "Invalid request.", None
    err = errors[0]
    kind = err.get("type", "")
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if kind == "json_invalid":
        return ("We could not parse the JSON body of your request: "
                f"{err.get('ctx', {}).get('error', 'invalid JSON')}. Send a JSON object "
                "(Content-Type: application/json).", None)
    if kind == "missing":
        if param is None:
            return "The request body is empty; send a JSON object such as {\"input\": \"text\"}.", None
        return f"Missing required parameter: '{param}'.", param
    if kind in ("model_attributes_type", "dict_type") and param is None:
        if isinstance(err.get("input"), (bytes, bytearray)):
            # FastAPI parses JSON only when the Content-Type says so (curl -d sends form encoding).
            return "The request body must be JSON sent with the header Content-Type: application/json.", None
        return f"The request body must be a JSON object, got {json_type(err.get('input'))}.", None
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: '{param}'.", param
    msg = err.get("msg", "invalid value")
    got = json_type(err.get("input"))
    return f"Invalid value for '{param}': {msg[0].lower() + msg[1:] if msg else msg} (got {got}).", param
