"""sfdisk's JSON (``sfdisk -J``), read the same way on the host and the device.

sfdisk writes some warnings to standard output ahead of the JSON, e.g. "Invalid flag 0xed3b of EBR
(for partition 7) will be corrected by w(rite)." for an EBR whose signature a power cut tore: the
table is read from the first "{" on. Standard library only.
"""

from __future__ import annotations

import json
from typing import Any


def partition_table(text: str) -> tuple[dict[str, Any], list[str]]:
    """The "partitiontable" object, and the lines sfdisk printed before it (its warnings).
    Raises ValueError when there is no such object."""
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON in sfdisk's output: {text.strip()[:200]!r}")
    data, _ = json.JSONDecoder().raw_decode(text, start)
    if not isinstance(data, dict) or not isinstance(data.get("partitiontable"), dict):
        raise ValueError("sfdisk's JSON has no partitiontable object")
    return data["partitiontable"], [line for line in text[:start].splitlines() if line.strip()]
