"""How a proposed value is stored in a slot, and how a chosen one is handed out.

Performs no I/O. An acceptor records the ballot it accepted a slot's value in as
``Entry.term`` (Paxos needs it: a new leader adopts the highest-ballot value). A
value recovered by a new leader is accepted again under the new ballot, so the
stored term of one value changes over time. The caller, though, matches a
proposal by ``ProposalId(term, index)`` against the committed entry's term.

Rule kept here: the stored ``Entry.data`` is ``b"<origin>:" || payload``, the
origin written in ASCII decimal (readable in transcripts and logs), where
``origin`` is the ballot in which the value was first proposed and never
changes. Committed entries are handed out as
``Entry(term=origin, index, type, data=payload)``: the same on every node, and
equal to the proposer's ``ProposalId.term`` iff its own value was chosen there
(one proposer owns a ballot and proposes one value per slot in it).
"""

from __future__ import annotations

from kvstore.consensus.types import Entry, EntryType

SEP = b":"
_MAX_HEADER = 21  # digits of a 64-bit ballot plus the separator


def wrap(origin: int, data: bytes) -> bytes:
    return b"%d:%b" % (origin, data)


def _split(e: Entry) -> tuple[int, bytes] | None:
    i = e.data.find(SEP, 0, _MAX_HEADER)
    if i <= 0 or not e.data[:i].isdigit():
        return None
    return int(e.data[:i]), e.data[i + 1 :]


def origin_of(e: Entry) -> int:
    """The ballot that first proposed ``e``'s value (its stored term if unwrapped)."""
    got = _split(e)
    return e.term if got is None else got[0]


def new_value(ballot: int, index: int, data: bytes, type_: EntryType) -> Entry:
    """A fresh proposal of ``ballot`` for slot ``index``."""
    return Entry(term=ballot, index=index, type=type_, data=wrap(ballot, data))


def reaccept(e: Entry, ballot: int) -> Entry:
    """The same value proposed again in ``ballot`` (phase 2 after recovery)."""
    return Entry(term=ballot, index=e.index, type=e.type, data=e.data)


def noop(ballot: int, index: int) -> Entry:
    """Fills a slot no acceptor in the quorum reported a value for."""
    return new_value(ballot, index, b"", EntryType.NOOP)


def chosen(e: Entry) -> Entry:
    """The committed form of a stored entry (see the module rule)."""
    got = _split(e)
    if got is None:
        return e
    return Entry(term=got[0], index=e.index, type=e.type, data=got[1])


def payload(e: Entry) -> bytes:
    got = _split(e)
    return e.data if got is None else got[1]
