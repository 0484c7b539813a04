"""The ending every table benchmark shares: print the table, save the full document."""
from __future__ import annotations

import json


def publish(table_text: str, doc: dict, json_path: str | None) -> int:
    """Print ``table_text``; write ``doc`` to ``json_path`` when one is given. Returns 0, the
    benchmark's exit status."""
    print(table_text)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    return 0
