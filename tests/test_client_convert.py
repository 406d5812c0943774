"""Unit tests of the client's conversions and argument validation (no server)."""

from __future__ import annotations

import gc
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from wheelsched import errors, gcutil
from wheelsched.client import Job, JobSpec, job_from_proto
from wheelsched.client import _convert as cv
from wheelsched.client.cli import format_job, format_table, parse_due
from wheelsched.v1 import job_pb2, worker_pb2


class TestTimes:
    def test_naive_datetime_is_utc(self) -> None:
        naive = datetime(2030, 1, 2, 3, 4, 5, 678901)
        aware = naive.replace(tzinfo=UTC)
        assert cv.to_timestamp(naive) == cv.to_timestamp(aware)
        assert cv.from_timestamp(cv.to_timestamp(naive)) == aware

    def test_aware_datetime_in_other_zone(self) -> None:
        paris = datetime(2030, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=1)))
        assert cv.from_timestamp(cv.to_timestamp(paris)) == datetime(2030, 1, 1, 9, 0, tzinfo=UTC)

    def test_unix_seconds_float_and_int(self) -> None:
        assert cv.to_timestamp(1_700_000_000) == timestamp_pb2.Timestamp(seconds=1_700_000_000)
        t = cv.to_timestamp(1_700_000_000.000001)
        assert (t.seconds, t.nanos) == (1_700_000_000, 1000)  # rounded, not truncated

    def test_before_epoch_keeps_nanos_positive(self) -> None:
        t = cv.to_timestamp(-1.5)
        assert (t.seconds, t.nanos) == (-2, 500_000_000)
        assert cv.from_timestamp(t) == cv.EPOCH - timedelta(seconds=1.5)

    @pytest.mark.parametrize("bad", ["2030-01-01", None, True, float("nan"), float("inf")])
    def test_bad_time(self, bad: object) -> None:
        with pytest.raises(errors.InvalidArgument) as ei:
            cv.to_timestamp(bad, "due")  # type: ignore[arg-type]
        assert ei.value.field == "due"

    def test_durations(self) -> None:
        assert cv.to_duration(1.5, "d") == duration_pb2.Duration(seconds=1, nanos=500_000_000)
        assert cv.to_duration(timedelta(minutes=2, microseconds=3), "d") == duration_pb2.Duration(
            seconds=120, nanos=3000
        )
        assert cv.from_duration(cv.to_duration(90, "d")) == timedelta(seconds=90)

    @pytest.mark.parametrize("bad", [-1, timedelta(seconds=-1), "5s", float("nan")])
    def test_bad_durations(self, bad: object) -> None:
        with pytest.raises(errors.InvalidArgument) as ei:
            cv.to_duration(bad, "delay")  # type: ignore[arg-type]
        assert ei.value.field == "delay"


class TestJobSpec:
    def test_exactly_one_schedule(self) -> None:
        with pytest.raises(ValueError, match="exactly one of due, delay or cron"):
            JobSpec("q")
        with pytest.raises(ValueError, match="got due and delay"):
            JobSpec("q", due=1, delay=2)
        with pytest.raises(ValueError, match="got delay and cron"):
            JobSpec("q", delay=1, cron="* * * * *")

    def test_delay_spec(self) -> None:
        p = JobSpec("q", "text", id="a", delay=timedelta(seconds=90), priority=5).to_proto()
        assert p.id == "a" and p.queue == "q" and p.payload == b"text" and p.priority == 5
        assert p.schedule.WhichOneof("when") == "delay"
        assert p.schedule.delay.seconds == 90
        assert not p.HasField("retry_policy") and not p.HasField("lease_timeout")

    def test_cron_spec(self) -> None:
        p = JobSpec("q", cron="0 9 * * *", tz="Europe/Paris", misfire="fire_all").to_proto()
        assert p.schedule.cron.expression == "0 9 * * *"
        assert p.schedule.cron.time_zone == "Europe/Paris"
        assert p.schedule.cron.misfire_policy == job_pb2.FIRE_ALL

    def test_retry_and_lease(self) -> None:
        p = JobSpec(
            "q",
            due=datetime(2030, 1, 1),
            max_attempts=3,
            min_backoff=0.5,
            max_backoff=timedelta(minutes=5),
            max_doublings=4,
            jitter=0.0,
            lease_timeout=12,
        ).to_proto()
        rp = p.retry_policy
        assert rp.max_attempts == 3 and rp.max_doublings == 4
        assert rp.HasField("jitter") and rp.jitter == 0.0  # explicit 0 survives (optional field)
        assert rp.min_backoff.nanos == 500_000_000 and rp.max_backoff.seconds == 300
        assert p.lease_timeout.seconds == 12

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"tz": "UTC", "delay": 1}, "tz"),
            ({"misfire": "skip", "delay": 1}, "misfire"),
            ({"misfire": "later", "cron": "* * * * *"}, "misfire"),
            ({"cron": "  "}, "cron"),
            ({"delay": 1, "max_attempts": 0}, "max_attempts"),
            ({"delay": 1, "max_doublings": -1}, "max_doublings"),
            ({"delay": 1, "jitter": 1.5}, "jitter"),
            ({"delay": 1, "priority": 2**31}, "priority"),
            ({"delay": 1, "priority": "high"}, "priority"),
            ({"delay": 1, "id": ""}, "id"),
            ({"delay": -1}, "delay"),
            ({"delay": 1, "lease_timeout": -3}, "lease_timeout"),
        ],
    )
    def test_invalid(self, kwargs: dict, field: str) -> None:
        with pytest.raises(errors.InvalidArgument) as ei:
            JobSpec("q", **kwargs)
        assert ei.value.field == field
        assert isinstance(ei.value, ValueError)

    def test_queue_required(self) -> None:
        with pytest.raises(errors.InvalidArgument, match="queue"):
            JobSpec("", delay=1)
        with pytest.raises(errors.InvalidArgument, match="queue"):
            cv.as_spec({"delay": 1})

    def test_from_mapping(self) -> None:
        assert cv.as_spec({"queue": "q", "delay": 3}) == JobSpec("q", delay=3)
        with pytest.raises(errors.InvalidArgument, match="unknown keys"):
            cv.as_spec({"queue": "q", "delay": 3, "dealy": 4})

    def test_misfire_spelling(self) -> None:
        p = JobSpec("q", cron="* * * * *", misfire="FIRE-ONCE").to_proto()
        assert p.schedule.cron.misfire_policy == job_pb2.FIRE_ONCE


def _full_proto() -> job_pb2.Job:
    p = JobSpec(
        "emails", b"\xff\x00", id="j1", cron="0 9 * * *", tz="Europe/Paris", misfire="skip",
        max_attempts=4, min_backoff=1, lease_timeout=30,
    ).to_proto()  # fmt: skip
    p.state = job_pb2.DISPATCHED
    p.attempt = 2
    p.last_error = "RuntimeError('boom')"
    p.next_fire_time.CopyFrom(cv.to_timestamp(1_700_000_000.25))
    p.create_time.CopyFrom(cv.to_timestamp(1_600_000_000))
    p.executions, p.misfires, p.dead_executions, p.shard, p.epoch = 10, 2, 1, 17, 99
    return p


class TestJobFromProto:
    def test_all_fields(self) -> None:
        job = job_from_proto(_full_proto())
        assert isinstance(job, Job)
        assert (job.id, job.queue, job.state, job.attempt) == ("j1", "emails", "DISPATCHED", 2)
        assert job.payload == b"\xff\x00"
        assert job.next_fire_time == datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)
        assert job.create_time == datetime.fromtimestamp(1_600_000_000, UTC)
        assert job.finish_time is None
        assert (job.cron, job.tz, job.misfire) == ("0 9 * * *", "Europe/Paris", "skip")
        assert job.due is None and job.delay is None
        assert (job.executions, job.misfires, job.dead_executions) == (10, 2, 1)
        assert (job.shard, job.epoch) == (17, 99)
        assert job.max_attempts == 4 and job.min_backoff == timedelta(seconds=1)
        assert job.max_backoff is None and job.max_doublings is None and job.jitter is None
        assert job.lease_timeout == timedelta(seconds=30)
        assert job.proto is not None and job.proto.id == "j1"
        assert not job.done
        with pytest.raises(AttributeError):
            job.state = "DEAD"  # type: ignore[misc]

    def test_defaults_and_unknown_state(self) -> None:
        job = job_from_proto(job_pb2.Job(id="x", queue="q", state=42))
        assert job.state == "JOB_STATE_42"
        assert job.next_fire_time is None and job.max_attempts is None and job.cron is None

    def test_cron_defaults(self) -> None:
        p = job_pb2.Job(id="x", queue="q", state=job_pb2.CANCELLED)
        p.schedule.cron.expression = "* * * * *"
        job = job_from_proto(p)
        assert (job.tz, job.misfire, job.done) == ("UTC", "fire_once", True)

    def test_to_dict_is_json(self) -> None:
        d = job_from_proto(_full_proto()).to_dict()
        json.dumps(d)
        assert d["next_fire_time"] == "2023-11-14T22:13:20.250000Z"
        assert d["lease_timeout"] == 30.0
        assert d["payload"] is None and d["payload_base64"] == "/wA="
        assert "proto" not in d
        d2 = job_from_proto(job_pb2.Job(id="x", payload=b"hi")).to_dict()
        assert d2["payload"] == "hi"

    def test_equality_ignores_proto(self) -> None:
        assert job_from_proto(_full_proto()) == job_from_proto(_full_proto())


def test_states() -> None:
    assert cv.state_value("scheduled") == job_pb2.SCHEDULED
    assert cv.state_value(job_pb2.DEAD) == job_pb2.DEAD
    with pytest.raises(errors.InvalidArgument):
        cv.state_value("RUNNING")
    assert cv.state_name(job_pb2.SUCCEEDED) == "SUCCEEDED"
    assert cv.view_value("FULL") == job_pb2.FULL
    with pytest.raises(errors.InvalidArgument):
        cv.view_value("everything")


def test_delivery_from_proto() -> None:
    now = datetime.now(UTC)
    d = worker_pb2.Dispatch(job_id="j", queue="q", payload=b"p", attempt=3, epoch=5, shard=1)
    d.due_time.CopyFrom(cv.to_timestamp(now - timedelta(seconds=1)))
    d.lease_deadline.CopyFrom(cv.to_timestamp(now + timedelta(seconds=30)))
    out = cv.delivery_from_proto(d, now)
    assert (out.job_id, out.attempt, out.epoch, out.shard, out.payload) == ("j", 3, 5, 1, b"p")
    assert out.received_at - out.due_time == timedelta(seconds=1)
    assert out.lease_deadline - now == timedelta(seconds=30)


def test_delivery_from_proto_fields_unset_and_set() -> None:
    now = datetime.now(UTC)
    bare = cv.delivery_from_proto(worker_pb2.Dispatch(job_id="j", queue="q"), now)
    assert (bare.due_time, bare.lease_deadline, bare.lease_timeout) == (None, None, None)
    assert (bare.payload, bare.attempt, bare.priority, bare.received_at) == (b"", 0, 0, now)
    d = worker_pb2.Dispatch(job_id="j", queue="q", priority=-7)
    d.due_time.seconds, d.due_time.nanos = -2, 999_999_999  # before the epoch; sub-µs cut off
    d.lease_timeout.seconds, d.lease_timeout.nanos = 90, 1_500
    out = cv.delivery_from_proto(d, now)
    assert out.due_time == datetime(1969, 12, 31, 23, 59, 58, 999_999, tzinfo=UTC)
    assert out.lease_timeout == timedelta(seconds=90, microseconds=1)
    assert out.priority == -7
    assert out == cv.Delivery("j", "q", b"", 0, 0, 0, out.due_time, None, out.lease_timeout, -7, now)
    with pytest.raises(AttributeError):
        out.attempt = 2  # type: ignore[misc]
    # one per job a worker receives, holding only atoms: the collector never walks them
    if gcutil.IMPLEMENTATION == "c":
        assert not gc.is_tracked(out)


class TestCliHelpers:
    def test_parse_due(self) -> None:
        assert parse_due("1700000000.5") == 1_700_000_000.5
        assert parse_due("2030-01-01T09:00:00Z") == datetime(2030, 1, 1, 9, tzinfo=UTC)
        assert parse_due("2030-01-01 09:00") == datetime(2030, 1, 1, 9)
        with pytest.raises(errors.InvalidArgument):
            parse_due("tomorrow")

    def test_format_job_and_table(self) -> None:
        job = job_from_proto(_full_proto())
        text = format_job(job)
        assert "id:" in text and "j1" in text and "DISPATCHED" in text
        assert "2023-11-14T22:13:20.250Z" in text
        assert "base64:/wA=" in text
        table = format_table([job, job_from_proto(job_pb2.Job(id="k", queue="q", state=1))])
        lines = table.splitlines()
        assert lines[0].split()[:3] == ["ID", "QUEUE", "STATE"]
        assert "cron 0 9 * * * Europe/Paris" in lines[1]
        assert lines[-1] == "(2 jobs)"
