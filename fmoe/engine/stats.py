"""EngineStats: what the engine has done so far (cumulative since load), as one typed record.

    s = model.stats()                  # EngineStats
    s.bytes_read, s.cache_hit_rate     # expert bytes streamed, expert cache hit rate (None when in memory)
    s.to_dict()                        # flat, JSON-ready: these fields plus the expert store's own counters

Where the numbers come from: fmoe.engine.moe.MoEStats (routing, prediction, time waiting for experts) and the expert
source's ``stats()`` (fmoe.storage.expert_store.ExpertStore counters, or the in-memory source's zeros).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EngineStats:
    mode: str = "in-memory"                     # in-memory | page-cache | direct
    experts_per_token: int = 0
    bytes_read: int = 0                         # expert bytes read from the streaming layout
    cache_hit_rate: float | None = None         # expert cache (None: experts in memory)
    io_wait_s: float = 0.0                      # time the engine waited on expert reads
    expert_calls: int = 0                       # (token, expert) applications
    expert_wait_s: float = 0.0                  # time spent getting experts (reads, waits, preparation)
    prediction_hit_rate: float | None = None    # predicted experts the router then chose (None: no prediction)
    store: dict = field(default_factory=dict)   # every counter of the expert store (reads, evictions, pool, ...)

    @classmethod
    def collect(cls, source: dict, moe: dict, experts_per_token: int) -> "EngineStats":
        """From an expert source's ``stats()`` dict and ``MoEStats.merge()``."""
        return cls(mode=source.get("mode", "in-memory"), experts_per_token=experts_per_token,
                   bytes_read=int(source.get("bytes_read", 0) or 0), cache_hit_rate=source.get("cache_hit_rate"),
                   io_wait_s=float(source.get("io_wait_s", 0.0) or 0.0), expert_calls=moe["expert_calls"],
                   expert_wait_s=moe["expert_wait_s"], prediction_hit_rate=moe["prediction_hit_rate"],
                   store=dict(source))

    def to_dict(self) -> dict:
        d = dict(self.store)
        d.update({k: v for k, v in self.__dict__.items() if k != "store"})
        return d
