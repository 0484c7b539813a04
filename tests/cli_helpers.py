"""Checks of the command line shared by the per-command tests."""
from __future__ import annotations

from codesign.cli import main


def assert_bad_input_exits_2(command: str, defaults: dict[str, str], overrides: list[str],
                             message: str, capsys) -> None:
    """``codesign COMMAND`` with the flags ``defaults``, updated by the flag/value pairs in
    ``overrides``, exits 2 with one line on stderr that contains ``message`` (no traceback)."""
    flags = {**defaults, **dict(zip(overrides[::2], overrides[1::2]))}
    assert main([command] + [x for kv in flags.items() for x in kv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err
