"""Jepsen-style fault testing for kvstore: real processes, real network faults, checked
histories.

Run (as root; Debian packages iproute2, iptables, faketime, see tests/apt-packages.txt)::

    kvstore jepsen run --nodes 5 --workload register --nemesis all --time-limit 120
    kvstore jepsen check jepsen-runs/<run>/history.jsonl
    kvstore jepsen clean          # remove hosts, bridge, rules, processes of a killed run

(``python -m kvstore.jepsen.cli ...`` is the same command.) ``run`` exits 0 when the history
is valid, 1 when a checker found an anomaly, 2 when the harness failed or the run decided
nothing; ``check`` exits 0 linearizable, 1 not, 2 unreadable.

Each run leaves in its ``--out`` directory (default ``jepsen-runs/<time>-<workload>-
<nemesis>-<seed>``): ``history.jsonl`` (every operation: invoke, then ok / fail / info),
``results.json`` (verdict, counts, anomalies, checker timings, final reads),
``report.html`` (timeline with the fault windows), ``latency.png``, ``throughput.png``, and
``nodes/nN.log`` (each node's output).

Modules: :mod:`history` (events, operations, JSON lines), :mod:`formats` (Porcupine's
etcd and kv logs, our jsonl), :mod:`checker` (linearizability, session guarantees, lost
writes), :mod:`hosts` (namespaces, veths, bridge, iptables), :mod:`cluster` (node
processes), :mod:`nemesis` (the seeded fault schedule), :mod:`workloads`, :mod:`runner`,
:mod:`report`, :mod:`cli`.

Clock faults use libfaketime (``LD_PRELOAD`` with a per-node control file), which moves both
the wall clock and CLOCK_MONOTONIC. The store times everything in ticks of the event loop's
monotonic clock and decides nothing by wall-clock time (no lease reads by default), so a
clock fault exercises timers only: a forward jump fires pending timers at once, a backward
jump freezes a node's timers while it keeps answering RPCs (a leader under load then keeps
followers quiet with its appends). It checks that timer trouble costs availability, never
safety.
"""
