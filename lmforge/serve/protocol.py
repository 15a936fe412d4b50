"""The OpenAI request bodies (pydantic models, so FastAPI checks every field) and OpenAI's error JSON.

Field names, defaults and ranges follow OpenAI's API reference; lmforge adds the sampling options vLLM adds
(`top_k`, `min_p`, `repetition_penalty`, `ignore_eos`). Unknown fields are ignored, as OpenAI's clients send
some this server has no use for (`user`).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """Options both generation endpoints take."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # -1 or 0: off (vLLM)
    min_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(None, ge=0, le=2 ** 63 - 1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    ignore_eos: bool = False
    logit_bias: dict[str, float] | None = None


class CompletionRequest(Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, list[ContentPart], None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: Union[str, list[str]]


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """FastAPI's validation errors as one OpenAI error (the first problem, with the field as `param`)."""
    if not errors:
        return ApiError(400, "the request body is not valid")
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    if e.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({e.get('msg', '')}); send a JSON object")
    if e.get("type") == "missing" and not loc:
        return ApiError(400, "the request needs a JSON body")
    field = loc[0] if loc else None
    same = [x for x in errors if [str(y) for y in x.get("loc", ()) if y != "body"][:1] == loc[:1]]
    if len(same) > 1 and len(loc) > 1 and not loc[1].isdigit():  # a union: every allowed type failed
        return ApiError(400, f"'{field}' has the wrong type: {e.get('msg', 'invalid value')} (nor any other allowed "
                        "type)", param=field)
    where = f"'{'.'.join(loc)}'" if loc else "the body"
    extra = f" ({len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return ApiError(400, f"{where}: {e.get('msg', 'invalid value')}{extra}", param=field)


__all__ = ["ApiError", "CompletionRequest", "ChatRequest", "EmbeddingRequest", "ClassifyRequest", "Message",
           "validation_error", "MAX_TOP_LOGPROBS"]
