"""The digest schedule: "mon 09:00", "mon,thu 18:30", "daily 07:30", or a 5-field cron line."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from postroom.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SHORT_FORM = re.compile(r"^(?P<days>daily|[a-z,\-]+)\s+(?P<hour>\d{1,2}):(?P<minute>\d{2})$")


def parse_schedule(text: str, zone: ZoneInfo) -> CronTrigger:
    """Given digest.schedule, return its trigger in the site's zone, or raise ConfigError."""
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
        return CronTrigger.from_crontab(spec, timezone=zone)
    except ValueError as err:
        raise ConfigError(
            f"digest.schedule {text!r}: {err} (examples: 'mon 09:00', 'daily 07:30', "
            "'0 9 * * mon')"
        ) from None


def missed_slot(trigger: CronTrigger, last_run: datetime | None, now: datetime) -> bool:
    """Return whether a scheduled time passed since the last run (a missed digest).

    However many slots were missed, the answer is one run: digests are coalesced.
    """
    if last_run is None:
        return False
    upcoming = trigger.get_next_fire_time(None, last_run)
    return upcoming is not None and last_run < upcoming <= now
