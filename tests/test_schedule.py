"""digest.schedule: the short forms and cron lines, their errors, and missed slots."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from postroom.errors import ConfigError
from postroom.schedule import check_schedule, missed_slot, parse_schedule

BERLIN = ZoneInfo("Europe/Berlin")
# A Thursday: 13:00 in Berlin.
THURSDAY_NOON = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def fire_times(text: str, zone: ZoneInfo, start: datetime, count: int) -> list[datetime]:
    """Return the schedule's next `count` fire times after `start`, in the schedule's zone."""
    trigger = parse_schedule(text, zone)
    times: list[datetime] = []
    previous, now = None, start
    for _ in range(count):
        upcoming = trigger.get_next_fire_time(previous, now)
        assert upcoming is not None
        times.append(upcoming)
        previous, now = upcoming, upcoming + timedelta(seconds=1)
    return times


def local(year: int, month: int, day: int, hour: int, minute: int,
          zone: ZoneInfo = BERLIN) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone)


def test_a_weekday_and_a_time_fire_once_a_week_in_the_sites_zone() -> None:
    assert fire_times("mon 09:00", BERLIN, THURSDAY_NOON, 3) == [
        local(2026, 1, 5, 9, 0), local(2026, 1, 12, 9, 0), local(2026, 1, 19, 9, 0)]


def test_daily_fires_every_day_at_the_local_time_across_a_dst_change() -> None:
    # Berlin moves to summer time on 2026-03-29: 07:30 local is 06:30 UTC, then 05:30 UTC.
    times = fire_times("daily 07:30", BERLIN, datetime(2026, 3, 27, 12, 0, tzinfo=UTC), 3)
    assert times == [local(2026, 3, 28, 7, 30), local(2026, 3, 29, 7, 30),
                     local(2026, 3, 30, 7, 30)]
    assert [t.astimezone(UTC).hour for t in times] == [6, 5, 5]


def test_several_days_share_one_time() -> None:
    # Thursday 13:00 in Berlin: today's 18:30 is still to come.
    assert fire_times("mon,thu 18:30", BERLIN, THURSDAY_NOON, 3) == [
        local(2026, 1, 1, 18, 30), local(2026, 1, 5, 18, 30), local(2026, 1, 8, 18, 30)]


@pytest.mark.parametrize("text", ["MON 09:00", "  mon 9:00 ", "Mon 09:00"])
def test_the_short_form_ignores_case_spacing_and_a_one_digit_hour(text: str) -> None:
    assert fire_times(text, BERLIN, THURSDAY_NOON, 1) == [local(2026, 1, 5, 9, 0)]


def test_a_day_range_in_the_short_form() -> None:
    # From Thursday 13:00: Friday, then Monday (the weekend is skipped).
    assert fire_times("mon-fri 08:00", BERLIN, THURSDAY_NOON, 2) == [
        local(2026, 1, 2, 8, 0), local(2026, 1, 5, 8, 0)]


def test_a_cron_line_with_a_day_name() -> None:
    assert fire_times("0 9 * * mon", BERLIN, THURSDAY_NOON, 2) == [
        local(2026, 1, 5, 9, 0), local(2026, 1, 12, 9, 0)]


def test_a_cron_line_every_fifteen_minutes() -> None:
    assert fire_times("*/15 * * * *", UTC, THURSDAY_NOON, 3) == [
        datetime(2026, 1, 1, 12, 0, tzinfo=UTC), datetime(2026, 1, 1, 12, 15, tzinfo=UTC),
        datetime(2026, 1, 1, 12, 30, tzinfo=UTC)]


def test_a_cron_line_with_seconds_first() -> None:
    assert fire_times("*/20 * * * * *", UTC, THURSDAY_NOON, 3) == [
        datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC), datetime(2026, 1, 1, 12, 0, 20, tzinfo=UTC),
        datetime(2026, 1, 1, 12, 0, 40, tzinfo=UTC)]
    assert fire_times("30 0 9 * * 1", BERLIN, THURSDAY_NOON, 1) == [
        local(2026, 1, 5, 9, 0).replace(second=30)]


@pytest.mark.parametrize(("line", "weekdays"), [
    # cron counts days from Sunday = 0 (7 is Sunday too): "1" is Monday, as in crontab(5).
    ("0 9 * * 1", ["Mon", "Mon"]),
    ("0 9 * * 0", ["Sun", "Sun"]),
    ("0 9 * * 7", ["Sun", "Sun"]),
    ("0 9 * * 1-5", ["Fri", "Mon", "Tue", "Wed", "Thu", "Fri", "Mon"]),
    ("0 9 * * 6,0", ["Sat", "Sun", "Sat"]),
    ("0 9 * * */2", ["Sat", "Sun", "Tue", "Thu"]),
])
def test_a_cron_line_counts_weekdays_as_cron_does(line: str, weekdays: list[str]) -> None:
    times = fire_times(line, UTC, THURSDAY_NOON, len(weekdays))
    assert [f"{t:%a}" for t in times] == weekdays
    assert all((t.hour, t.minute) == (9, 0) for t in times)


@pytest.mark.parametrize("text", [
    "", "funday 09:00", "mon 25:00", "mon 09:60", "mon 9", "daily,mon 09:00",
    "every monday", "0 9 * *", "0 0 9 * * * *", "0 9 * * 9", "61 * * * *",
])
def test_a_bad_schedule_is_a_config_error_naming_the_key(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_schedule(text, BERLIN)
    message = str(caught.value)
    assert message.startswith("digest.schedule ")
    assert repr(text) in message
    assert "mon 09:00" in message  # an example of what works


# ---- missed slots ------------------------------------------------------------------------

DAILY_NINE = parse_schedule("daily 09:00", UTC)
SLOT = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def test_no_slot_is_missed_on_the_first_run() -> None:
    assert not missed_slot(DAILY_NINE, None, SLOT + timedelta(days=30))


def test_a_slot_that_passed_since_the_last_run_was_missed() -> None:
    assert missed_slot(DAILY_NINE, SLOT - timedelta(hours=1), SLOT + timedelta(minutes=5))


def test_the_slot_itself_counts_as_passed() -> None:
    assert missed_slot(DAILY_NINE, SLOT - timedelta(hours=1), SLOT)


def test_no_slot_passed_since_the_last_run() -> None:
    assert not missed_slot(DAILY_NINE, SLOT + timedelta(minutes=1), SLOT + timedelta(hours=5))
    assert not missed_slot(DAILY_NINE, SLOT - timedelta(hours=2), SLOT - timedelta(hours=1))


def test_many_missed_slots_are_one_answer() -> None:
    assert missed_slot(DAILY_NINE, SLOT - timedelta(days=10), SLOT + timedelta(hours=1)) is True


def test_a_run_at_the_slots_very_second_covers_that_slot_only() -> None:
    # The digest ran exactly at 09:00:00; nothing is missed until the next day's slot.
    assert not missed_slot(DAILY_NINE, SLOT, SLOT + timedelta(hours=23))
    assert missed_slot(DAILY_NINE, SLOT, SLOT + timedelta(days=2))


def test_missed_slots_follow_the_sites_zone() -> None:
    # 09:00 in Berlin is 08:00 UTC in winter: a run at 08:30 UTC came after the slot.
    berlin_nine = parse_schedule("daily 09:00", BERLIN)
    assert missed_slot(berlin_nine, SLOT - timedelta(hours=2), SLOT - timedelta(minutes=30))
    assert not missed_slot(berlin_nine, SLOT - timedelta(minutes=30), SLOT)


@pytest.mark.parametrize("text", [
    "mon 09:00", "daily 07:30", "mon,thu 18:30", "MON 9:05", "sun 23:59", "mon 24:00",
    "mon 09:60", "funday 09:00", "mon-fri 08:00", "fri-mon 08:00", "mon,,tue 08:00",
    "daily 7:3", "0 9 * * mon", "*/5 * * * * *", "61 * * * *", "",
])
def test_the_config_check_refuses_exactly_what_the_scheduler_refuses(text: str) -> None:
    # check_schedule decides the short forms without APScheduler: it must agree with it.
    def refused(check: Callable[[], object]) -> bool:
        try:
            check()
        except ConfigError:
            return True
        return False

    assert refused(lambda: check_schedule(text)) == refused(
        lambda: parse_schedule(text, ZoneInfo("UTC")))
