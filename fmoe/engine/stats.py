"""EngineStats: what the engine has done (cumulative since load, or over a window), as one typed record.

    s = model.stats()                  # EngineStats, cumulative since load
    mark = model.stats(); ...; d = model.stats().since(mark)      # what happened in between (model.stats_since(mark))
    s.bytes_read, s.cache_hit_rate     # expert bytes streamed, expert cache hit rate (None when in memory)
    s.disk_bytes_read                  # of bytes_read, what came from the disk (page-cache mode: not the page cache)
    s.page_cache_hit_rate              # page-cache mode: share of bytes_read the OS page cache served (None otherwise)
    s.to_dict()                        # flat, JSON-ready: these fields plus the expert store's own counters
    EngineStats.total([a, b])          # the sum of windows (e.g. the steps of a task)

Where the numbers come from: fmoe.engine.moe.MoEStats (routing, prediction, time waiting for experts) and the expert
source's ``stats()`` (fmoe.storage.expert_store.ExpertStore counters, or the in-memory source's zeros).
:class:`fmoe.engine.generate.Generation` records the window of its own run (``GenerationStats.engine``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

# expert-store counters that add up (everything else in ``store`` is a gauge or a setting, kept as the later value)
_STORE_COUNTERS = ("bytes_read", "reads", "cache_hits", "cache_misses", "io_wait_s", "read_s", "prefetch_issued",
                   "prefetch_used", "prefetch_hits", "prefetch_dropped", "evictions", "gets", "buffers_allocated",
                   "buffers_reused", "disk_bytes", "page_cache_bytes", "hint_errors")
_COUNTERS = ("bytes_read", "disk_bytes_read", "io_wait_s", "expert_calls", "expert_wait_s", "predicted",
             "predicted_hits")


def _ratio(num, den):
    return num / den if den else None


@dataclass
class EngineStats:
    mode: str = "in-memory"                     # in-memory | page-cache | direct
    experts_per_token: int = 0
    bytes_read: int = 0                         # expert bytes read from the streaming layout
    disk_bytes_read: int = 0                    # of those, bytes that came from the disk (not the page cache)
    cache_hit_rate: float | None = None         # expert cache (None: experts in memory)
    page_cache_hit_rate: float | None = None    # page-cache mode: share of bytes_read served by the OS page cache
    io_wait_s: float = 0.0                      # time the engine waited on expert reads
    expert_calls: int = 0                       # (token, expert) applications
    expert_wait_s: float = 0.0                  # time spent getting experts (reads, waits, preparation)
    prediction_hit_rate: float | None = None    # predicted experts the router then chose (None: no prediction)
    predicted: int = 0                          # experts predicted (the prediction hit rate's denominator)
    predicted_hits: int = 0
    store: dict = field(default_factory=dict)   # every counter of the expert store (reads, evictions, pool, ...)

    @classmethod
    def collect(cls, source: dict, moe: dict, experts_per_token: int) -> "EngineStats":
        """From an expert source's ``stats()`` dict and ``MoEStats.merge()``."""
        mode = source.get("mode", "in-memory")
        bytes_read = int(source.get("bytes_read", 0) or 0)
        disk = source.get("disk_bytes")
        return cls(mode=mode, experts_per_token=experts_per_token,
                   bytes_read=bytes_read, disk_bytes_read=int(bytes_read if disk is None else disk),
                   cache_hit_rate=source.get("cache_hit_rate"),
                   page_cache_hit_rate=source.get("page_cache_hit_rate") if mode == "page-cache" else None,
                   io_wait_s=float(source.get("io_wait_s", 0.0) or 0.0), expert_calls=moe["expert_calls"],
                   expert_wait_s=moe["expert_wait_s"], prediction_hit_rate=moe["prediction_hit_rate"],
                   predicted=int(moe.get("predicted", 0)), predicted_hits=int(moe.get("predicted_hits", 0)),
                   store=dict(source))

    def _rates(self) -> "EngineStats":
        """Recompute the rates from the counters (after a difference or a sum)."""
        s = self.store
        if self.cache_hit_rate is not None and "cache_hits" in s:
            self.cache_hit_rate = _ratio(s["cache_hits"], s["cache_hits"] + s["cache_misses"]) or 0.0
            s["cache_hit_rate"] = self.cache_hit_rate
            if "prefetch_hits" in s:
                req = s["cache_hits"] + s["cache_misses"]
                s["cache_hit_rate_excl_prefetch"] = (s["cache_hits"] - s["prefetch_hits"]) / req if req else 0.0
            if "prefetch_used" in s:
                s["prefetch_hit_rate"] = _ratio(s["prefetch_used"], s["prefetch_issued"]) or 0.0
        if "page_cache_bytes" in s:
            s["page_cache_hit_rate"] = _ratio(s["page_cache_bytes"], s["bytes_read"]) or 0.0
            if self.mode == "page-cache":
                self.page_cache_hit_rate = s["page_cache_hit_rate"]
        self.prediction_hit_rate = _ratio(self.predicted_hits, self.predicted)
        return self

    def since(self, earlier: "EngineStats") -> "EngineStats":
        """What happened between ``earlier`` (an older ``model.stats()`` of the same model) and this record:
        counters subtracted, rates recomputed over the window, gauges (resident bytes, settings) as now."""
        store = dict(self.store)
        for k in _STORE_COUNTERS:
            if k in store and k in earlier.store:
                store[k] = store[k] - earlier.store[k]
        d = {k: getattr(self, k) - getattr(earlier, k) for k in _COUNTERS}
        return replace(self, store=store, **d)._rates()

    def __add__(self, other: "EngineStats") -> "EngineStats":
        store = dict(other.store)
        for k in _STORE_COUNTERS:
            if k in self.store and k in other.store:
                store[k] = self.store[k] + other.store[k]
        d = {k: getattr(self, k) + getattr(other, k) for k in _COUNTERS}
        rate = self.cache_hit_rate if other.cache_hit_rate is None else other.cache_hit_rate
        return replace(other, store=store, cache_hit_rate=rate, **d)._rates()

    @classmethod
    def total(cls, windows) -> "EngineStats":
        """The sum of several windows (e.g. ``since`` records of the steps of one task)."""
        out = None
        for w in windows:
            out = w if out is None else out + w
        return out if out is not None else cls()

    def to_dict(self) -> dict:
        d = dict(self.store)
        d.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "store"})
        return d
