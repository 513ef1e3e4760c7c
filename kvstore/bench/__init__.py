"""Load generation and measurement: `kvstore bench` and the etcd comparison.

Rule this package keeps: one closed-loop machinery (kvstore.bench.runner) drives every
store it measures, so numbers for kvstore and etcd are comparable.
"""
