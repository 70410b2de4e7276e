"""Fold the jobs of one enqueue call that share a unique key or a throttle window.

The insert statement admits each (queue, unique_key) and each (queue, singleton key, window) once,
so a batch that names one twice is folded first, with the meaning it would have had one call at a
time: the first job of a key is the one inserted; a later ``keep`` job resolves to it, a later
``replace`` job replaces its payload and options but keeps its id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from conveyor.options import JobSpec


def _key(spec: JobSpec) -> tuple[str, ...] | None:
    if spec.unique_key is not None:
        return ("unique", spec.queue, spec.unique_key)
    if spec.singleton_seconds is not None:
        return ("throttle", spec.queue, spec.singleton_key or "", str(spec.singleton_seconds))
    return None


def fold(specs: Sequence[JobSpec]) -> tuple[list[JobSpec], list[int]]:
    """Return the rows to insert and, per input job, the index of the row it resolves to."""
    rows: list[JobSpec] = []
    where: list[int] = []
    first: dict[tuple[str, ...], int] = {}
    for spec in specs:
        key = _key(spec)
        if key is None or key not in first:
            if key is not None:
                first[key] = len(rows)
            where.append(len(rows))
            rows.append(spec)
            continue
        index = first[key]
        if spec.unique_replace:
            rows[index] = dataclasses.replace(spec, id=rows[index].id)
        where.append(index)
    return rows, where
