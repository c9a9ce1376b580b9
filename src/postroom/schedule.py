"""The digest schedule: "mon 09:00", "mon,thu 18:30", "daily 07:30", or a cron line (5 fields,
or 6 with the seconds first, for schedules finer than a minute)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from postroom.errors import ConfigError

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SHORT_FORM = re.compile(r"^(?P<days>daily|[a-z,\-]+)\s+(?P<hour>\d{1,2}):(?P<minute>\d{2})$")
# cron numbers the days from Sunday = 0 (and 7); APScheduler 3 from Monday = 0.
CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
NUMERIC_DAYS = re.compile(r"^(?P<first>\d|\*)(?:-(?P<last>\d))?(?:/(?P<step>\d+))?$")


def check_schedule(text: str) -> None:
    """Raise ConfigError unless digest.schedule parses (what the config loader asks).

    The common short forms ("mon 09:00", "mon,thu 18:30", "daily 07:30") are checked here;
    anything else by building its trigger (APScheduler is imported only then: every command
    loads the config, few of them schedule anything).
    """
    match = SHORT_FORM.match(text.strip().lower())
    if match and int(match["hour"]) < 24 and int(match["minute"]) < 60 and (
            match["days"] == "daily" or all(d in DAYS for d in match["days"].split(","))):
        return
    parse_schedule(text, ZoneInfo("UTC"))


def parse_schedule(text: str, zone: ZoneInfo) -> CronTrigger:
    """Given digest.schedule, return its trigger in the site's zone, or raise ConfigError."""
    from apscheduler.triggers.cron import CronTrigger

    spec = text.strip().lower()
    match = SHORT_FORM.match(spec)
    try:
        if match:
            days = match["days"]
            if days != "daily" and not all(d in DAYS for d in re.split(r"[,\-]", days)):
                raise ValueError(f"unknown day in {days!r} (use mon … sun, or daily)")
            return CronTrigger(
                day_of_week="*" if days == "daily" else days,
                hour=int(match["hour"]), minute=int(match["minute"]), timezone=zone,
            )
        fields = spec.split()
        if len(fields) == 6:
            second, minute, hour, day, month, weekday = fields
            return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                               day_of_week=cron_day_names(weekday), timezone=zone)
        if len(fields) == 5:
            fields[4] = cron_day_names(fields[4])
        return CronTrigger.from_crontab(" ".join(fields), timezone=zone)
    except ValueError as err:
        raise ConfigError(
            f"digest.schedule {text!r}: {err} (examples: 'mon 09:00', 'daily 07:30', "
            "'0 9 * * mon')"
        ) from None


def cron_day_names(field: str) -> str:
    """Given a cron line's day-of-week field, return it with its day numbers as names.

    Passed on as numbers, "1-5" would mean Tuesday to Saturday to APScheduler; names mean
    the same to both. Items that are not plain numbers, ranges or steps are left as written.
    """
    names: list[str] = []
    for item in field.split(","):
        match = NUMERIC_DAYS.match(item)
        if match is None or (match["first"] == "*" and (match["last"] or not match["step"])):
            names.append(item)
            continue
        first = 0 if match["first"] == "*" else int(match["first"])
        last = int(match["last"]) if match["last"] else 6 if match["step"] else first
        if not first <= last <= 7:
            names.append(item)  # out of range: the trigger reports it
            continue
        names += [CRON_DAYS[day] for day in range(first, last + 1, int(match["step"] or 1))]
    return ",".join(dict.fromkeys(names))


def missed_slot(trigger: CronTrigger, last_run: datetime | None, now: datetime) -> bool:
    """Return whether a scheduled time passed since the last run (a missed digest).

    However many slots were missed, the answer is one run: digests are coalesced.
    """
    if last_run is None:
        return False
    # Strictly after the last run: a run at a slot's very second has taken care of it.
    upcoming = trigger.get_next_fire_time(None, last_run + timedelta(microseconds=1))
    return upcoming is not None and last_run < upcoming <= now
