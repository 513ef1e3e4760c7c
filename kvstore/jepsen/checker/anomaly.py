"""The anomaly record that every checker reports. This module performs no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.jepsen.history import Operation


@dataclass(frozen=True, slots=True, kw_only=True)
class Anomaly:
    """One thing a checker found wrong, with the operations that show it."""

    kind: str
    key: str | None
    message: str
    ops: tuple[Operation, ...] = ()

    def describe(self) -> str:
        lines = [f"{self.kind}: {self.message}"]
        lines += [f"    {op.describe()}" for op in self.ops]
        return "\n".join(lines)
