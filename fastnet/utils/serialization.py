"""``{"class_name": ..., "config": ...}`` dicts, the one format for every configurable object
(layers, losses, metrics, optimizers, schedules, regularizers) in model files and configs.

Deserializing only ever instantiates classes from the registry the caller passes (fastnet's
own, plus explicit ``custom_objects``): a file cannot name arbitrary code."""


def serialize(obj, base, what):
    """The dict of ``obj`` (an instance of ``base``; ``what`` names the kind in errors)."""
    if not isinstance(obj, base):
        raise TypeError(f"serialize needs a {what}, got {type(obj).__name__}")
    return {"class_name": type(obj).__name__, "config": obj.get_config()}


def resolve(config, lookup, base, what, custom_objects=None):
    """The class a ``serialize`` dict names: ``custom_objects`` first, then ``lookup`` (a dict
    or a function name -> class or None); it must subclass ``base``."""
    if not isinstance(config, dict) or "class_name" not in config \
            or not isinstance(config.get("config") or {}, dict):
        raise ValueError(f"a {what} config must be a dict with 'class_name' and 'config', "
                         f"got {config!r}")
    name = config["class_name"]
    cls = (custom_objects or {}).get(name)
    if cls is None and isinstance(name, str):
        cls = lookup(name) if callable(lookup) else lookup.get(name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        known = sorted(lookup) if isinstance(lookup, dict) else []
        raise ValueError(f"unknown {what} class {name!r}" +
                         (f"; expected one of {known}" if known else ""))
    return cls


def deserialize(config, lookup, base, what, custom_objects=None):
    """An instance from a ``serialize`` dict, via the class's ``from_config``."""
    cls = resolve(config, lookup, base, what, custom_objects)
    return cls.from_config(dict(config.get("config") or {}))
