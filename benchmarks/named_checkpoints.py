"""The benchmarks' `--checkpoints NAME=DIR ...` argument: checkpoint directories by the name results use."""

from __future__ import annotations

from pathlib import Path


def named_checkpoints(specs: list[str]) -> dict[str, Path]:
    """{name: directory} from ``NAME=DIR`` (or a bare ``DIR``, named after its run directory); exits naming
    any directory that does not exist."""
    named = {}
    for spec in specs:
        name, path = spec.split("=", 1) if "=" in spec else (Path(spec).parent.parent.name, spec)
        named[name] = Path(path)
    missing = [str(d) for d in named.values() if not d.is_dir()]
    if missing:
        raise SystemExit(f"checkpoint directories not found: {missing}")
    return named
