"""The JSON schema of ``fastnet bench --json`` (``schema.json`` beside this file) and a small
validator for the part of JSON Schema it uses, so that no dependency is needed to check a
report.  The validator refuses a schema keyword it does not implement rather than skip it."""
import json
import math
import os

__all__ = ["SCHEMA_PATH", "load_schema", "validate"]

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.json")
_ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs"}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def load_schema():
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def _resolve(ref, root):
    if not ref.startswith("#/"):
        raise ValueError(f"schema: only local $ref are supported, got {ref!r}")
    node = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _check(value, schema, root, path, errors):
    unknown = set(schema) - _ANNOTATIONS - set(_KEYWORDS) - {"$ref"}
    if unknown:
        raise ValueError(f"schema at {path}: keyword(s) {sorted(unknown)} not supported")
    if "$ref" in schema:
        _check(value, _resolve(schema["$ref"], root), root, path, errors)
    for key in _KEYWORDS:
        if key in schema and not _KEYWORDS[key](value, schema[key], schema, root, path, errors):
            return   # the type is wrong: the other keywords would only repeat it


def _type(value, want, schema, root, path, errors):
    names = want if isinstance(want, list) else [want]
    if not any(_TYPES[n](value) for n in names):
        errors.append(f"{path}: expected {' or '.join(names)}, got {type(value).__name__}")
        return False
    if isinstance(value, float) and not math.isfinite(value):
        errors.append(f"{path}: {value} is not a finite number")
        return False
    return True


def _enum(value, options, schema, root, path, errors):
    # JSON equality: true is not 1
    if not any(value == o and isinstance(value, bool) == isinstance(o, bool) for o in options):
        errors.append(f"{path}: {value!r} is not one of {options}")
    return True


def _const(value, const, schema, root, path, errors):
    if value != const or type(value) is not type(const):
        errors.append(f"{path}: expected {const!r}, got {value!r}")
    return True


def _required(value, names, schema, root, path, errors):
    if isinstance(value, dict):
        errors.extend(f"{path}: missing {n!r}" for n in names if n not in value)
    return True


def _properties(value, props, schema, root, path, errors):
    if isinstance(value, dict):
        for name, sub in props.items():
            if name in value:
                _check(value[name], sub, root, f"{path}.{name}", errors)
    return True


def _additional(value, extra, schema, root, path, errors):
    if isinstance(value, dict):
        known = schema.get("properties", {})
        for name in value:
            if name in known:
                continue
            if extra is False:
                errors.append(f"{path}: unexpected property {name!r}")
            elif isinstance(extra, dict):
                _check(value[name], extra, root, f"{path}.{name}", errors)
    return True


def _items(value, sub, schema, root, path, errors):
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, sub, root, f"{path}[{i}]", errors)
    return True


def _min_items(value, n, schema, root, path, errors):
    if isinstance(value, list) and len(value) < n:
        errors.append(f"{path}: needs at least {n} item(s), has {len(value)}")
    return True


def _min_length(value, n, schema, root, path, errors):
    if isinstance(value, str) and len(value) < n:
        errors.append(f"{path}: needs at least {n} character(s)")
    return True


def _minimum(value, low, schema, root, path, errors):
    if _TYPES["number"](value) and value < low:
        errors.append(f"{path}: {value} < {low}")
    return True


def _exclusive_minimum(value, low, schema, root, path, errors):
    if _TYPES["number"](value) and value <= low:
        errors.append(f"{path}: {value} <= {low}")
    return True


_KEYWORDS = {"type": _type, "enum": _enum, "const": _const, "required": _required,
             "properties": _properties, "additionalProperties": _additional, "items": _items,
             "minItems": _min_items, "minLength": _min_length, "minimum": _minimum,
             "exclusiveMinimum": _exclusive_minimum}


def validate(instance, schema=None):
    """The list of places where ``instance`` breaks ``schema`` (default: the report schema);
    empty when it is valid."""
    schema = load_schema() if schema is None else schema
    errors = []
    _check(instance, schema, schema, "$", errors)
    return errors
