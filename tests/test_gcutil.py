"""Untracked job records (wheelsched.gcutil): the C helpers and their
pure-Python twins build the same records, refuse the same bad input, and the
C ones leave nothing for the cyclic collector and no reference behind."""

from __future__ import annotations

import gc
import importlib
import sys
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st
from impl_helpers import check_c_chosen

from wheelsched import gcutil
from wheelsched.engine.model import STATUS_START, Job

try:
    from wheelsched import _gc_c
except ImportError:  # test_c_helpers_are_built fails unless the twins were asked for
    _gc_c = None

IMPLS = [
    pytest.param((gcutil._untracked_py, gcutil._with_fields_py), id="py"),
    pytest.param(
        (getattr(_gc_c, "untracked", None), getattr(_gc_c, "with_fields", None)),
        id="c",
        marks=pytest.mark.skipif(_gc_c is None, reason="C extension not built"),
    ),
]


class Rec(NamedTuple):
    a: object
    b: object
    c: object
    d: object


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def job_values() -> list:
    return ["id-1", "q", b"payload", 0, 10, "", "", 1, 0, 3, 1, 2, 3, 0.5, 30, 7, 100,
            1, 0, 555, 555, "", 0, 0, 0, 0]


def test_c_helpers_are_built():
    check_c_chosen(gcutil, _gc_c, "untrack", "untracked", "with_fields")


def test_pure_python_env_forces_twins(monkeypatch):
    monkeypatch.setenv("WHEELSCHED_PURE_PYTHON", "1")
    try:
        mod = importlib.reload(gcutil)
        assert mod.IMPLEMENTATION == "python"
        assert mod.with_fields is mod._with_fields_py
    finally:
        monkeypatch.undo()
        importlib.reload(gcutil)


def test_untracked_builds_the_record(impl):
    untracked, _ = impl
    values = job_values()
    for given_values in (values, tuple(values)):
        job = untracked(Job, given_values)
        assert type(job) is Job
        assert job == tuple.__new__(Job, values)
        assert job.state == 1 and job.next_us == 555
    assert untracked(Rec, iter([1, 2, 3, 4])) == (1, 2, 3, 4)


def test_c_records_are_untracked():
    if _gc_c is None:
        pytest.skip("C extension not built")
    job = _gc_c.untracked(Job, job_values())
    assert not gc.is_tracked(job)
    changed = _gc_c.with_fields(job, STATUS_START, [2, "id-1", 3, 1, 0, 555, "", 999, 0, 0, 0], 2)
    assert not gc.is_tracked(changed)
    assert changed.state == 3 and changed.finished_us == 999 and changed[:STATUS_START] == job[:STATUS_START]


def test_with_fields_as_an_update_op_uses_it(impl):
    """UPDATE: the status fields from op[2:]; DISPATCH: a run of three."""
    untracked, with_fields = impl
    job = untracked(Job, job_values())
    status = [3, 1, 0, 555, "boom", 999, 1, 2, 3]
    updated = with_fields(job, STATUS_START, [2, "id-1", *status], 2)
    assert type(updated) is Job
    assert list(updated) == job_values()[:STATUS_START] + status
    leased = with_fields(job, STATUS_START, (2, 4, 12345))
    assert (leased.state, leased.attempt, leased.next_us) == (2, 4, 12345)
    assert leased[:STATUS_START] == job[:STATUS_START] and leased[STATUS_START + 3:] == job[STATUS_START + 3:]
    assert job == tuple(job_values())  # the original is untouched


@given(
    old=st.lists(st.integers() | st.text(max_size=3), max_size=8),
    start=st.integers(-2, 9),
    values=st.lists(st.integers(), max_size=9),
    offset=st.integers(-2, 9),
)
def test_with_fields_matches_slicing_and_refuses_what_does_not_fit(old, start, values, offset):
    """Both implementations agree with the slicing definition, and refuse the
    same inputs (nothing is built then)."""
    record = tuple(old)
    k = len(values) - offset
    fits = offset >= 0 and k >= 0 and start >= 0 and start + k <= len(record)
    impls = [gcutil._with_fields_py] + ([_gc_c.with_fields] if _gc_c is not None else [])
    for with_fields in impls:
        if fits:
            out = with_fields(record, start, values, offset)
            assert out == record[:start] + tuple(values[offset:]) + record[start + k:]
            assert type(out) is tuple
        else:
            with pytest.raises(IndexError):
                with_fields(record, start, values, offset)


def test_bad_arguments_raise_type_errors(impl):
    untracked, with_fields = impl
    with pytest.raises(TypeError):
        untracked(int, [1])
    with pytest.raises(TypeError):
        untracked("Job", [1])
    with pytest.raises(TypeError):
        untracked(Rec, 5)
    with pytest.raises(TypeError):
        with_fields([1, 2], 0, [3])
    with pytest.raises(TypeError):
        with_fields((1, 2), 0, 3)


@pytest.mark.skipif(not hasattr(sys, "getrefcount"), reason="needs reference counts")
def test_c_helpers_hold_no_stray_references():
    """Each item is held once per record and let go with it."""
    if _gc_c is None:
        pytest.skip("C extension not built")
    item, other = object(), object()
    base = sys.getrefcount(item), sys.getrefcount(other)
    recs = [_gc_c.untracked(Rec, [item, item, other, item]) for _ in range(100)]
    moved = [_gc_c.with_fields(r, 1, [other, other], 0) for r in recs]
    assert sys.getrefcount(item) == base[0] + 100 * 3 + 100 * 2
    assert sys.getrefcount(other) == base[1] + 100 + 100 * 2
    del recs, moved
    assert (sys.getrefcount(item), sys.getrefcount(other)) == base
