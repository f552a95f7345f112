"""The README's module map is the package's file list (issue #10: a newcomer should see the
architecture from it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

# The source tree, not the installed package: tox installs a wheel, which has no README.
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cellos_sink_jetstream"
README = ROOT / "README.md"


def modules_named_in_the_readme() -> set[str]:
    """Every ``name.py`` and ``dir/`` in the tables of the Architecture section."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Architecture")
    end = text.index("\n## ", start + 1)
    rows = [line for line in text[start:end].splitlines() if line.startswith("| `")]
    assert rows, "no module table in the README's Architecture section"
    return {name for row in rows for name in re.findall(r"`([A-Za-z_]+(?:\.py|/))`", row)}


def test_the_readme_module_map_names_every_module_of_the_package() -> None:
    on_disk = {path.name for path in PACKAGE.glob("*.py")}
    on_disk |= {f"{path.name}/" for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    missing = sorted(on_disk - modules_named_in_the_readme())
    assert missing == [], f"modules the README's Architecture table does not name: {missing}"


def test_every_module_the_readme_names_exists() -> None:
    # Top-level, or (the demo's modules) in the CLI package.
    gone = sorted(
        name
        for name in modules_named_in_the_readme()
        if not (PACKAGE / name).exists() and not (PACKAGE / "_cli" / name).exists()
    )
    assert gone == [], f"the README's Architecture table names modules that do not exist: {gone}"


def test_the_cli_imports_only_public_names_and_the_one_connect_helper() -> None:
    # Issue #10: the CLI once imported _SinkClient, _close_quietly and _root_ca_context
    # and connected on its own. Dunders (__version__) are public; of _nats_client it may
    # use only the shared session helper (open_session, its error, its closer).
    private, from_nats_client = [], set()
    for path in sorted((PACKAGE / "_cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    private.append(f"{path.name}: {alias.name} from {node.module}")
                if node.module == "_nats_client":
                    from_nats_client.add(alias.name)
    assert private == []
    assert from_nats_client <= {"open_session", "SessionFailed", "close_quietly"}
