"""How transcripts print a core's values: one stable, compact text per type.

Rule: the output depends only on the value (ids sorted, default message fields left
out), so a transcript's expected output changes only when the core's behaviour does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Core,
    Entry,
    EntryType,
    Message,
    Snapshot,
)


def fmt_ids(ids: Iterable[int]) -> str:
    return "(" + ",".join(str(i) for i in sorted(ids)) + ")"


def fmt_conf(cs: ConfState) -> str:
    out = f"voters={fmt_ids(cs.voters)}"
    if cs.learners:
        out += f" learners={fmt_ids(cs.learners)}"
    if cs.voters_outgoing:
        out += f" outgoing={fmt_ids(cs.voters_outgoing)}"
    return out


def fmt_conf_change(cc: ConfChange) -> str:
    name = cc.type.name.lower().replace("_", "-")
    if cc.type is ConfChangeType.JOINT:
        return f"{name}({', '.join(map(fmt_conf_change, cc.changes))})"
    return name if cc.type is ConfChangeType.LEAVE_JOINT else f"{name} {cc.node_id}"


def fmt_entry(e: Entry) -> str:
    out = f"{e.term}/{e.index}"
    if e.type is EntryType.CONF_CHANGE:
        try:
            return f"{out} {fmt_conf_change(ConfChange.decode(e.data))}"
        except ValueError:
            return f"{out} CONF_CHANGE {e.data!r}"
    if e.type is not EntryType.NORMAL:
        out += f" {e.type.name}"
    if e.data:
        out += " " + e.data.decode("utf-8", "backslashreplace")
    return out


def fmt_entries(ents: Iterable[Entry]) -> str:
    return "[" + ", ".join(fmt_entry(e) for e in ents) + "]"


def fmt_snapshot(s: Snapshot) -> str:
    return f"{s.metadata.term}/{s.metadata.index} {fmt_conf(s.metadata.conf_state)}"


def fmt_msg(m: Message) -> str:
    parts = [f"{m.from_}->{m.to} {m.type.name}"]
    for f in dataclasses.fields(m):
        if f.name in ("type", "group", "from_", "to"):
            continue
        v = getattr(m, f.name)
        if v == f.default:
            continue
        if f.name == "entries":
            parts.append(f"entries={fmt_entries(v)}")
        elif f.name == "snapshot":
            parts.append(f"snapshot={fmt_snapshot(v)}")
        elif f.name == "context":
            parts.append(f"context={v.decode('utf-8', 'backslashreplace')}")
        elif f.name == "reject":
            parts.append("REJECT")
        else:
            parts.append(f"{f.name}={v}")
    return " ".join(parts)


def fmt_status(core: Core) -> str:
    s = core.status()
    return (
        f"{s.role.name} term={s.term} leader={s.leader} commit={s.commit} "
        f"applied={s.applied} last={s.last_index} {fmt_conf(s.conf_state)}"
    )
