"""OpenAI request bodies in, response objects out, for /v1/completions and /v1/chat/completions.

Parsing checks every field it uses and raises `BadRequest` (an OpenAI error body, status 400)
naming the field. Fields that change what is generated but are not implemented (n > 1, echo,
logprobs, penalties, ...) are refused rather than ignored; fields that do not (user,
metadata, ...) are ignored. `ignore_eos` and `min_tokens` are vLLM's extensions.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from real.sampler import SamplingParams
from real.tokenizer import Tokenizer

DEFAULT_COMPLETION_TOKENS = 16   # OpenAI's default max_tokens for /v1/completions
MAX_STOPS = 4


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.status)


def error_body(message: str, kind: str, param: str | None, status: int) -> dict:
    code = {404: "model_not_found"}.get(status)
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Parsed:
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool


# Fields whose non-default values we cannot honour.
_UNSUPPORTED = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "top_logprobs": None,
                "suffix": None, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None,
                "tools": None, "response_format": None, "stop_token_ids": None}


def _number(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"'{key}' must be a number, got {value!r}", key)
    if value < lo or value > hi or (lo_open and value == lo):
        raise BadRequest(f"'{key}' must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value!r}", key)
    return float(value)


def _integer(body: dict, key: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{key}' must be an integer, got {value!r}", key)
    if value < lo:
        raise BadRequest(f"'{key}' must be at least {lo}, got {value}", key)
    if hi is not None and value > hi:
        raise BadRequest(f"'{key}' must be at most {hi}, got {value}", key)
    return value


def _flag(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be true or false, got {value!r}", key)
    return value


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest("'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOPS:
        raise BadRequest(f"'stop' takes at most {MAX_STOPS} strings, got {len(stops)}", "stop")
    return tuple(stops)


def check_model(body: dict, served_name: str) -> None:
    model = body.get("model")
    if model is not None and model != served_name:
        raise BadRequest(f"the model '{model}' does not exist; this server serves '{served_name}'",
                         "model", status=404, kind="not_found_error")


def _common(body: dict, default_max_tokens: int, max_key: str = "max_tokens") -> tuple[SamplingParams, bool, bool]:
    for key, default in _UNSUPPORTED.items():
        value = body.get(key)
        if value is not None and value != default and not (default is None and value is False):
            raise BadRequest(f"'{key}' is not supported by this server", key)
    max_tokens = _integer(body, max_key, None, 1)
    if max_tokens is None and max_key != "max_tokens":
        max_tokens = _integer(body, "max_tokens", None, 1)
    params = SamplingParams(
        max_tokens=default_max_tokens if max_tokens is None else max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        seed=_integer(body, "seed", None, -2**63, 2**63 - 1),
        min_tokens=_integer(body, "min_tokens", 0, 0),
        ignore_eos=_flag(body, "ignore_eos"),
        stop=_stops(body))
    if params.min_tokens > params.max_tokens:
        raise BadRequest(f"'min_tokens' ({params.min_tokens}) is more than max_tokens ({params.max_tokens})",
                         "min_tokens")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    if options and not stream:
        raise BadRequest("'stream_options' is only allowed with stream: true", "stream_options")
    include_usage = bool(options and _flag(options, "include_usage"))
    return params, stream, include_usage


def _token_ids(value: Any) -> list[int] | None:
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return value
    return None


def parse_completion(body: Any, tokenizer: Tokenizer) -> Parsed:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if "prompt" not in body:
        raise BadRequest("'prompt' is required", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]   # a batch of one
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    else:
        ids = _token_ids(prompt)
        if ids is None:
            raise BadRequest("'prompt' must be a string or a list of token ids (batches of more than one "
                             "prompt are not supported)", "prompt")
    if not ids:
        raise BadRequest("the prompt is empty", "prompt")
    params, stream, usage = _common(body, DEFAULT_COMPLETION_TOKENS)
    return Parsed(ids, params, stream, usage)


def _message_text(message: Any, i: int) -> dict:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest(f"messages[{i}] must be an object with a 'role'", f"messages[{i}]")
    content = message.get("content")
    if isinstance(content, list):   # content parts: only text is understood
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise BadRequest(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
        content = "".join(p["text"] for p in content)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise BadRequest(f"messages[{i}].content must be a string or a list of text parts",
                         f"messages[{i}].content")
    return {"role": message["role"], "content": content}


def parse_chat(body: Any, tokenizer: Tokenizer, room: int) -> Parsed:
    """`room`: the most tokens a request can hold here; without max_tokens, the reply may fill it."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    ids = tokenizer.chat([_message_text(m, i) for i, m in enumerate(messages)])
    params, stream, usage = _common(body, max(1, room - len(ids)), max_key="max_completion_tokens")
    return Parsed(ids, params, stream, usage)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def now() -> int:
    return int(time.time())
