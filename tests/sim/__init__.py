"""Deterministic simulation of consensus cores (issue 2, "How it must be proven").

N cores over MemoryStorage, a seeded network that delays, drops, duplicates,
reorders and partitions messages, crashes and restarts; safety checkers run
after every step. Everything is a pure function of the seed.
"""
