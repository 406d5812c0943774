"""Cron schedules in IANA time zones, on top of ``cronsim``.

Times go in and out as integer microseconds since the Unix epoch (UTC).

DST rule (Debian cron's, which cronsim implements):
- Spring forward (a gap): an occurrence whose local time does not exist runs
  at the first valid local time after the gap (``30 2 * * *`` in
  Europe/Paris on the last Sunday of March runs at 03:00 CEST).
- Fall back (an overlap): a job with a fixed hour runs once, at the first of
  the two instants (``30 2 * * *`` runs at 02:30 CEST, not again at 02:30
  CET); a job with a wildcard or stepped hour field (``*/30 * * * *``) runs
  in both, because each instant matches its hour field.

Misfires: an occurrence that could not fire within ``threshold`` of its
time (the node was down, or the previous execution was still running —
executions of one job never overlap) is a misfire. ``plan`` applies the
job's policy and says how many occurrences misfired; the engine adds them to
the job's ``misfires`` counter, so none is silent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Counting missed occurrences after a long outage stops here; the count is
# then a lower bound (an every-second job down for a day would otherwise
# cost 86,400 iterations).
MAX_COUNTED_MISFIRES = 100_000
MAX_EXPRESSION_CHARS = 256

FIRE_ONCE, FIRE_ALL, SKIP = 1, 2, 3  # = model.Misfire


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | type[UTC]:
    if not name or name == "UTC":
        return UTC
    if len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _to_dt(us: int, tz) -> datetime:
    return (_EPOCH + timedelta(microseconds=us)).astimezone(tz)


def _to_us(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * US + delta.microseconds


def validate(expr: str, time_zone: str) -> None:
    """Raise ValueError with a readable reason if the schedule is not usable."""
    if not expr or len(expr) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression must be 1-{MAX_EXPRESSION_CHARS} characters")
    tz = _zone(time_zone)
    try:
        it = CronSim(expr, datetime(2000, 1, 1, tzinfo=tz))
        next(it)
    except CronSimError as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {exc}") from None
    except StopIteration:
        raise ValueError(f"cron expression {expr!r} never fires") from None


def next_after(expr: str, time_zone: str, after_us: int) -> int:
    """The first occurrence strictly after ``after_us``."""
    it = CronSim(expr, _to_dt(after_us, _zone(time_zone)))
    return _to_us(next(it))


def plan(expr: str, time_zone: str, policy: int, occurrence_us: int, now_us: int,
         threshold_us: int) -> tuple[int, int, int]:
    """Decide the next execution given its nominal ``occurrence_us``.

    Returns ``(fire_at_us, nominal_us, misfired)``: fire at ``fire_at_us``
    (may be ≤ now: fire at once) an execution whose nominal time is
    ``nominal_us``; add ``misfired`` to the job's misfire counter.
    """
    if occurrence_us >= now_us - threshold_us:
        return occurrence_us, occurrence_us, 0  # on time (or only slightly late)
    if policy == FIRE_ALL:
        # Each late occurrence fires, back to back, and each counts.
        return now_us, occurrence_us, 1
    tz = _zone(time_zone)
    it = CronSim(expr, _to_dt(occurrence_us, tz))
    missed, last, nxt = 1, occurrence_us, occurrence_us
    for dt in it:
        nxt = _to_us(dt)
        if nxt > now_us or missed >= MAX_COUNTED_MISFIRES:
            break
        missed += 1
        last = nxt
    if nxt <= now_us:  # stopped counting early: find the next future occurrence directly
        nxt = next_after(expr, time_zone, now_us)
    if policy == SKIP:
        return nxt, nxt, missed
    # FIRE_ONCE: one execution now standing for the latest missed occurrence.
    return now_us, last, missed
