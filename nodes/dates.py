"""Dates in text: readable forms, and relative expressions resolved against a message's date."""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

__all__ = [
    "RelativeDate",
    "readable_date",
    "readable_range",
    "relative_dates",
    "resolve_relative_dates",
]

Precision = Literal["day", "week", "weekend", "month", "year"]


@dataclass(frozen=True, slots=True)
class RelativeDate:
    """A relative expression found in a text, and the days it stands for."""

    start: int
    end: int
    """The expression's span in the text."""
    phrase: str
    first: date
    last: date
    """The days it means, both included (the same day for a day)."""
    precision: Precision
    chinese: bool
    """Written in Chinese (its resolution is written the Chinese way)."""


def readable_date(day: date, *, chinese: bool = False) -> str:
    """A date as people write it: ``"7 May 2023"``, or ``"2023年5月7日"``.

    Args:
        day: The date.
        chinese: Write it the Chinese way.

    Returns:
        The date in words and numbers, never only digits and dashes.
    """
    if chinese:
        return f"{day.year}年{day.month}月{day.day}日"
    return f"{day.day} {calendar.month_name[day.month]} {day.year}"


def readable_range(first: date, last: date, precision: Precision, *, chinese: bool = False) -> str:
    """The days a relative expression stands for, written as briefly as they stay exact.

    Args:
        first: The first day.
        last: The last day (``first`` for a single day).
        precision: What the expression named: a day, a week, a weekend, a month or a year.
        chinese: Write it the Chinese way.

    Returns:
        ``"7 May 2023"``, ``"1-7 May 2023"``, ``"29 May - 4 June 2023"``, ``"April 2023"``,
        ``"2022"`` (or ``"2023年5月1日至7日"``, ``"2023年4月"``, ``"2022年"``).
    """
    if precision == "year":
        return f"{first.year}年" if chinese else str(first.year)
    if precision == "month":
        if chinese:
            return f"{first.year}年{first.month}月"
        return f"{calendar.month_name[first.month]} {first.year}"
    if first == last:
        return readable_date(first, chinese=chinese)
    if chinese:
        tail = (
            f"{last.day}日"
            if (first.year, first.month) == (last.year, last.month)
            else (
                f"{last.month}月{last.day}日"
                if first.year == last.year
                else readable_date(last, chinese=True)
            )
        )
        return f"{readable_date(first, chinese=True)}至{tail}"
    if (first.year, first.month) == (last.year, last.month):
        return f"{first.day}-{last.day} {calendar.month_name[last.month]} {last.year}"
    if first.year == last.year:
        return f"{first.day} {calendar.month_name[first.month]} - {readable_date(last)}"
    return f"{readable_date(first)} - {readable_date(last)}"


# -- finding relative expressions --------------------------------------------------------------

_EN_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "couple of": 2,
    "a couple of": 2,
}  # fmt: skip
_ZH_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7,
              "八": 8, "九": 9}  # fmt: skip
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ZH_WEEKDAYS = "一二三四五六日"
_EN_DAYS = {
    "today": 0, "tonight": 0, "this morning": 0, "this afternoon": 0, "this evening": 0,
    "yesterday": -1, "last night": -1, "the day before yesterday": -2, "tomorrow": 1,
    "the day after tomorrow": 2,
}  # fmt: skip
_ZH_DAYS = {"今天": 0, "今晚": 0, "今早": 0, "昨天": -1, "昨晚": -1, "前天": -2, "大前天": -3,
            "明天": 1, "后天": 2, "大后天": 3}  # fmt: skip
_SHIFT = {"last": -1, "past": -1, "this": 0, "next": 1, "coming": 1,
          "上": -1, "这": 0, "本": 0, "下": 1}  # fmt: skip
_ZH_YEARS = {"前年": -2, "去年": -1, "今年": 0, "明年": 1, "后年": 2}

_NUMBER = (
    r"(?P<n>\d{1,3}|a couple of|couple of|an?|one|two|three|four|five|six|seven|eight|nine|"
    r"ten|eleven|twelve)"
)
_EN = re.compile(
    r"(?<![\w-])(?:"
    r"(?P<days>the day before yesterday|the day after tomorrow|yesterday|tomorrow|today|tonight|"
    r"last night|this (?:morning|afternoon|evening))"
    r"|(?P<wshift>last|this|next|this past|this coming)\s+(?P<wd>monday|tuesday|wednesday|"
    r"thursday|friday|saturday|sunday)"
    r"|(?P<pshift>last|this|next|this past|this coming)\s+(?P<unit>weekend|week|month|year)"
    rf"|{_NUMBER}\s+(?P<agounit>day|week|month|year)s?\s+(?P<dir>ago|later|from now)"
    rf"|in\s+{_NUMBER.replace('?P<n>', '?P<inn>')}\s+(?P<inunit>day|week|month|year)s?"
    r")(?![\w-])(?!\s+of\b)",
    re.IGNORECASE,
)
_ZH_NUM = r"[\d零一二两三四五六七八九十]{1,3}"
_ZH = re.compile(
    r"(?P<days>大前天|大后天|前天|后天|昨天|昨晚|今天|今晚|今早|明天)"
    r"|(?P<wshift>上|下|这|本)个?(?:周|星期|礼拜)(?P<wd>[一二三四五六日天])"
    r"|(?P<eshift>上|下|这|本)个?(?:周末)"
    r"|(?P<pshift>上|下|这|本)个?(?P<unit>周|星期|礼拜|月)"
    r"|(?P<years>前年|去年|今年|明年|后年)"
    rf"|(?P<n>{_ZH_NUM})\s*个?(?P<agounit>天|日|周|星期|礼拜|月|年)(?P<dir>前|后|以前|以后|之前|之后)"
)


def _zh_number(raw: str) -> int | None:
    if raw.isdigit():
        return int(raw)
    if raw == "十":
        return 10
    if "十" in raw:
        tens, _, units = raw.partition("十")
        value = (_ZH_DIGITS.get(tens, 0) if tens else 1) * 10
        return value + (_ZH_DIGITS.get(units, 0) if units else 0)
    if len(raw) == 1 and raw in _ZH_DIGITS:
        return _ZH_DIGITS[raw]
    return None


def _en_number(raw: str) -> int | None:
    raw = raw.lower()
    return int(raw) if raw.isdigit() else _EN_NUMBERS.get(raw)


def _week(day: date) -> tuple[date, date]:
    monday = day - timedelta(days=day.weekday())
    return monday, monday + timedelta(days=6)


def _month(day: date, shift: int) -> tuple[date, date]:
    index = day.year * 12 + day.month - 1 + shift
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])


def _year(day: date, shift: int) -> tuple[date, date]:
    return date(day.year + shift, 1, 1), date(day.year + shift, 12, 31)


def _span(today: date, unit: str, shift: int) -> tuple[date, date, Precision]:
    if unit == "day":
        day = today + timedelta(days=shift)
        return day, day, "day"
    if unit == "week":
        first, last = _week(today + timedelta(weeks=shift))
        return first, last, "week"
    if unit == "weekend":
        monday, _ = _week(today + timedelta(weeks=shift))
        return monday + timedelta(days=5), monday + timedelta(days=6), "weekend"
    if unit == "month":
        first, last = _month(today, shift)
        return first, last, "month"
    first, last = _year(today, shift)
    return first, last, "year"


_ZH_UNITS = {"天": "day", "日": "day", "周": "week", "星期": "week", "礼拜": "week",
             "月": "month", "年": "year"}  # fmt: skip


def _english(text: str, today: date) -> Iterator[RelativeDate]:
    for m in _EN.finditer(text):
        phrase = m.group()
        if m.group("days"):
            first, last, precision = _span(today, "day", _EN_DAYS[m.group("days").lower()])
        elif m.group("wd"):
            shift = _SHIFT[m.group("wshift").lower().split()[-1]]
            if m.group("wshift").lower() == "this past":
                shift = -1
            monday, _ = _week(today + timedelta(weeks=shift))
            first = last = monday + timedelta(days=_WEEKDAYS.index(m.group("wd").lower()))
            precision = "day"
        elif m.group("unit"):
            words = m.group("pshift").lower().split()
            shift = -1 if words == ["this", "past"] else _SHIFT[words[-1]]
            first, last, precision = _span(today, m.group("unit").lower(), shift)
        elif m.group("agounit"):
            count = _en_number(m.group("n"))
            if count is None:
                continue
            sign = -1 if m.group("dir").lower() == "ago" else 1
            first, last, precision = _span(today, m.group("agounit").lower(), sign * count)
        else:
            count = _en_number(m.group("inn"))
            if count is None:
                continue
            first, last, precision = _span(today, m.group("inunit").lower(), count)
        yield RelativeDate(m.start(), m.end(), phrase, first, last, precision, False)


def _chinese(text: str, today: date) -> Iterator[RelativeDate]:
    for m in _ZH.finditer(text):
        phrase = m.group()
        if m.group("days"):
            first, last, precision = _span(today, "day", _ZH_DAYS[m.group("days")])
        elif m.group("wd"):
            monday, _ = _week(today + timedelta(weeks=_SHIFT[m.group("wshift")]))
            weekday = 6 if m.group("wd") == "天" else _ZH_WEEKDAYS.index(m.group("wd"))
            first = last = monday + timedelta(days=weekday)
            precision = "day"
        elif m.group("eshift"):
            first, last, precision = _span(today, "weekend", _SHIFT[m.group("eshift")])
        elif m.group("unit"):
            unit = "month" if m.group("unit") == "月" else "week"
            first, last, precision = _span(today, unit, _SHIFT[m.group("pshift")])
        elif m.group("years"):
            first, last, precision = _span(today, "year", _ZH_YEARS[m.group("years")])
        else:
            count = _zh_number(m.group("n"))
            if count is None:
                continue
            sign = -1 if m.group("dir") in ("前", "以前", "之前") else 1
            first, last, precision = _span(today, _ZH_UNITS[m.group("agounit")], sign * count)
        yield RelativeDate(m.start(), m.end(), phrase, first, last, precision, True)


def relative_dates(text: str, today: date) -> list[RelativeDate]:
    """Relative expressions of time in a text, resolved against the day it was written.

    English ("yesterday", "last Friday", "next week", "this weekend", "two days ago", "in
    three weeks", "last year") and Chinese ("昨天", "上周五", "下周", "上周末", "下个月",
    "去年", "三天前"). Weeks run Monday to Sunday. Vague ones ("recently", "a few days
    ago") and ones that name part of something else ("the last week of June") are left out.

    Args:
        text: Any text.
        today: The date the text was written.

    Returns:
        The expressions in text order, none overlapping another.
    """
    found = sorted([*_english(text, today), *_chinese(text, today)], key=lambda r: r.start)
    kept: list[RelativeDate] = []
    for item in found:
        if kept and item.start < kept[-1].end:
            continue
        if not item.chinese and text[: item.start].lower().endswith("the "):
            continue  # "the last week", "the next month": a part of something, not a date
        kept.append(item)
    return kept


def _when(moment: datetime | date | str | None) -> date | None:
    if moment is None or moment == "":
        return None
    if isinstance(moment, datetime):
        return moment.date()
    if isinstance(moment, date):
        return moment
    try:
        return datetime.fromisoformat(moment).date()
    except ValueError:
        return None


def resolve_relative_dates(text: str, when: datetime | date | str | None) -> str:
    """The text with each relative expression followed by the date it means.

    ``"I went there yesterday"`` written on 8 May 2023 becomes ``"I went there yesterday
    (7 May 2023)"``; ``"上周去了杭州"`` becomes ``"上周（2023年5月1日至7日）去了杭州"``. A text
    that is already resolved is returned unchanged, so resolving twice changes nothing.

    Args:
        text: Any text.
        when: When it was written (a datetime, a date or an ISO-8601 string); without it
            nothing can be resolved and the text is returned as it is.

    Returns:
        The text with the resolved dates.
    """
    today = _when(when)
    if today is None or not text:
        return text
    out: list[str] = []
    position = 0
    for item in relative_dates(text, today):
        resolved = readable_range(item.first, item.last, item.precision, chinese=item.chinese)
        note = f"（{resolved}）" if item.chinese else f" ({resolved})"
        out.append(text[position : item.end])
        if not text[item.end :].startswith(note):
            out.append(note)
        position = item.end
    out.append(text[position:])
    return "".join(out)
