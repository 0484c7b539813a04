"""Every catalog device loads to the values it had before its per-core numbers moved to
configs/cores/ (issue 19, item 1): tests/data/device_snapshot.json was written from the
self-contained device files, so splitting a device into core defaults and device overrides may
change where a number is written but not what it is (value and source), so no price changes.

Regenerate only for a deliberate change of a number:
``python -c "from tests.test_device_snapshot import write; write()"``.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from codesign.cost_models.devices import Sourced, catalog_names, load_device

SNAPSHOT = Path(__file__).parent / "data" / "device_snapshot.json"
# host is read off the machine the tests run on, so it has no fixed snapshot.
DOCUMENTED = [n for n in catalog_names() if n != "host"]


def flat(obj, path: str = ""):
    """(dotted path, value) for every field that pricing or the catalog tests read; a Sourced
    number as [value, source]. File paths, digests, notes and provenance are left out."""
    if isinstance(obj, Sourced):
        yield path, [obj.value, obj.source]
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if f.name in ("path", "sha256", "notes") or not f.compare:
                continue
            yield from flat(getattr(obj, f.name), f"{path}.{f.name}".lstrip("."))
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from flat(value, f"{path}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from flat(value, f"{path}[{i}]")
    else:
        yield path, obj


def snapshot(name: str) -> dict:
    return json.loads(json.dumps(dict(flat(load_device(name)))))


def write() -> None:
    SNAPSHOT.write_text(json.dumps({n: snapshot(n) for n in DOCUMENTED}, indent=1,
                                   sort_keys=True) + "\n")


def test_snapshot_covers_the_catalog():
    assert sorted(json.loads(SNAPSHOT.read_text())) == DOCUMENTED


@pytest.mark.parametrize("name", DOCUMENTED)
def test_device_values_unchanged(name):
    expected = json.loads(SNAPSHOT.read_text())[name]
    got = snapshot(name)
    assert got.keys() == expected.keys()
    changed = {k: (expected[k], got[k]) for k in expected if got[k] != expected[k]}
    assert changed == {}
