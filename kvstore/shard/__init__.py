"""Range shards: descriptors, the shard map, split/merge rules and admin commands.

Pure (no I/O): the storage writer applies the commands, the node driver proposes them.
Design: docs/sharding.md.
"""

from kvstore.shard.descriptor import META_GROUP, Descriptor, Epoch, newer
from kvstore.shard.shardmap import ShardMap
from kvstore.shard.split import SplitError, check_split_key, merge, split

__all__ = [
    "META_GROUP",
    "Descriptor",
    "Epoch",
    "ShardMap",
    "SplitError",
    "check_split_key",
    "merge",
    "newer",
    "split",
]
