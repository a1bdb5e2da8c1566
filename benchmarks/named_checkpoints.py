"""The benchmarks' `--checkpoints NAME=DIR ...` argument: checkpoint directories by the name results use
(DIR may be a model-zoo entry, `zoo:<task>/<policy>`, docs/zoo.md)."""

from __future__ import annotations

from pathlib import Path

from moss_vla.zoo import PREFIX, resolve_checkpoint


def named_checkpoints(specs: list[str]) -> dict[str, Path]:
    """{name: directory} from ``NAME=DIR`` (or a bare ``DIR``, named after its run directory, or a zoo entry
    after its policy); exits naming any directory that does not exist."""
    named = {}
    for spec in specs:
        if "=" in spec:
            name, path = spec.split("=", 1)
        else:
            name = spec.rsplit("/", 1)[-1] if spec.startswith(PREFIX) else Path(spec).parent.parent.name
            path = spec
        named[name] = resolve_checkpoint(path)
    missing = [str(d) for d in named.values() if not d.is_dir()]
    if missing:
        raise SystemExit(f"checkpoint directories not found: {missing}")
    return named
