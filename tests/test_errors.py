"""The documented error tree covers every error class the package defines."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import cellos_sink_jetstream
from cellos_sink_jetstream import _errors
from cellos_sink_jetstream._errors import SinkError

README = Path(__file__).resolve().parent.parent / "README.md"


def _all_error_classes() -> set[type[SinkError]]:
    for module in pkgutil.walk_packages(cellos_sink_jetstream.__path__, "cellos_sink_jetstream."):
        if module.name.endswith("__main__"):
            continue
        importlib.import_module(module.name)
    found: set[type[SinkError]] = set()
    pending: list[type[SinkError]] = [SinkError]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("cellos_sink_jetstream"):
            found.add(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_error_class_is_drawn_in_the_errors_docstring_and_the_readme() -> None:
    names = {cls.__name__ for cls in _all_error_classes()}
    assert {"SinkError", "CliError", "NatsServerError", "CircuitOpenError"} <= names
    readme = README.read_text(encoding="utf-8")
    tree = readme[readme.index("### Errors") :]
    doc = _errors.__doc__ or ""
    for name in sorted(names):
        drawn = re.compile(rf"^[│├└─ ]*{name}\b", re.MULTILINE)
        assert drawn.search(doc), f"{name} is missing from the tree in _errors.py"
        assert drawn.search(tree), f"{name} is missing from the README's error tree"
