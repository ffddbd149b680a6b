"""A/B patch: the worker's entry lookup and traceback as they were before the early-crash
change (importlib.import_module; traceback.format_exc)."""

from bgwlab import worker


def _resolve(entry: str):
    import importlib

    mod_name, _, qual = entry.partition(":")
    obj = importlib.import_module(mod_name)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{entry} is not callable")
    return obj


def _traceback() -> str:
    import traceback

    return traceback.format_exc(limit=20)[-4000:]


worker._resolve = _resolve
worker._traceback = _traceback
