"""How a proposed value is stored in a slot, and how a chosen one is handed out.

Performs no I/O. An acceptor records the ballot it accepted a slot's value in as
``Entry.term`` (Paxos needs it: a new leader adopts the highest-ballot value). A
value recovered by a new leader is accepted again under the new ballot, so the
stored term of one value changes over time, while the caller matches a proposal
by ``ProposalId(term, index)`` against the committed entry's term.

Rule kept here: every stored value has an ``origin``, the ballot that first
proposed it, which never changes. A value stored in its origin ballot is stored
as is (``Entry.term`` is the origin), so the common case costs nothing. A value
stored under another ballot, or whose data starts with the marker ``~``, is
stored as ``b"~<origin>:" || payload`` (ASCII decimal, readable in transcripts).
Committed entries are handed out as ``Entry(term=origin, index, type,
data=payload)``: the same on every node, and equal to the proposer's
``ProposalId.term`` iff its own value was chosen there (one proposer owns a
ballot and proposes one value per slot in it).
"""

from __future__ import annotations

from kvstore.consensus.types import Entry, EntryType

MARK = b"~"
SEP = b":"
_MAX_HEADER = 22  # marker, the digits of a 64-bit ballot, the separator


def wrap(origin: int, data: bytes) -> bytes:
    """The stored form of ``data`` first proposed in ``origin`` (always headed)."""
    return b"~%d:%b" % (origin, data)


def _split(e: Entry) -> tuple[int, bytes] | None:
    """(origin, payload) of a headed value; None if it is stored as is."""
    data = e.data
    if not data.startswith(MARK):
        return None
    i = data.find(SEP, 1, _MAX_HEADER)
    if i <= 1 or not data[1:i].isdigit():
        return None
    return int(data[1:i]), data[i + 1 :]


def origin_of(e: Entry) -> int:
    """The ballot that first proposed ``e``'s value."""
    got = _split(e)
    return e.term if got is None else got[0]


def new_value(ballot: int, index: int, data: bytes, type_: EntryType) -> Entry:
    """A fresh proposal of ``ballot`` for slot ``index``."""
    if data.startswith(MARK):
        data = wrap(ballot, data)
    return Entry(term=ballot, index=index, type=type_, data=data)


def reaccept(e: Entry, ballot: int) -> Entry:
    """The same value proposed again in ``ballot`` (phase 2 after recovery)."""
    data = e.data if e.term == ballot or _split(e) is not None else wrap(e.term, e.data)
    return Entry(term=ballot, index=e.index, type=e.type, data=data)


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
