"""Planted-facts conversations: facts told early, small talk after, the facts asked at the end."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

__all__ = ["LENGTHS", "PlantedConversation", "PlantedFact", "planted_conversation"]

Language = Literal["en", "zh"]
LENGTHS = (50, 200, 500)


@dataclass(frozen=True)
class PlantedFact:
    """One fact the user tells once, and the question that asks for it at the end."""

    turn: int
    """The turn (1-based) where the user says it."""
    statement: str
    question: str
    value: str
    """What a correct reply contains."""


@dataclass(frozen=True)
class PlantedConversation:
    """User turns with recorded replies, and the facts planted among them."""

    conv_id: str
    language: Language
    turns: list[tuple[str, str, datetime]]
    """(user text, recorded reply, time) per turn."""
    facts: list[PlantedFact]
    ask_time: datetime


# (statement with {v}, question, values to pick from)
_FACTS: dict[Language, list[tuple[str, str, list[str]]]] = {
    "en": [
        (
            "By the way, my dog is called {v}.",
            "What is my dog called?",
            ["Biscuit", "Pepper", "Mochi", "Juniper"],
        ),
        (
            "I grew up in {v}, by the sea.",
            "Which town did I grow up in?",
            ["Tromso", "Galway", "Split", "Brest"],
        ),
        (
            "My gym locker code is {v}, I keep forgetting it.",
            "What is my gym locker code?",
            ["4719", "8253", "3062", "5914"],
        ),
        (
            "My sister works as a {v} at the hospital.",
            "What does my sister do for work?",
            ["pharmacist", "radiologist", "midwife", "physiotherapist"],
        ),
        (
            "My favourite dish is {v}.",
            "What is my favourite dish?",
            ["mushroom risotto", "lamb tagine", "pad thai", "fish pie"],
        ),
        ("I drive an old {v}.", "What car do I drive?", ["Volvo", "Saab", "Peugeot", "Skoda"]),
        (
            "My manager is called {v}.",
            "What is my manager called?",
            ["Ingrid", "Tobias", "Marisol", "Dmitri"],
        ),
        (
            "My flight to Osaka leaves on {v}.",
            "When does my flight to Osaka leave?",
            ["14 March", "2 April", "27 May", "9 June"],
        ),
    ],
    "zh": [
        ("顺便说一下，我的狗叫{v}。", "我的狗叫什么名字？", ["豆豆", "旺财", "年糕", "可乐"]),
        ("我是在{v}长大的，靠海。", "我是在哪个城市长大的？", ["青岛", "厦门", "大连", "北海"]),
        (
            "我健身房储物柜的密码是{v}，我老是忘。",
            "我健身房储物柜的密码是多少？",
            ["4719", "8253", "3062", "5914"],
        ),
        (
            "我姐姐在医院当{v}。",
            "我姐姐是做什么工作的？",
            ["药剂师", "放射科医生", "助产士", "理疗师"],
        ),
        (
            "我最喜欢的菜是{v}。",
            "我最喜欢的菜是什么？",
            ["红烧肉", "宫保鸡丁", "麻婆豆腐", "糖醋排骨"],
        ),
        ("我开的是一辆旧{v}。", "我开的是什么车？", ["沃尔沃", "斯柯达", "标致", "大众"]),
        ("我的经理叫{v}。", "我的经理叫什么名字？", ["王丽", "陈刚", "刘芳", "赵伟"]),
        (
            "我去大阪的航班是{v}出发。",
            "我去大阪的航班是哪天出发？",
            ["3月14日", "4月2日", "5月27日", "6月9日"],
        ),
    ],
}

_SMALL_TALK: dict[Language, list[str]] = {
    "en": [
        "The weather turned grey again this afternoon.",
        "I spent the morning reorganising my bookshelf.",
        "Do you have tips for sleeping better when it is hot?",
        "I watched a documentary about deep-sea fish last night.",
        "Work was busy today, lots of meetings.",
        "I am thinking about learning to play the ukulele.",
        "Can you suggest a quick lunch I could make at home?",
        "The bus was late again, so I walked most of the way.",
        "I finally fixed the squeaky door in the hallway.",
        "What is a good way to keep houseplants alive in winter?",
        "I tried a new coffee place near the station.",
        "My neighbour is renovating and it is very noisy.",
        "I should really start running again.",
        "Any ideas for a rainy weekend?",
        "I read an article about how bees navigate.",
        "I cleaned out the fridge and found some very old cheese.",
    ],
    "zh": [
        "今天下午天又阴了。",
        "我上午整理了一下书架。",
        "天热的时候怎么才能睡得好一点？",
        "我昨晚看了一部关于深海鱼的纪录片。",
        "今天工作很忙，开了好多会。",
        "我在考虑学弹尤克里里。",
        "能推荐一个在家快速做的午饭吗？",
        "公交车又晚点了，我大部分路是走过去的。",
        "我终于把走廊那扇吱吱响的门修好了。",
        "冬天怎么让室内植物活下来？",
        "我去车站附近一家新开的咖啡店试了试。",
        "邻居在装修，特别吵。",
        "我真该重新开始跑步了。",
        "下雨的周末有什么好玩的？",
        "我看了一篇讲蜜蜂怎么认路的文章。",
        "我清理了冰箱，发现了一块很旧的奶酪。",
    ],
}

_REPLIES: dict[Language, list[str]] = {
    "en": [
        "That sounds like quite a day.",
        "I see, thanks for sharing that.",
        "Good to hear from you. Tell me more if you like.",
        "That makes sense. Is there anything I can help with?",
    ],
    "zh": [
        "听起来今天挺充实的。",
        "明白了，谢谢你告诉我。",
        "很高兴听你说这些，想多聊聊也可以。",
        "有道理。有什么我能帮忙的吗？",
    ],
}

_NOTED: dict[Language, str] = {"en": "Noted, I will remember that.", "zh": "好的，我记住了。"}


def planted_conversation(language: Language, turns: int, *, seed: int = 0) -> PlantedConversation:
    """A deterministic conversation of ``turns`` user turns with eight planted facts.

    The facts are told within the first 60% of the conversation (evenly spaced from turn 2),
    once each; the other turns are small talk with short replies; one session per day.
    Values are drawn per conversation (``seed``, language and length), so a model cannot
    answer from one conversation's values in another.

    Args:
        language: ``"en"`` or ``"zh"``.
        turns: User turns (at least 10).
        seed: Varies the values and the small talk.

    Returns:
        The conversation.

    Raises:
        ValueError: Unknown language or too few turns.
    """
    if language not in _FACTS:
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    if turns < 10:
        raise ValueError(f"a planted conversation needs at least 10 turns, got {turns}")
    rng = random.Random(f"{language}:{turns}:{seed}")
    templates = _FACTS[language]
    last_fact = max(len(templates) + 1, int(turns * 0.6))
    step = (last_fact - 2) / (len(templates) - 1)
    places = [2 + round(i * step) for i in range(len(templates))]
    facts: list[PlantedFact] = []
    for place, (statement, question, values) in zip(places, templates, strict=True):
        value = rng.choice(values)
        facts.append(PlantedFact(place, statement.format(v=value), question, value))
    by_turn = {f.turn: f for f in facts}
    start = datetime(2026, 3, 2, 9, 0)
    out: list[tuple[str, str, datetime]] = []
    for number in range(1, turns + 1):
        # About ten turns a day.
        when = start + timedelta(days=(number - 1) // 10, minutes=3 * ((number - 1) % 10))
        fact = by_turn.get(number)
        if fact is not None:
            out.append((fact.statement, _NOTED[language], when))
        else:
            out.append((rng.choice(_SMALL_TALK[language]), rng.choice(_REPLIES[language]), when))
    ask = out[-1][2] + timedelta(days=1)
    return PlantedConversation(f"planted-{language}-{turns}", language, out, facts, ask)
