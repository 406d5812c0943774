"""The scheduling engine: job model, shards and the apply function, the
rules of a job's life. No I/O of its own (clock, log, randomness passed in)."""

from wheelsched.engine.deps import DependencyPolicy
from wheelsched.engine.engine import (
    AckItem,
    Delivery,
    DependencyInfo,
    Engine,
    EngineConfig,
    Extension,
    ItemResult,
    RecoveryStats,
    RemoteJob,
    Subscription,
    Waits,
)
from wheelsched.engine.model import (
    FINAL_STATES,
    US,
    Defaults,
    Job,
    JobRequest,
    JobState,
    Limits,
    Misfire,
    ScheduleKind,
)
from wheelsched.sharding import shard_of

__all__ = [
    "FINAL_STATES",
    "US",
    "AckItem",
    "Defaults",
    "Delivery",
    "DependencyInfo",
    "DependencyPolicy",
    "Engine",
    "EngineConfig",
    "Extension",
    "ItemResult",
    "Job",
    "JobRequest",
    "JobState",
    "Limits",
    "Misfire",
    "RecoveryStats",
    "RemoteJob",
    "ScheduleKind",
    "Subscription",
    "Waits",
    "shard_of",
]
