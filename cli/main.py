"""``hep2``: imports every command module (each registers its commands on :mod:`cli.apps`) and mounts the
groups. The entry point of the ``hep2`` script and of ``python -m cli.main``."""

from __future__ import annotations

from cli import analysis, db, keys, ops, reports, segmentation, service, training  # noqa: F401 (they register commands)
from cli.apps import GROUPS, app

for name, group in GROUPS.items():
    app.add_typer(group, name=name)

__all__ = ["app"]

if __name__ == "__main__":
    app()
