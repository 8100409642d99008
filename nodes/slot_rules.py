"""Deterministic slot rules run on every user turn, in English and Chinese."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import phonenumbers

from nodes.dates import relative_dates
from nodes.text import fold, normalize_text, split_sentences

__all__ = [
    "SLOT_NAMES",
    "STYLE_DIMENSIONS",
    "SlotFinding",
    "extract_rule_slots",
    "is_question",
    "is_request",
    "memo_key",
    "split_clauses",
    "style_dimension",
]

SLOT_NAMES: tuple[str, ...] = (
    "name",
    "email",
    "phone",
    "order_id",
    "ticket_id",
    "date",
    "language",
    "task",
)
"""Plain slot names. Two families come on top of these:

- ``style:<dimension>`` (``style:abbreviations``, ``style:length``, ``style:format``,
  ``style:tone``): style preferences accumulate across dimensions (several hold at once) and a
  newer preference replaces an older one only within its dimension ("be detailed" replaces
  "be concise"; "no abbreviations" stays). The value is the user's phrase.
- ``memo:<key>``: one slot per "remember that ..." statement. The key comes from the memo's
  subject ("my flight is on Friday" -> ``memo:flight``) so a later memo about the same subject
  replaces it and an unrelated memo does not; without a clear subject the key is a short hash
  of the memo's text.
"""

STYLE_DIMENSIONS: tuple[str, ...] = ("abbreviations", "length", "format", "tone")

# Long pasted documents are scanned only this far: slots live in what the user says, and
# bounding the input bounds the regex work per turn.
_MAX_CHARS = 20_000


@dataclass(frozen=True)
class SlotFinding:
    """A slot value read from the user's text.

    Attributes:
        name: Slot name (see ``SLOT_NAMES``, ``style:<dimension>``, ``memo:<key>``).
        value: The value, a substring of the normalised user text (relative dates add the
            resolved ISO date in parentheses: ``"tomorrow (2026-11-24)"``).
        evidence: The sentence or clause the value was read from.
        rule: The rule that found it (``name``, ``email``, ...); the slot source is
            ``"rule:<rule>"``.
    """

    name: str
    value: str
    evidence: str
    rule: str


# -- splitting -------------------------------------------------------------------------------

_CLAUSE_SPLIT = re.compile(r"(?<=[,、])")


def split_clauses(sentence: str) -> list[str]:
    """Split a sentence at commas; the sentence's end mark is copied onto its last clause.

    Args:
        sentence: One sentence from ``split_sentences``.

    Returns:
        Clauses in order, each stripped, commas removed.
    """
    parts = [p.strip().rstrip(",、").strip() for p in _CLAUSE_SPLIT.split(sentence)]
    return [p for p in parts if p]


_EN_QUESTION_START = re.compile(
    r"^(?:what|what's|whats|how|why|when|where|who|whom|whose|which|"
    r"is|are|am|was|were|do|does|did|can|could|would|will|should|shall|may|might|"
    r"have|has|had|isn't|aren't|don't|doesn't|didn't|can't|won't)\b",
    re.IGNORECASE,
)
_ZH_QUESTION_END = re.compile(r"(?:吗|呢|么|嘛)[\s。.!]*$")
_ZH_QUESTION_WORD = re.compile(
    r"什么|为什么|怎么|怎样|如何|哪|谁|啥|多少|几[个点号天年月岁次]|是否|能否|"
    r"有没有|是不是|能不能|可不可以|会不会|要不要"
)
_REQUEST = re.compile(
    r"^\s*(?:(?:can|could|would|will) you|please|pls|kindly)\b|\bplease\b|"
    r"能不能|可不可以|可以|能否|好吗|行吗|好不好|请|麻烦|^\s*能",
    re.IGNORECASE,
)


def is_question(sentence: str) -> bool:
    """Whether a sentence asks something ("?", "？", "吗", "呢", what/how/why..., 什么/怎么...).

    Args:
        sentence: One sentence or clause.

    Returns:
        True for questions; sentences ending in "!" or "。" only count when they end in a
        question particle.
    """
    s = normalize_text(sentence).strip()
    if not s:
        return False
    if s.endswith("?"):
        return True
    if _ZH_QUESTION_END.search(s):
        return True
    if s.endswith(("!", "。", ".")):
        return False
    return bool(_EN_QUESTION_START.match(s) or _ZH_QUESTION_WORD.search(s))


def is_request(sentence: str) -> bool:
    """Whether a sentence is a polite request ("can you ...", "please", "能不能", "请").

    Args:
        sentence: One sentence or clause.

    Returns:
        True when the sentence reads as a request rather than a question for information.
    """
    return bool(_REQUEST.search(normalize_text(sentence)))


# -- names -----------------------------------------------------------------------------------


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_NAME_STOP = _wordset(
    """and but or i im i'm i’m from at with by not please thanks thank here too also so the a an
    is was to in on of for back now today tomorrow btw actually anyway if when because who
    what how why you your my me it this that just"""
)
_NOT_NAMES = _wordset(
    """tired fine ok okay good great sorry happy sad busy here back not so very really just going
    writing working trying looking sure ready done new glad afraid hungry sick well home late
    early free available interested confused lost curious excited worried calling asking
    wondering planning thinking doing getting having making using learning studying reading
    english chinese american british french german japanese korean spanish indian canadian
    australian italian russian mexican brazilian a an the in on at from with also still
    currently now student teacher engineer developer manager customer user"""
)
_LATIN_NAME_WORD = re.compile(r"[A-Za-z][A-Za-z'’\-]*")
_CJK_NAME = r"[\u4e00-\u9fff·]{2,4}?"
# What may follow a Chinese name: the end, punctuation, the next clause, or a sentence-final
# particle ("叫我老李吧", "我是李明呀", "叫我小王就行"), which is never part of the name.
_NAME_TERM = r"(?=$|[^\w]|今年|来自|住在|在|是|和|我|,|[吧啊呀哦喔噢啦哈嘛呢哟]|就)"
_ZH_NAME_BLOCK = re.compile(r"^(?:什么|啥|谁|了|过|着|一|你|他|她|它|这|那|个|名字)")
_ZH_SURNAMES = frozenset(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏"
    "魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵"
    "万钱严覃武戴莫孔向汤欧"
)
_ZH_NOT_NAME_END = frozenset("生人员师者家长工手户客的们子")
_ZH_TITLES = ("经理", "老师", "先生", "女士", "小姐", "医生", "主任", "老板", "总")

_EN_NAME_INTROS = (
    (re.compile(r"\bmy name(?:'s| is)\s+", re.IGNORECASE), False),
    (re.compile(r"(?:^|\b(?:please|just|you can|you may)\s+)call me\s+", re.IGNORECASE), True),
    (
        re.compile(
            r"(?:^|\b(?:hi|hello|hey|and|but|actually|no|sorry)\s+)(?:i'm|i’m|i am)\s+",
            re.IGNORECASE,
        ),
        True,
    ),
)
_ZH_NAME_INTROS = re.compile(
    rf"(?:我叫|我的名字是|我的名字叫|我名字叫|我名叫|我姓名是|(?:^|[^\w]|请|你可以|可以|就)叫我)"
    rf"\s*(?P<name>{_CJK_NAME}){_NAME_TERM}"
)
_ZH_I_AM = re.compile(
    rf"(?:^|[^\w]|你好|您好|嗨|哈喽)我是\s*(?P<name>[\u4e00-\u9fff]{{2,3}}?){_NAME_TERM}"
)


def _latin_name(rest: str, *, capitalised_only: bool) -> str | None:
    # Up to three name words separated by single spaces, stopping at words that end a name.
    pos = 0
    start: int | None = None
    end = 0
    words = 0
    while words < 3:
        m = _LATIN_NAME_WORD.match(rest, pos)
        if not m:
            break
        word = m.group()
        if word.lower() in _NAME_STOP:
            break
        if capitalised_only and not (word[0].isupper() and not word[1:].isupper()):
            break
        if words == 0 and capitalised_only and word.lower() in _NOT_NAMES:
            return None
        start = m.start() if start is None else start
        end = m.end()
        words += 1
        if rest[end : end + 1] == " " and _LATIN_NAME_WORD.match(rest, end + 1):
            pos = end + 1
        else:
            break
    if start is None:
        return None
    after = rest[end:]
    if capitalised_only and not re.match(
        r"^(?:$|\s*[^\w\s]|\s+(?:and|from|with|here|by|btw|too)\b)", after, re.IGNORECASE
    ):
        # "I'm Alice ..." counts only when the name closes the clause: a following word makes
        # it likely an adjective or verb in odd capitalisation.
        return None
    return rest[start:end]


def _names(clause: str) -> Iterator[str]:
    for pattern, capitalised_only in _EN_NAME_INTROS:
        for m in pattern.finditer(clause):
            rest = clause[m.end() :]
            zh = re.match(rf"(?P<name>{_CJK_NAME}){_NAME_TERM}", rest)
            if zh and not _ZH_NAME_BLOCK.match(zh.group("name")):
                yield zh.group("name")
                continue
            name = _latin_name(rest, capitalised_only=capitalised_only)
            if name:
                yield name
    for m in _ZH_NAME_INTROS.finditer(clause):
        name = m.group("name")
        if not _ZH_NAME_BLOCK.match(name):
            yield name
    for m in re.finditer(r"(?:我叫|我的名字是|我的名字叫|我是)\s*(?=[A-Z])", clause):
        name = _latin_name(clause[m.end() :], capitalised_only=True)
        if name:
            yield name
    for m in _ZH_I_AM.finditer(clause):
        name = m.group("name")
        # "我是王经理" introduces a role, not a full name.
        if (
            name[0] in _ZH_SURNAMES
            and name[-1] not in _ZH_NOT_NAME_END
            and not name.endswith(_ZH_TITLES)
        ):
            yield name


# -- contacts, ids, dates --------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
    r"(?![A-Za-z0-9@])"
)
_ID = r"#?\s*(?P<id>(?=[A-Za-z0-9\-]*\d)[A-Za-z0-9][A-Za-z0-9\-]{2,39})(?![A-Za-z0-9\-])"
_MARKED = r"(?P<marker>\s+(?:number|no\.?|num|id)|\s*#|\s*号码?|\s*编号)?"
_ORDER = re.compile(
    rf"(?:\border|订单|(?<!工)单号)(?!ed|s\b|ing){_MARKED}\s*(?:is|was|:|=|是|为)?\s*{_ID}",
    re.IGNORECASE,
)
_TICKET = re.compile(
    rf"(?:\bticket|\bcase|工单|票号){_MARKED}\s*(?:is|was|:|=|是|为)?\s*{_ID}", re.IGNORECASE
)

_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_MONTH = (
    r"(?P<month>Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_DATE_ISO = re.compile(r"(?<!\d)(?P<y>\d{4})[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})(?!\d)")
_DATE_ZH = re.compile(r"(?:(?P<y>\d{4})年)?(?P<m>\d{1,2})月(?P<d>\d{1,2})[日号]")
_DATE_EN_MD = re.compile(
    rf"\b{_MONTH}\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(?P<y>\d{{4}})\b)?"
)
_DATE_EN_DM = re.compile(
    rf"\b(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\b(?:,?\s+(?P<y>\d{{4}})\b)?"
)


def _valid_date(y: int | None, m: int, d: int) -> bool:
    try:
        date(y or 2000, m, d)  # 2000 is a leap year, so "Feb 29" without a year passes
    except ValueError:
        return False
    return True


def _dates(text: str, now: datetime | None) -> Iterator[tuple[int, int, str]]:
    for pattern in (_DATE_ISO, _DATE_ZH, _DATE_EN_MD, _DATE_EN_DM):
        for m in pattern.finditer(text):
            raw_month = m.group("month") if "month" in m.groupdict() else m.group("m")
            month = _MONTHS[raw_month[:3].lower()] if raw_month.isalpha() else int(raw_month)
            year = int(m.group("y")) if m.group("y") else None
            if _valid_date(year, month, int(m.group("d"))):
                yield m.start(), m.end(), m.group()
    if now is None:
        # Relative dates are kept only when they can be resolved against the message time.
        return
    for found in relative_dates(text, now.date()):
        # A date slot names a day other than today: "tomorrow", "next Monday", "三天前".
        if found.precision == "day" and found.first != now.date():
            yield found.start, found.end, f"{found.phrase} ({found.first.isoformat()})"


def _phones(text: str, regions: Sequence[str]) -> Iterator[tuple[int, int, str]]:
    seen: set[tuple[int, int]] = set()
    for region in regions:
        for match in phonenumbers.PhoneNumberMatcher(
            text, region, leniency=phonenumbers.Leniency.VALID
        ):
            span = (match.start, match.end)
            if span not in seen:
                seen.add(span)
                yield match.start, match.end, match.raw_string


# -- preferences -----------------------------------------------------------------------------

_LANG_EN = (
    r"(?P<lang>English|Chinese|Mandarin|Cantonese|Japanese|Korean|French|German|Spanish|"
    r"Portuguese|Italian|Russian|Arabic|Hindi|Vietnamese|Thai)\b"
)
_EN_POLITE = (
    r"(?:(?:please|pls|kindly|can you|could you|would you|will you|you should|and|also|always|"
    r"only|i'd like you to|i want you to|i need you to|from now on|from here on)\s+)*"
)
_LANG_EN_PATTERNS = (
    re.compile(
        rf"^{_EN_POLITE}(?:reply|respond|answer|write|talk|chat|communicate|continue)"
        rf"(?:\s+(?:to me|back|me|only|from now on))*\s+(?:in|using)\s+(?:plain\s+)?{_LANG_EN}",
        re.IGNORECASE,
    ),
    re.compile(
        rf"^{_EN_POLITE}(?:use|switch to|change to|go back to|stick to)\s+{_LANG_EN}", re.IGNORECASE
    ),
    re.compile(rf"^{_EN_POLITE}speak\s+{_LANG_EN}(?!.*\?)", re.IGNORECASE),
    re.compile(rf"^(?:in\s+)?{_LANG_EN}\s*,?\s*please\b", re.IGNORECASE),
    re.compile(
        rf"\bI(?:'d| would)? prefer\s+(?:(?:answers|replies|responses)\s+in\s+)?{_LANG_EN}",
        re.IGNORECASE,
    ),
)
_LANG_ZH = r"(?P<lang>中文|英文|英语|汉语|普通话|粤语|日语|日文|韩语|韩文|法语|德语|西班牙语|俄语)"
_ZH_POLITE = (
    r"(?:请|麻烦你?|你|以后|之后|接下来|从现在开始|从现在起|后面|还是|能不能|可以|可不可以|"
    r"请你|都|就|我们)*"
)
_LANG_ZH_PATTERN = re.compile(
    rf"^{_ZH_POLITE}(?:用|使用|改用|换成|换用|说){_LANG_ZH}(?:来)?"
    r"(?!怎么|如何|是什么|怎样|叫|表示|翻译|说是|写是)"
    r"(?:(?:回答|回复|交流|聊天?|对话|和我说话|跟我说话?|跟我交流|沟通|作答)"
    r"|(?:说|写)?(?=$|[^\w]|吧|吗|好吗|可以吗|哦|呢))"
)

_STYLE_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    "abbreviations": (
        re.compile(
            r"\b(?:no|don't use|do not use|avoid|without|stop using|never use)\s+(?:any\s+)?"
            r"(?:abbreviations?|acronyms?)\b|\bspell (?:everything|things|words|it all) out\b",
            re.IGNORECASE,
        ),
        re.compile(
            r"(?:不要|别|不用|请勿|避免|禁止|不能|不许)再?(?:使用|用)?(?:任何)?(?:缩写|简称|缩略语)"
        ),
    ),
    "length": (
        re.compile(
            r"\b(?:be (?:more |very )?(?:concise|brief|succinct|detailed|thorough)|"
            r"keep (?:it|them|your (?:answers|replies)) (?:short|brief)|"
            r"(?:short|shorter|brief|concise|detailed|longer) (?:answers|replies|responses)|"
            r"go into (?:more )?detail)\b",
            re.IGNORECASE,
        ),
        re.compile(
            r"(?:简洁|简短|简单|详细|具体)(?:一点|一些|些|点)(?!的)|简明扼要|言简意赅|长话短说|"
            r"(?:回答|回复|说得?|讲得?)(?:要|再)?更?(?:简洁|简短|详细)(?:一点|一些|些|点)?|"
            r"详细地?(?:回答|说明|解释|讲讲|讲解)"
        ),
    ),
    "format": (
        re.compile(
            r"\b(?:(?:use|with|in|as|using)\s+(?:a\s+)?(?:bullet points?|bullets|bulleted lists?|"
            r"numbered lists?|tables?|markdown|plain text)|bullet points? please|"
            r"(?:no|without|avoid|don't use)\s+(?:bullet points?|bullets|markdown|lists|tables))\b",
            re.IGNORECASE,
        ),
        re.compile(
            r"(?:用|使用|以|按照?)(?:要点|列表|项目符号|表格|编号列表|markdown)(?:的)?(?:形式|方式|格式)?|"
            r"分点(?:回答|说明|列出|作答)?|分条(?:列出|回答|说明)|"
            r"(?:不要|别|不用)(?:用|使用)?(?:列表|表格|markdown)"
        ),
    ),
    "tone": (
        re.compile(
            r"\b(?:(?:a |an |more |less )?(?:formal|informal|casual|friendly|professional|polite|"
            r"neutral) (?:tone|language|style|register|voice)|"
            r"be (?:more |less )?(?:formal|informal|casual|professional|polite|friendly)|"
            r"(?:speak|write|talk|reply|respond|answer) (?:more )?(?:formally|casually|"
            r"informally|professionally|politely))\b",
            re.IGNORECASE,
        ),
        re.compile(
            r"(?:用|使用)?(?:正式|礼貌|专业|轻松|随意|书面|口语化)(?:一点|一些|些|点)(?!的)|"
            r"(?:用|使用)?(?:正式|礼貌|专业|轻松|随意|书面|口语化|友好)的?(?:语气|口吻|风格|语言)|"
            r"(?:语气|口吻)(?:要)?更?(?:正式|礼貌|专业|轻松|随意)(?:一点|些)?|更口语化"
        ),
    ),
}


def style_dimension(phrase: str) -> str | None:
    """The style dimension a preference phrase belongs to, if any.

    Args:
        phrase: A style preference such as "be concise" or "不要用缩写".

    Returns:
        One of ``STYLE_DIMENSIONS`` or None when the phrase matches no known preference.
    """
    text = normalize_text(phrase)
    for dimension, patterns in _STYLE_PATTERNS.items():
        if any(p.search(text) for p in patterns):
            return dimension
    return None


# -- task and memos --------------------------------------------------------------------------

_TASK_EN = re.compile(
    r"\b(?:I'm|I’m|I am|im|we're|we are)\s+(?:currently\s+|now\s+|just\s+|still\s+)?"
    r"(?P<task>(?:working on|writing|preparing|drafting|building|developing|planning|"
    r"researching|putting together|creating|designing|organizing|organising|studying for|"
    r"trying to)\s+(?!(?:to|this|because|back|you|it|that|about it)\b)\S.*)",
    re.IGNORECASE,
)
_TASK_EN_GOAL = re.compile(
    r"\b(?:my|our) (?:goal|task|project|job|assignment) (?:is|right now is)\s+(?P<task>\S.*)|"
    r"^(?:please\s+|can you\s+|could you\s+)?help me\s+(?P<task2>(?:write|draft|prepare|plan|"
    r"build|create|design|translate|summari[sz]e|organi[sz]e|outline)\s+\S.*)",
    re.IGNORECASE,
)
_TASK_ZH = re.compile(
    r"(?:我|我们)(?:现在|目前|最近)?(?:正在|正|在)(?P<task>(?:写|做|准备|撰写|起草|开发|设计|"
    r"筹备|策划|整理|研究|学习|复习)\S{2,})|"
    r"(?:我|我们)的(?:任务|目标|工作|项目)是(?P<task2>\S{2,})|"
    r"^(?:请|麻烦你?)?帮我(?P<task3>(?:写|起草|准备|做|翻译|总结|设计|规划|整理)\S{2,})"
)
_TASK_END = re.compile(r"\s+(?:and|but|so|because)\s+(?:I|we|it|you)\b.*$", re.IGNORECASE)

_MEMO_EN = re.compile(
    r"^(?:(?:please|pls|also|and|so|ok|okay|just|now|hey|oh)\s*,?\s+)*"
    r"(?P<ask>(?:can|could|will|would) you\s+)?(?:please\s+)?remember"
    r"(?:\s+(?:that|this))?\s*[:,\-]?\s+"
    r"(?!(?:when|what|how|where|who|why|whether|if|me)\b)(?P<memo>\S.*)",
    re.IGNORECASE,
)
_MEMO_ZH = re.compile(
    r"(?:^|[^\w]|请|帮我|麻烦你?|你要|一定要|要|务必)记住(?!了|吗|没)"
    r"(?:[:,\s]|一下|这个|这件事|这一点)*(?P<memo>\S.*)"
)
_MEMO_SUBJECT_EN = re.compile(
    r"^(?:that\s+)?(?:(?:the|my|our|a|an)\s+)?(?P<subject>.{1,40}?)\s+"
    r"(?:is|are|was|were|will be|has|have)\b",
    re.IGNORECASE,
)
_MEMO_SUBJECT_ZH = re.compile(r"^(?:我的|我们的|我家的?)?(?P<subject>[^\s,]{1,10}?)(?:是|在|为|叫)")


def memo_key(memo: str) -> str:
    """The stable slot name for a memo: ``memo:<subject slug>`` or ``memo:<hash>``.

    Args:
        memo: The remembered statement ("my flight is on Friday", "我的航班是周五").

    Returns:
        ``memo:flight`` for both examples' subjects ("flight", "航班"), or a hash of the
        normalised text when the memo has no clear subject.
    """
    text = fold(memo).rstrip(".!。 ")
    for pattern in (_MEMO_SUBJECT_EN, _MEMO_SUBJECT_ZH):
        m = pattern.match(text)
        if m and len(m.group("subject").split()) <= 4:
            slug = re.sub(r"[^\w]+", "-", m.group("subject")).strip("-")[:40]
            if slug:
                return f"memo:{slug}"
    return f"memo:{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _clean_phrase(text: str, limit: int = 120) -> str:
    text = _TASK_END.sub("", text.strip())
    text = re.split(r"[,;。!?]", text, maxsplit=1)[0].strip().rstrip(".")
    return text[:limit].rstrip()


# -- the pass --------------------------------------------------------------------------------

# add(position, slot name, value, evidence, rule)
_Add = Callable[[int, str, str, str, str], None]


# "..., not b@x.com" / "不是 old@x.com": the value right after a negation is the one the user
# rejects, so it must not replace the one they gave.
_NEGATED = re.compile(
    r"(?:\b(?:not|isn't|wasn't|never|instead of|rather than)|不是|并非|而非)\s*[#:]?\s*$",
    re.IGNORECASE,
)


def _negated(text: str, start: int) -> bool:
    return bool(_NEGATED.search(text[max(0, start - 24) : start]))


def _overlaps(span: tuple[int, int], taken: list[tuple[int, int]]) -> bool:
    return any(span[0] < e and s < span[1] for s, e in taken)


def _evidence(text: str, start: int, end: int) -> str:
    for sentence in split_sentences(text):
        if text[start:end] in sentence:
            return sentence
    return text[start:end]


def extract_rule_slots(
    text: str, *, now: datetime | None = None, regions: Sequence[str] = ("CN", "US")
) -> list[SlotFinding]:
    """Read slots from one user turn with deterministic rules.

    A later mention of the same slot in the same text wins (the user correcting themselves).
    Questions set nothing for names, tasks and memos ("what is my name?"); ids, contacts and
    dates are kept even inside questions ("where is order #123?").

    Args:
        text: The user's message (any language; unknown scripts simply yield fewer findings).
        now: The message's timestamp; relative dates ("tomorrow", "下周一") are read only when
            it is given, and resolved against its date.
        regions: Regions whose national phone formats are accepted without a "+" prefix.

    Returns:
        Findings in order of appearance, at most one per slot name.

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, not {type(text).__name__}")
    text = normalize_text(text)[:_MAX_CHARS]
    found: list[tuple[int, SlotFinding]] = []
    taken: list[tuple[int, int]] = []

    def add(pos: int, name: str, value: str, evidence: str, rule: str) -> None:
        found.append((pos, SlotFinding(name, value, evidence, rule)))

    for m in _EMAIL.finditer(text):
        taken.append(m.span())
        if not _negated(text, m.start()):
            add(m.start(), "email", m.group(), _evidence(text, *m.span()), "email")
    for pattern, name in ((_ORDER, "order_id"), (_TICKET, "ticket_id")):
        for m in pattern.finditer(text):
            span = m.span("id")
            ident = m.group("id")
            # A bare short number after "order" is more often a quantity than an id.
            if ident.isdigit() and len(ident) < 4 and not m.group("marker"):
                continue
            if _overlaps(span, taken):
                continue
            taken.append(span)
            if not _negated(text, span[0]):
                add(span[0], name, ident, _evidence(text, *m.span()), name)
    for start, end, value in _dates(text, now):
        if not _overlaps((start, end), taken):
            taken.append((start, end))
            if not _negated(text, start):
                add(start, "date", value, _evidence(text, start, end), "date")
    for start, end, value in _phones(text, regions):
        if not _overlaps((start, end), taken):
            taken.append((start, end))
            if not _negated(text, start):
                add(start, "phone", value, _evidence(text, start, end), "phone")

    offset = 0
    for sentence in split_sentences(text):
        base = text.find(sentence, offset)
        offset = base + len(sentence)
        question = is_question(sentence)
        asks = question and not is_request(sentence)
        if not asks:
            _sentence_rules(sentence, base, add)
        for clause in split_clauses(sentence):
            clause_question = is_question(clause)
            if not clause_question:
                for name in _names(clause):
                    add(base + sentence.find(name), "name", name, sentence, "name")
            if clause_question and not is_request(clause):
                continue
            _clause_rules(clause, sentence, base + max(sentence.find(clause), 0), add)

    latest: dict[str, tuple[int, SlotFinding]] = {}
    for pos, finding in sorted(found, key=lambda item: item[0]):
        latest.pop(finding.name, None)
        latest[finding.name] = (pos, finding)
    return [finding for _, finding in latest.values()]


def _sentence_rules(sentence: str, base: int, add: _Add) -> None:
    m = _MEMO_EN.match(sentence) or _MEMO_ZH.search(sentence)
    if m and (not sentence.rstrip().endswith("?") or m.groupdict().get("ask")):
        memo = _clean_memo(m.group("memo"))
        if len(memo) >= 2:
            add(base + m.start("memo"), memo_key(memo), memo, sentence, "memo")


def _clean_memo(memo: str) -> str:
    return memo.strip().rstrip(".!?。 ").strip()


def _clause_rules(clause: str, sentence: str, base: int, add: _Add) -> None:
    for pattern in _LANG_EN_PATTERNS:
        m = pattern.search(clause)
        if m:
            add(base + m.start("lang"), "language", m.group("lang"), sentence, "language")
            break
    m = _LANG_ZH_PATTERN.search(clause)
    if m:
        add(base + m.start("lang"), "language", m.group("lang"), sentence, "language")
    for dimension, patterns in _STYLE_PATTERNS.items():
        for pattern in patterns:
            for m in pattern.finditer(clause):
                add(base + m.start(), f"style:{dimension}", m.group().strip(), sentence, "style")
    if is_question(clause):
        return
    for pattern in (_TASK_EN, _TASK_EN_GOAL, _TASK_ZH):
        m = pattern.search(clause)
        if not m:
            continue
        group = next(g for g in ("task", "task2", "task3") if m.groupdict().get(g))
        task = _clean_phrase(m.group(group))
        if len(task) >= 2 and len(task.split()) >= (1 if pattern is _TASK_ZH else 2):
            add(base + m.start(group), "task", task, sentence, "task")
        break
