"""Debezium's calendar: days and microseconds since 1970-01-01 in the proleptic
Gregorian calendar (any year), and its +/-infinity sentinels; shared by the sources that
write these values and the sinks that read them back."""

from __future__ import annotations

import re

INT64_MAX = 9_223_372_036_854_775_807
INT64_MIN = -9_223_372_036_854_775_808
DAY_US = 86_400_000_000
# Debezium's +/-infinity for timestamps: the Postgres JDBC driver's sentinels (in ms)
TS_INFINITY_MS = 9_223_372_036_825_200
TS_NEG_INFINITY_MS = -9_223_372_036_832_400
# ... and for dates in its stream: Postgres's own DATEVAL_NOEND/NOBEGIN (days since
# 2000-01-01, int32) moved to 1970 in int32 arithmetic
DATE_INFINITY = -2_147_472_692
DATE_NEG_INFINITY = -2_147_472_691


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (any year).

    Python's ``//`` floors, so the era is ``y // 400`` for every year (the C original's
    ``y - 399`` correction for negative years would put BC dates a day off)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(z: int) -> tuple[int, int, int]:
    """The inverse of :func:`days_from_civil` (floor division, as there)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d


_ISO_UTC = re.compile(r"^([+-]?\d+)-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$")


def infinite(n: int, ms: bool = False) -> int:
    """+1 / -1 for Debezium's +/-infinity timestamp sentinels (in ms or us; int64 max/min
    too), else 0."""
    if n == INT64_MAX or n == (TS_INFINITY_MS if ms else TS_INFINITY_MS * 1000):
        return 1
    if n == INT64_MIN or n == (TS_NEG_INFINITY_MS if ms else TS_NEG_INFINITY_MS * 1000):
        return -1
    return 0


def zoned_us(s: str) -> int:
    """Debezium's ZonedTimestamp text ('...Z', signed years) -> us since the epoch;
    'infinity'/'-infinity' -> int64 max/min."""
    if s in ("infinity", "-infinity"):
        return INT64_MAX if s == "infinity" else INT64_MIN
    m = _ISO_UTC.match(s)
    if m is None:
        raise ValueError(f"not a ZonedTimestamp in UTC: {s!r}")
    y, mo, d, hh, mi, ss, frac = m.groups()
    days = days_from_civil(int(y), int(mo), int(d))
    us = int((frac or "").ljust(6, "0")[:6])
    return days * DAY_US + ((int(hh) * 60 + int(mi)) * 60 + int(ss)) * 1_000_000 + us
