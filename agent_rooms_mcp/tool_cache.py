"""The tools' JSON schemas, cached beside this package's .pyc files (DESIGN §11: cold start).

A stdio client launches the hub for every session and lists the tools before it calls one. Building what that list
shows (the SDK makes an argument model per tool, then its input and output JSON schemas) is the largest part of our
start after the imports, and it is the same work on every start of the same code. So the schemas are written once,
where and when Python writes its bytecode (never under PYTHONDONTWRITEBYTECODE), and read back while everything they
were built from is unchanged: the (mtime, size) of each of our modules loaded when they were built (Python's own
check of a .pyc against its source), and the interpreter's, pydantic's and the SDK's versions. A tool's schemas can
only come from a loaded module, and a new one enters only through an import written in a module already stamped.
Anything else, a missing, stale or unreadable cache, and the tools are built live and the cache written again.
`tests/test_tool_cache.py` proves a server built from the cache lists exactly what a live build lists.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp
import mcp_types
import pydantic
import pydantic_core

PACKAGE = __name__.rpartition(".")[0]
# Where `python -m compileall` or an import puts this package's .pyc files (PYTHONPYCACHEPREFIX included).
CACHE = Path(importlib.util.cache_from_source(__file__)).parent / "tool-schemas.json"
# The libraries that turn our annotations into schemas: their package files are stamped with ours, so a reinstall
# or an upgrade (which rewrites them) counts as a change; their versions are compared too.
_LIBRARIES = (mcp, mcp_types, pydantic, pydantic_core)


@dataclass(frozen=True, slots=True)
class Schemas:
    """What tools/list shows of one tool beyond its name, description and annotations."""

    input: dict[str, Any]
    output: dict[str, Any] | None


def load(path: Path = CACHE) -> dict[str, Schemas] | None:
    """Each tool's schemas by name, or None when there is no cache or anything it was built from has changed."""
    try:
        cached = json.loads(path.read_bytes())
        if cached["versions"] != _versions():
            return None
        for source, stamp in cached["sources"].items():
            if _stamp(source) != stamp:
                return None
        return {name: Schemas(s["input"], s["output"]) for name, s in cached["tools"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(tools: dict[str, Schemas], path: Path = CACHE) -> None:
    """Write the cache, whole or not at all; silently not, like a .pyc, where bytecode is not written."""
    if sys.dont_write_bytecode:
        return
    try:
        sources = sorted(
            {
                file
                for name, module in list(sys.modules.items())
                if name.partition(".")[0] == PACKAGE and (file := getattr(module, "__file__", None))
            }
            | {str(library.__file__) for library in _LIBRARIES}
        )
        document = {
            "versions": _versions(),
            "sources": {source: _stamp(source) for source in sources},
            "tools": {name: {"input": s.input, "output": s.output} for name, s in tools.items()},
        }
        path.parent.mkdir(exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(document, f)
            os.replace(temp, path)  # two starts writing at once each leave a whole file
        except BaseException:
            os.unlink(temp)
            raise
    except OSError:
        return


def _versions() -> list[str]:
    return [sys.version, pydantic.VERSION, pydantic_core.__version__]


def _stamp(source: str) -> list[int]:
    st = os.stat(source)
    return [st.st_mtime_ns, st.st_size]
