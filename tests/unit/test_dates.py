"""Relative dates resolved against the day a message was written, in English and Chinese."""

from __future__ import annotations

from datetime import date

import pytest

from nodes.dates import readable_date, relative_dates, resolve_relative_dates

MONDAY = "2023-05-08T13:56:00+00:00"  # a Monday


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I went to the support group yesterday.", "yesterday (7 May 2023)"),
        ("We met the day before yesterday.", "the day before yesterday (6 May 2023)"),
        ("Last Friday I ran a charity race.", "Last Friday (5 May 2023)"),
        ("The race is next Sunday.", "next Sunday (21 May 2023)"),
        ("I gave a talk last week.", "last week (1-7 May 2023)"),
        ("This past weekend was busy.", "This past weekend (6-7 May 2023)"),
        ("We go camping next month.", "next month (June 2023)"),
        ("I painted it last year.", "last year (2022)"),
        ("I met them two days ago.", "two days ago (6 May 2023)"),
        ("She moved here 3 weeks ago.", "3 weeks ago (17-23 April 2023)"),
        ("My birthday was 10 years ago.", "10 years ago (2013)"),
        ("I fly out in a couple of days.", "in a couple of days (10 May 2023)"),
        ("The exam is in two weeks.", "in two weeks (22-28 May 2023)"),
        ("我昨天去了西湖。", "昨天（2023年5月7日）"),
        ("上周去了杭州。", "上周（2023年5月1日至7日）"),
        ("上周五开了会。", "上周五（2023年5月5日）"),
        ("下个月搬家。", "下个月（2023年6月）"),
        ("三天前买了书。", "三天前（2023年5月5日）"),
        ("去年学会了游泳。", "去年（2022年）"),
        ("两周后出发。", "两周后（2023年5月22日至28日）"),
        ("上周末在家。", "上周末（2023年5月6日至7日）"),
    ],
)
def test_relative_expressions_are_followed_by_the_dates_they_mean(text: str, expected: str) -> None:
    assert expected in resolve_relative_dates(text, MONDAY)


def test_month_and_year_boundaries_roll_over() -> None:
    new_year = "2024-01-02T09:00:00"
    assert resolve_relative_dates("last month", new_year) == "last month (December 2023)"
    assert resolve_relative_dates("last week", "2024-01-03") == "last week (25-31 December 2023)"
    assert resolve_relative_dates("next week", "2023-12-27") == ("next week (1-7 January 2024)")
    assert resolve_relative_dates("this week", "2023-05-31") == ("this week (29 May - 4 June 2023)")
    assert resolve_relative_dates("上个月", new_year) == "上个月（2023年12月）"
    assert resolve_relative_dates("两周前", "2023-06-05") == "两周前（2023年5月22日至28日）"


def test_what_is_not_a_date_relative_to_today_is_left_alone() -> None:
    for text in (
        "It was the last week of June.",
        "We talked about the next month's budget.",
        "A few days ago, maybe.",
        "Recently I started running.",
        "I like Sundays.",
    ):
        assert resolve_relative_dates(text, MONDAY) == text


def test_without_a_date_nothing_is_resolved_and_resolving_twice_changes_nothing() -> None:
    text = "I went there yesterday and 上周 too."
    assert resolve_relative_dates(text, None) == text
    assert resolve_relative_dates(text, "not a date") == text
    once = resolve_relative_dates(text, MONDAY)
    assert once == "I went there yesterday (7 May 2023) and 上周（2023年5月1日至7日） too."
    assert resolve_relative_dates(once, MONDAY) == once


def test_found_expressions_carry_their_span_and_days() -> None:
    [found] = relative_dates("see you next weekend!", date(2023, 5, 8))
    assert (found.phrase, found.first, found.last, found.precision) == (
        "next weekend",
        date(2023, 5, 20),
        date(2023, 5, 21),
        "weekend",
    )
    assert readable_date(date(2023, 5, 8)) == "8 May 2023"
    assert readable_date(date(2023, 5, 8), chinese=True) == "2023年5月8日"
