"""The calibration file: what a GPU profile measured, and the model fitted to it.

A calibration file is one JSON object:

    {"format": "nexus-calibration", "version": 1,
     "created": "<ISO date>", "command": "<command that produced it>",
     "machine": {"gpu_name": ..., "driver": ..., "torch": ..., "cuda": ..., ...},
     "gpu": <GPUSpec fields>, "model": <ModelSpec fields>,
     "grid": {"sms": [...], "prefill": {...}, "decode": {...}, "corun": ...},
     "measurements": {
        "prefill": [{"sms", "chunk_tokens", "prior_tokens", "time_s"}, ...],
        "decode":  [{"sms", "batch", "context", "time_s"}, ...],
        "corun":   [{"prefill": {"sms", "chunk_tokens", "prior_tokens"},
                     "decode": {"sms", "batch", "context"},
                     "prefill_time_s", "decode_time_s", "prefill_solo_s", "decode_solo_s"}, ...]},
     "fit": {...}, "fit_error": {...}}

A prefill record is one chunk of `chunk_tokens` new tokens after `prior_tokens` already in
the KV cache, or, with `prompts` (default 1), that many such chunks of separate prompts in
one step; a decode record is one step of `batch` sequences, each at `context` KV
tokens. `sms` is the partition size, 0 (FULL_GPU) for a plain stream on the whole GPU.
A co-run record holds both phases running at once on their partitions, with each one's
time alone measured in the same session. Every measurement list may be absent or partial:
a profile can be taken in parts and merged. "fit" and "fit_error" come from
nexus.cost.fit (`python -m nexus.cost.fit FILE`); a file without them cannot be loaded.
`created` identifies the contents: writing different contents over a file restamps it.

This module only reads, checks, builds and writes the file; it knows no fitting.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nexus.errors import UserError
from nexus.specs import GPUSpec, ModelSpec

FORMAT = "nexus-calibration"
VERSION = 1
PHASES = ("prefill", "decode", "corun", "mixed")

# Integer fields of each record, with the least value each may take.
PREFILL_KEYS = {"sms": 0, "chunk_tokens": 1, "prior_tokens": 0}
DECODE_KEYS = {"sms": 0, "batch": 1, "context": 1}
# A mixed record is one chunked-prefill step: a prefill chunk and a decode step in one batch.
MIXED_KEYS = {"sms": 0, "chunk_tokens": 1, "prior_tokens": 0, "batch": 1, "context": 1}
CORUN_TIMES = ("prefill_time_s", "decode_time_s", "prefill_solo_s", "decode_solo_s")


def new_calibration(model: ModelSpec, gpu: GPUSpec, *, command: str, machine: dict[str, Any],
                    grid: dict[str, Any]) -> dict[str, Any]:
    """An empty calibration for this model and GPU, ready to receive measurements."""
    return {
        "format": FORMAT, "version": VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "machine": dict(machine),
        "gpu": gpu.to_dict(), "model": model.to_dict(), "grid": dict(grid),
        "measurements": {"prefill": [], "decode": [], "corun": [], "mixed": []},
    }


def read_calibration(path: str | Path) -> dict[str, Any]:
    """Parse and check a calibration file; every problem is a UserError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such calibration file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read calibration file: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON: {e}") from None
    validate_calibration(data, str(path))
    return data


def content_digest(data: dict[str, Any]) -> str:
    """A hash of everything in a calibration but its `created` stamp: equal exactly when the
    contents are."""
    body = {k: v for k, v in data.items() if k != "created"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def write_calibration(data: dict[str, Any], path: str | Path) -> None:
    """Check `data` and write it as indented JSON (the file is meant to be diffed and read).

    `created` is a calibration's identity in run records, so writing different contents over
    a file stamps `data["created"]` anew (later than the file's): a refit, a new host gap or
    more measurements make a new calibration.
    """
    path = Path(path)
    validate_calibration(data, str(path))
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        old = None
    if isinstance(old, dict) and isinstance(old.get("created"), str) and \
            content_digest(old) != content_digest(data) and data["created"] <= old["created"]:
        now = datetime.now(timezone.utc)
        stamp = now.isoformat(timespec="seconds")
        if stamp <= old["created"]:
            stamp = now.isoformat(timespec="microseconds")
        data["created"] = stamp
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_dumps(data) + "\n")
    tmp.replace(path)   # a crash mid-write must not destroy a profile that took an hour


def _dumps(value: Any, indent: str = "") -> str:
    """JSON with objects indented and every list element (a record, a row) on one line."""
    inner = indent + " "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + json.dumps(v) for v in value) + "\n" + indent + "]"
    return json.dumps(value)


def validate_calibration(data: Any, origin: str) -> None:
    """Raise UserError (prefixed with `origin`) unless `data` is a well-formed calibration.

    Checks structure and types only: whether there is enough data to fit is the fitter's
    question, and whether it matches a model and GPU is `check_matches`.
    """
    if not isinstance(data, dict):
        raise UserError(f"{origin}: a calibration file holds a JSON object, "
                        f"got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise UserError(f"{origin}: not a calibration file (format is {data.get('format')!r}, "
                        f"expected {FORMAT!r})")
    version = data.get("version")
    if version != VERSION or isinstance(version, bool):
        raise UserError(f"{origin}: calibration format version {version!r} is not supported; "
                        f"this build reads version {VERSION}")
    for key, kind in (("created", str), ("gpu", dict), ("model", dict), ("measurements", dict)):
        _require(data, key, kind, origin)
    for key, kind in (("command", str), ("machine", dict), ("grid", dict), ("fit", dict),
                      ("fit_error", dict)):
        if key in data and not isinstance(data[key], kind):
            raise UserError(f"{origin}: field {key} must be {_kind(kind)}, "
                            f"got {type(data[key]).__name__}")
    gpu = spec_from_dict(GPUSpec, data["gpu"], f"{origin}: gpu")
    spec_from_dict(ModelSpec, data["model"], f"{origin}: model")

    meas = data["measurements"]
    unknown = set(meas) - set(PHASES)
    if unknown:
        raise UserError(f"{origin}: unknown measurement kind(s) {', '.join(sorted(unknown))}; "
                        f"expected {', '.join(PHASES)}")
    for phase in PHASES:
        records = meas.get(phase, [])
        if not isinstance(records, list):
            raise UserError(f"{origin}: measurements.{phase} must be a list, "
                            f"got {type(records).__name__}")
        for i, rec in enumerate(records):
            where = f"{origin}: measurements.{phase}[{i}]"
            if phase == "corun":
                _check_corun(rec, where, gpu.num_sms)
            else:
                keys = {"prefill": PREFILL_KEYS, "decode": DECODE_KEYS, "mixed": MIXED_KEYS}[phase]
                _check_record(rec, keys, ("time_s",), where, gpu.num_sms)
                if phase == "prefill" and "prompts" in rec and (_require(rec, "prompts", int, where) < 1):
                    raise UserError(f"{where}.prompts must be >= 1, got {rec['prompts']}")


def check_matches(data: dict[str, Any], model: ModelSpec, gpu: GPUSpec, origin: str) -> None:
    """Raise UserError unless the calibration was taken for exactly this model and GPU."""
    _check_spec(spec_from_dict(ModelSpec, data["model"], f"{origin}: model"), model,
                "model", origin)
    _check_spec(spec_from_dict(GPUSpec, data["gpu"], f"{origin}: gpu"), gpu, "GPU", origin)


def merge_calibrations(base: dict[str, Any], part: dict[str, Any], origin: str) -> dict[str, Any]:
    """`base` with `part`'s measurements appended; the old fit is dropped (it is now stale).

    Both must describe the same model and GPU. Repeats of one grid point are all kept:
    the fitter treats them as independent samples. `created` becomes the later of the two,
    since the contents are new; it is what identifies a calibration in run records. The
    newer part's grid is kept: it is the grid the profiler now measures with.
    """
    base_model = spec_from_dict(ModelSpec, base["model"], f"{origin}: model")
    base_gpu = spec_from_dict(GPUSpec, base["gpu"], f"{origin}: gpu")
    check_matches(part, base_model, base_gpu, origin)
    merged = {k: v for k, v in base.items() if k not in ("fit", "fit_error")}
    merged["created"] = max(base["created"], part["created"])
    if part["created"] >= base["created"]:   # the grid the profiler measures with now
        merged["grid"] = part.get("grid", base.get("grid"))
    merged["measurements"] = {
        phase: list(base["measurements"].get(phase, [])) + list(part["measurements"].get(phase, []))
        for phase in PHASES}
    return merged


def spec_from_dict(cls: type, data: Any, origin: str) -> Any:
    """Build a ModelSpec or GPUSpec from its dict, with errors that name the field."""
    if not isinstance(data, dict):
        raise UserError(f"{origin} must be an object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise UserError(f"{origin}: unknown field(s) {', '.join(sorted(unknown))}")
    try:
        return cls(**data)
    except TypeError as e:
        raise UserError(f"{origin}: {e}") from None


def _check_spec(found: Any, wanted: Any, what: str, origin: str) -> None:
    if found.name != wanted.name:
        raise UserError(f"{origin}: calibration is for {found.name} but the {what} asked for "
                        f"is {wanted.name}")
    for f in fields(found):
        a, b = getattr(found, f.name), getattr(wanted, f.name)
        if a != b and f.name != "source":
            raise UserError(f"{origin}: calibration's {what} {found.name} has {f.name}={a!r} "
                            f"but the {what} asked for has {f.name}={b!r}")


def _check_record(rec: Any, int_keys: dict[str, int], time_keys: tuple[str, ...], where: str,
                  num_sms: int) -> None:
    if not isinstance(rec, dict):
        raise UserError(f"{where} must be an object, got {type(rec).__name__}")
    for key, least in int_keys.items():
        v = _require(rec, key, int, where)
        if v < least:
            raise UserError(f"{where}.{key} must be >= {least}, got {v}")
    if rec["sms"] > num_sms:
        raise UserError(f"{where}.sms is {rec['sms']} but the GPU has {num_sms} SMs "
                        f"(0 means a plain stream on the whole GPU)")
    _check_times(rec, time_keys, where)


def _check_times(rec: dict, time_keys: tuple[str, ...], where: str) -> None:
    for key in time_keys:
        v = _require(rec, key, float, where)
        if not (math.isfinite(v) and v > 0):
            raise UserError(f"{where}.{key} must be a positive number of seconds, got {v!r}")


def _check_corun(rec: Any, where: str, num_sms: int) -> None:
    if not isinstance(rec, dict):
        raise UserError(f"{where} must be an object, got {type(rec).__name__}")
    _check_record(_require(rec, "prefill", dict, where), PREFILL_KEYS, (), f"{where}.prefill",
                  num_sms)
    _check_record(_require(rec, "decode", dict, where), DECODE_KEYS, (), f"{where}.decode",
                  num_sms)
    _check_times(rec, CORUN_TIMES, where)


def _require(obj: dict, key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise UserError(f"{where}: missing field {key}")
    v = obj[key]
    ok = (isinstance(v, (int, float)) if kind is float else isinstance(v, kind))
    if isinstance(v, bool) or not ok:
        raise UserError(f"{where}.{key} must be {_kind(kind)}, got {v!r}")
    return v


def _kind(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", dict: "an object",
            list: "a list"}[kind]
