"""Deterministic simulation of consensus cores (issue 2, "How it must be proven").

N cores over MemoryStorage, a seeded network that delays, drops, duplicates,
reorders and partitions messages, crashes and restarts; safety checkers run
after every step, liveness is checked after the faults heal. Everything is a pure
function of the seed.

    pytest tests/sim                                    default run (raft, paxos, fakes)
    pytest tests/sim -k 'random_schedules and raft' --sim-seed N    replay one seed
    pytest tests/sim --sim-schedules 200                fewer (or more) schedules per test
    pytest tests/sim -k soak --soak                     long soak, fresh random seeds

Modules: network.py (the seeded network), cluster.py (nodes running the node's own
replica loop, kvstore/node/replica.py, and the client), twin.py (the in-memory twin of a
node's storage, transport and clock under that loop), checkers.py (the invariants),
plans.py (fault plans), schedule.py (the run loop, liveness), driver_model.py and driver_parts.py
(the real driver's interleavings around the same loop), fakecore.py (a safe fake core
and deliberately broken ones). Findings: FINDINGS.md.
"""
