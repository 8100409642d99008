"""The web chat page driven in a real Chromium against the real app on a loopback port."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from api.app import create_app
from graph.compose import open_service
from graph.settings import Settings
from nodes.profiles import PROFILES, GenerationProfile
from tests.fakes import ScriptedChatModel

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_KEY = "web-page-e2e-key"
# Long enough, and paced slowly enough, that the page shows it growing word by word.
REPLY_TAIL = (
    "I will keep the important details of this conversation in mind, so you do not have to "
    "repeat them later on."
)
FAIL_MARKER = "please fail midway"
# Generous: the first turn compiles the graph and opens the stores; none of this is a timing check.
UI_TIMEOUT_MS = 30_000


class PacedChatModel(ScriptedChatModel):
    """The scripted fake, pausing between words; a ``FAIL`` word breaks the stream midway."""

    word_delay_s: float = 0.06

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in super()._stream(messages, stop, run_manager, **kwargs):
            if str(chunk.message.content).strip() == "FAIL":
                raise RuntimeError("the model stopped unexpectedly")
            time.sleep(self.word_delay_s)
            yield chunk


# Replies for a few user messages: a question met by a question back, answered a turn later.
SCRIPTED_REPLIES = {
    "What is your refund policy?": "Do you mean online orders or store purchases?",
    "Online orders.": "Our refund policy allows returns within 30 days.",
}


def _respond(messages: list[BaseMessage]) -> str:
    user = next(str(m.content) for m in reversed(messages) if isinstance(m, HumanMessage))
    for asked, reply in SCRIPTED_REPLIES.items():
        if user.rstrip().endswith(asked):
            return reply
    if FAIL_MARKER in user:
        return "Let me think about that FAIL and more words that never arrive"
    return f"Thank you for your message. {REPLY_TAIL}"


@dataclass
class Server:
    """The app serving on a loopback port, with the chat model it talks to."""

    base_url: str
    model: PacedChatModel

    def rest(self) -> httpx.Client:
        """A REST client for the same tenant as the page."""
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
        )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """Run ``create_app`` over a real service with uvicorn on a free loopback port."""
    model = PacedChatModel(responder=_respond)
    settings = Settings(
        checkpointer_url="memory",
        data_dir=tmp_path / "data",
        embedder="hash",
        api_keys=[API_KEY],
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    box: dict[str, Any] = {}

    async def serve() -> None:
        # The service is opened in the server's own event loop: its locks and stores live there.
        async with open_service(settings, chat_model=model, embedder="hash") as service:
            app = create_app(service, settings=settings)
            config = uvicorn.Config(app, log_level="warning", lifespan="on")
            box["server"] = uvicorn.Server(config)
            await box["server"].serve(sockets=[sock])

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported by the fixture below
            box["error"] = exc

    thread = threading.Thread(target=run, name="web-page-server", daemon=True)
    thread.start()
    _wait_until(
        lambda: "error" in box or ("server" in box and box["server"].started),
        what="the server to start",
    )
    if "error" in box:
        raise RuntimeError("the server did not start") from box["error"]
    try:
        yield Server(base_url=f"http://127.0.0.1:{port}", model=model)
    finally:
        box["server"].should_exit = True
        thread.join(timeout=30)
        sock.close()
        if "error" in box:
            raise RuntimeError("the server failed while the test ran") from box["error"]


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, with nothing reaching outside the machine."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    """A fresh page that accepts confirmation dialogs and fails the test on script errors."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("dialog", lambda dialog: dialog.accept())
    expect.set_options(timeout=UI_TIMEOUT_MS)
    try:
        yield opened
    finally:
        context.close()
    assert errors == [], f"the page raised script errors: {errors}"


def _wait_until(check: Callable[[], bool], *, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _open(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def _record_streaming_text(page: Page) -> None:
    # Every text the streaming reply bubble shows, so the test can see it grow.
    page.evaluate(
        """() => {
            window.__partials = [];
            const observer = new MutationObserver(() => {
                const live = document.querySelector("#messages .msg.streaming .msg-content");
                if (live && live.textContent) window.__partials.push(live.textContent);
            });
            observer.observe(document.getElementById("messages"),
                             {subtree: true, childList: true, characterData: true});
        }"""
    )


def _send(page: Page, text: str) -> None:
    page.locator("#message").fill(text)
    page.locator("#message").press("Enter")


def _last_assistant(page: Page) -> Locator:
    return page.locator("#messages .msg.assistant").last


def test_chat_page_streams_remembers_survives_reload_and_resets(
    page: Page, server: Server, tmp_path: Path
) -> None:
    """A user signs in with a key, chats, watches memory, reloads, resets and deletes."""
    _open(page, server.base_url + "/")

    # Auth is on and no key is stored: the page says what is wrong instead of showing nothing.
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("API key")
    page.locator("#api-key").fill(API_KEY)
    page.locator("#api-key").press("Enter")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#thread-list-empty")).to_be_visible()

    # A new thread appears in the list, selected, and exists on the server for this key.
    page.locator("#new-thread").click()
    current = page.locator("#thread-list button[aria-current='true']")
    expect(current).to_have_count(1)
    thread_id = current.get_attribute("data-thread-id")
    assert thread_id
    with server.rest() as rest:
        assert rest.get(f"/threads/{thread_id}").status_code == 200

    # Choosing a profile moves the sliders to its settings; keyboard moves override them.
    page.locator("#profile").select_option("creative")
    expect(page.locator("#temperature-value")).to_have_text("0.90")
    expect(page.locator("#max-tokens-value")).to_have_text("2048")
    page.locator("#temperature").focus()
    page.keyboard.press("Home")
    expect(page.locator("#temperature-value")).to_have_text("0.00")
    page.locator("#max-tokens").focus()
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#max-tokens-value")).to_have_text("1984")

    # Shift+Enter adds a line and sends nothing.
    page.locator("#message").fill("first line")
    page.locator("#message").press("Shift+Enter")
    page.keyboard.type("second line")
    expect(page.locator("#message")).to_have_value("first line\nsecond line")
    expect(page.locator("#messages .msg")).to_have_count(0)

    # Enter sends; the reply streams in word by word before it is complete.
    _record_streaming_text(page)
    _send(page, "Hello, my name is Alice")
    expected = f"Thank you for your message. {REPLY_TAIL}"
    expect(_last_assistant(page).locator(".msg-content")).to_have_text(expected)
    expect(page.locator("#messages .msg.streaming")).to_have_count(0)
    partials: list[str] = page.evaluate("window.__partials")
    growing = [p for p in partials if 0 < len(p) < len(expected) and expected.startswith(p)]
    assert len(set(growing)) >= 3, f"the reply did not stream in: {partials[:5]}"

    # The knobs the user set reached the model.
    sent = server.model.history[-1]["kwargs"]
    assert sent["profile"] == "creative"
    assert sent["temperature"] == 0.0
    assert sent["max_new_tokens"] == 1984

    # The memory panel shows the extracted name and what the model saw this turn.
    name_row = page.locator("#slots tr[data-slot='name']")
    expect(name_row).to_contain_text("Alice")
    expect(name_row.locator("td").nth(1)).to_have_text("1")
    expect(name_row.locator("td").nth(2)).to_have_text(re.compile(r"^rule:"))
    expect(page.locator("#context-account .account-total")).to_contain_text("Turn 1")
    expect(page.locator("#context-account [data-section='user']")).to_have_count(1)
    expect(page.locator("#context-account")).to_contain_text("Compaction")
    expect(current).to_contain_text("1 turn")

    # A corrected name replaces the old one, which moves to the slot's history.
    _send(page, "Sorry, my name is Bob")
    expect(page.locator("#messages .msg")).to_have_count(4)
    expect(_last_assistant(page)).not_to_have_class(re.compile(r"streaming"))
    expect(name_row.locator("td").nth(0)).to_have_text("Bob")
    expect(name_row.locator("td").nth(3)).to_have_text("1")
    expect(page.locator("#context-account .account-total")).to_contain_text("Turn 2")
    page.screenshot(path=str(tmp_path / "web-page.png"), full_page=True)

    # A reply that breaks mid-stream is reported to the user, and nothing of it is kept.
    _send(page, f"Now {FAIL_MARKER}")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_have_text(re.compile(r"\S"))
    expect(_last_assistant(page)).to_have_class(re.compile(r"failed"))
    expect(page.locator("#messages .msg.user").last.locator(".msg-meta")).to_have_text("Not saved.")
    expect(page.locator("#message")).to_be_enabled()
    expect(page.locator("#message")).to_have_value(f"Now {FAIL_MARKER}")

    # Stop ends a reply midway; the server keeps nothing of that turn.
    _send(page, "Tell me everything again")
    expect(page.locator("#messages .msg.streaming .msg-content")).to_have_text(re.compile(r"\S"))
    page.locator("#stop").click()
    expect(_last_assistant(page).locator(".msg-meta")).to_contain_text("Stopped")
    expect(page.locator("#stop")).to_be_hidden()
    with server.rest() as rest:
        # Queued behind the stopped turn, so it also proves that turn left nothing behind.
        other = rest.post(f"/threads/{thread_id}/messages", json={"content": "From another tab"})
        assert other.status_code == 200, other.text
        assert other.json()["turn"] == 3
        window = rest.get(f"/threads/{thread_id}").json()["window"]
    assert [m["content"] for m in window if m["role"] == "user"] == [
        "Hello, my name is Alice",
        "Sorry, my name is Bob",
        "From another tab",
    ]

    # After a reload the key, the thread and its history come back from the server.
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#api-key")).to_have_value(API_KEY)
    expect(page.locator("#thread-list button[aria-current='true']")).to_have_attribute(
        "data-thread-id", thread_id
    )
    messages = page.locator("#messages .msg")
    expect(messages).to_have_count(6)
    expect(messages.nth(0).locator(".msg-content")).to_have_text("Hello, my name is Alice")
    expect(messages.nth(1).locator(".msg-content")).to_have_text(expected)
    expect(messages.nth(2).locator(".msg-content")).to_have_text("Sorry, my name is Bob")
    expect(messages.nth(4).locator(".msg-content")).to_have_text("From another tab")
    expect(page.locator("#thread-list button[aria-current='true']")).to_contain_text("3 turns")
    expect(page.locator("#slots tr[data-slot='name'] td").nth(0)).to_have_text("Bob")

    # Reset empties the conversation and the memory but keeps the thread.
    page.locator("#reset-thread").click()
    expect(page.locator("#messages .msg")).to_have_count(0)
    expect(page.locator("#slots-empty")).to_be_visible()
    expect(page.locator("#thread-list button[aria-current='true']")).to_contain_text("0 turns")
    with server.rest() as rest:
        detail = rest.get(f"/threads/{thread_id}").json()
        assert detail["window"] == []
        assert detail["slots"] == {}

    # Delete removes it from the list and from the server.
    page.locator("#delete-thread").click()
    expect(page.locator("#thread-list button")).to_have_count(0)
    expect(page.locator("#thread-list-empty")).to_be_visible()
    expect(page.locator("#chat-title")).to_have_text("No thread selected")
    with server.rest() as rest:
        assert rest.get(f"/threads/{thread_id}").status_code == 404


def test_user_text_is_shown_as_text_never_run_as_markup(page: Page, server: Server) -> None:
    """Markup typed by a user (or echoed back by the model) stays inert text everywhere."""
    _open(page, server.base_url + "/")
    page.locator("#api-key").fill(API_KEY)
    page.locator("#api-key").press("Enter")
    hostile = '<img src=x onerror="window.__owned = true"> my name is <b>Eve</b>'
    _send(page, hostile)
    expect(page.locator("#messages .msg.user .msg-content").first).to_have_text(hostile)
    expect(page.locator("#messages .msg.assistant:not(.streaming)")).to_have_count(1)
    # Sending from an empty page created a thread titled after the message.
    expect(page.locator("#thread-list button[aria-current='true']")).to_contain_text("<img")
    assert page.locator("#messages img, #thread-list img, #memory-panel img").count() == 0
    assert page.evaluate("window.__owned === undefined")


def test_profiles_and_their_presets_come_from_the_server(
    page: Page, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The profile menu shows what the server lists, and each choice moves the sliders to it."""
    # A profile only the server knows: if the page showed a list of its own, it would lack it.
    extra = GenerationProfile(name="steady", temperature=0.25, top_p=0.55, max_new_tokens=384)
    monkeypatch.setitem(PROFILES, "steady", extra)
    with server.rest() as rest:
        listing = rest.get("/profiles").json()
    assert "steady" in [p["name"] for p in listing["data"]]

    # Before any key is given (auth is on) the menu is already filled and set to the default.
    _open(page, server.base_url + "/")
    options = page.locator("#profile option")
    expect(options).to_have_count(len(listing["data"]))
    assert options.evaluate_all("(all) => all.map((o) => o.value)") == [
        p["name"] for p in listing["data"]
    ]
    expect(page.locator("#profile")).to_have_value(listing["default"])
    for profile in listing["data"]:
        page.locator("#profile").select_option(profile["name"])
        expect(page.locator("#temperature-value")).to_have_text(f"{profile['temperature']:.2f}")
        expect(page.locator("#top-p-value")).to_have_text(f"{profile['top_p']:.2f}")
        expect(page.locator("#max-tokens-value")).to_have_text(str(profile["max_new_tokens"]))

    # A chosen profile's presets are what the model gets, and they survive a reload.
    page.locator("#api-key").fill(API_KEY)
    page.locator("#api-key").press("Enter")
    page.locator("#profile").select_option("professional")
    _send(page, "Hello")
    expect(_last_assistant(page)).not_to_have_class(re.compile(r"streaming|failed"))
    sent = server.model.history[-1]["kwargs"]
    assert (sent["profile"], sent["temperature"], sent["top_p"], sent["max_new_tokens"]) == (
        "professional",
        0.3,
        0.8,
        512,
    )
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#profile")).to_have_value("professional")
    expect(page.locator("#top-p-value")).to_have_text("0.80")


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1360, "height": 900}

# Lines each slot-table heading is laid out on (one per line box of its text).
_HEADING_LINES = """() => [...document.querySelectorAll("#slots thead th")].map((th) => {
    const range = document.createRange();
    range.selectNodeContents(th);
    const tops = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
    return [th.textContent, tops.size];
})"""


def _assert_readable_at(page: Page, size: dict[str, int]) -> None:
    page.set_viewport_size(size)
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#slots tbody tr")).not_to_have_count(0)
    box = page.locator("#message").bounding_box()
    assert box is not None
    assert box["y"] >= 0 and box["y"] + box["height"] <= size["height"], (size, box)
    send = page.locator("#send").bounding_box()
    assert send is not None and send["y"] + send["height"] <= size["height"], (size, send)
    lines = page.evaluate(_HEADING_LINES)
    assert lines and all(n == 1 for _, n in lines), f"wrapped headings at {size}: {lines}"


def test_page_reads_well_on_a_phone_and_a_desktop(page: Page, server: Server) -> None:
    """Message box on the first screen, one-line headings, memos by their text, questions
    leaving the open list once answered, and sliders the user moved kept across profiles."""
    page.set_viewport_size(DESKTOP)
    _open(page, server.base_url + "/")
    page.locator("#api-key").fill(API_KEY)
    page.locator("#api-key").press("Enter")

    # A memo reads as what the user asked to remember, not as its internal key.
    _send(page, "Remember that the spare key is under the blue flowerpot.")
    memo = page.locator("#slots tbody tr[data-slot^='memo:']")
    expect(memo).to_have_count(1)
    expect(memo.locator("th")).to_have_text("Remember")
    expect(memo.locator("td").first).to_have_text("the spare key is under the blue flowerpot")

    # A question met by a question back stays open; once a reply answers it, it leaves.
    open_questions = page.locator("#tracking dd[data-term='open']")
    _send(page, "What is your refund policy?")
    expect(_last_assistant(page).locator(".msg-content")).to_have_text(
        SCRIPTED_REPLIES["What is your refund policy?"]
    )
    expect(open_questions).to_contain_text("What is your refund policy?")
    _send(page, "Online orders.")
    expect(_last_assistant(page).locator(".msg-content")).to_have_text(
        SCRIPTED_REPLIES["Online orders."]
    )
    expect(open_questions).to_have_text("—")

    # A slider the user moved keeps its value across a profile change and says so; the
    # others follow the profile, and a reset gives the moved one back to it.
    page.locator("#profile").select_option("creative")
    expect(page.locator("#temperature-value")).to_have_text("0.90")
    expect(page.locator("#temperature-source")).to_have_text("Set by profile Creative.")
    page.locator("#temperature").focus()
    page.keyboard.press("Home")
    page.locator("#profile").select_option("professional")
    expect(page.locator("#temperature-value")).to_have_text("0.00")
    expect(page.locator("#temperature-source")).to_have_text("Your value; Professional sets 0.30.")
    expect(page.locator("#top-p-value")).to_have_text("0.80")
    expect(page.locator("#top-p-source")).to_have_text("Set by profile Professional.")
    expect(page.locator("#temperature-reset")).to_be_visible()
    expect(page.locator("#top-p-reset")).to_be_hidden()

    # Both widths: the box to write in is on the first screen, the headings on one line, and
    # the moved slider is still the user's after the reload.
    for size in (DESKTOP, PHONE):
        _assert_readable_at(page, size)
        expect(page.locator("#temperature-value")).to_have_text("0.00")
        expect(page.locator("#temperature-source")).to_contain_text("Your value")
        expect(memo.locator("td").first).to_have_text("the spare key is under the blue flowerpot")
    page.locator("#temperature-reset").click()
    expect(page.locator("#temperature-value")).to_have_text("0.30")
    expect(page.locator("#temperature-source")).to_have_text("Set by profile Professional.")
    _send(page, "Hello")
    expect(page.locator("#messages .msg.assistant:not(.streaming)")).to_have_count(4)
    sent = server.model.history[-1]["kwargs"]
    assert (sent["profile"], sent["temperature"], sent["top_p"]) == ("professional", 0.3, 0.8)
