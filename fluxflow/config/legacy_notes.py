"""What the mapping of the original tool's keys (legacy.py, legacy_pipeline.py) reports: warnings and errors."""
from __future__ import annotations

from typing import Any

from fluxflow.config.errors import ConfigIssue

NO_EFFECT = "has no effect here"


class LegacyNotes:
    def __init__(self) -> None:
        self.dropped: dict[tuple[str, str], list[str]] = {}  # (path, reason) -> keys, for one line per reason
        self.warnings: list[str] = []
        self.issues: list[ConfigIssue] = []

    def drop(self, section: dict, key: str, path: str, reason: str, report_false: bool = False) -> Any:
        """Remove a key with no effect here and return its value; reported unless the value asks for nothing (null,
        or false unless `report_false`: a false that asks to turn off what is always on here is reported)."""
        value = section.pop(key)
        if value is not None and (value is not False or report_false):
            self.dropped.setdefault((path, reason), []).append(key)
        return value

    def all_warnings(self) -> list[str]:
        lines = []
        for (path, reason), keys in self.dropped.items():
            names = f"{path}.{keys[0]}: has" if len(keys) == 1 else f"{path}.{{{', '.join(keys)}}}: have"
            lines.append(f"{names} no effect here" + ("" if reason == NO_EFFECT else f" ({reason})"))
        return lines + self.warnings


def as_dict(parent: Any, key: str) -> dict | None:
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, dict) else None
