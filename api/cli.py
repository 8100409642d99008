"""The ``steadychat`` command line: a registry of subcommands (chat, build-tiny-model, ...)."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from graph.settings import Settings

__all__ = [
    "SUBCOMMANDS",
    "Conversation",
    "ServiceConversation",
    "Subcommand",
    "main",
    "subcommand",
]

EXIT_WORDS = frozenset({"exit", "quit", "退出"})


@dataclass(frozen=True)
class Subcommand:
    """One ``steadychat <name>`` command: its arguments and the function that runs it."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {}
"""Registered subcommands by name; ``main`` builds its parser from them."""


def subcommand(
    name: str, *, help: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register a function as ``steadychat <name>``.

    Import heavy modules inside the function, not at module level, so that
    ``steadychat --help`` stays fast.

    Args:
        name: The subcommand's name.
        help: One line for ``--help``.
        arguments: Adds the subcommand's arguments to its parser.

    Returns:
        A decorator that registers the function (``(args) -> exit code``) and returns it.
    """

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in SUBCOMMANDS:
            raise ValueError(f"subcommand {name!r} is registered twice")
        SUBCOMMANDS[name] = Subcommand(
            name=name, help=help, add_arguments=arguments or (lambda _parser: None), run=run
        )
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="steadychat",
        description="A conversational agent that stays coherent over hundreds of turns.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS.values():
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``steadychat`` with ``argv`` (default: ``sys.argv[1:]``).

    Args:
        argv: Command-line arguments without the program name.

    Returns:
        The process exit code.
    """
    args = build_parser().parse_args(argv)
    from graph.loading import ModelUnavailableError

    try:
        return int(args._run(args))
    except ModelUnavailableError as exc:
        # One line, no traceback: the message names the offline alternatives.
        print(f"steadychat {args.command}: {exc}", file=sys.stderr)
        return 1


# ----------------------------------------------------------------------------- chat


class Conversation(Protocol):
    """What the terminal chat talks to: one conversation that streams replies."""

    def stream(self, text: str) -> Iterator[str]:
        """Send a user message; yield the reply's text as it is generated."""
        ...

    def reset(self) -> None:
        """Forget the conversation so far."""
        ...

    def set_profile(self, name: str) -> None:
        """Switch the generation profile; raises ``ValueError`` for an unknown name."""
        ...


CHAT_HELP = """\
Commands:
  /help            this list
  /profile NAME    switch the generation profile (general, professional, creative, precise)
  reset            clear the conversation (slots, summaries, memory of this thread)
  exit, quit, 退出  end the chat (Ctrl-D too)
Anything else is sent as a message. Up/down arrows recall earlier lines; Ctrl-C stops a reply."""


class _LineReader:
    """Reads user lines: through ``readline`` (line editing, a history file) on a terminal,
    plainly from the stream otherwise (piped input)."""

    def __init__(self, stdin: TextIO, stdout: TextIO, history_file: Path | None) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._history_file = history_file
        self._readline: Any = None
        self.interactive = stdin.isatty()
        if self.interactive and stdin is sys.stdin:
            try:
                import readline
            except ImportError:  # pragma: no cover - platforms without GNU readline
                readline = None  # type: ignore[assignment]
            self._readline = readline
        if self._readline is not None and history_file is not None:
            import contextlib

            with contextlib.suppress(OSError):
                self._readline.read_history_file(history_file)

    def read(self) -> str | None:
        """The next line without its newline; None at end of input."""
        if self._readline is not None:
            try:
                return input("you> ")
            except EOFError:
                self._stdout.write("\n")
                return None
        if self.interactive:
            self._stdout.write("you> ")
            self._stdout.flush()
        line = self._stdin.readline()
        return line if line else None

    def save(self) -> None:
        """Write the history file (terminal sessions only)."""
        if self._readline is None or self._history_file is None:
            return
        import contextlib

        with contextlib.suppress(OSError):
            self._history_file.parent.mkdir(parents=True, exist_ok=True)
            self._readline.set_history_length(1000)
            self._readline.write_history_file(self._history_file)


def run_chat(
    conversation: Conversation,
    *,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    history_file: Path | None = None,
) -> int:
    """Read user lines from ``stdin`` and print streamed replies until exit or end of input.

    Args:
        conversation: Where messages go.
        stdin: User input, one message per line.
        stdout: Replies, flushed token by token.
        stderr: Notices and errors.
        history_file: Where a terminal session keeps its ``readline`` history.

    Returns:
        0 on ``exit``/``quit``/``退出`` or end of input, 130 on Ctrl-C at the prompt.
    """
    reader = _LineReader(stdin, stdout, history_file)
    if reader.interactive:
        print("Type a message; /help lists the commands, 'exit' ends.", file=stderr)
    try:
        return _chat_loop(conversation, reader, stdout=stdout, stderr=stderr)
    finally:
        reader.save()


def _chat_loop(
    conversation: Conversation, reader: _LineReader, *, stdout: TextIO, stderr: TextIO
) -> int:
    while True:
        try:
            line = reader.read()
        except KeyboardInterrupt:
            stdout.write("\n")
            return 130
        if line is None:
            return 0
        text = line.strip()
        if not text:
            continue
        if text.lower() in EXIT_WORDS:
            return 0
        if text.lower() in {"/help", "help", "/?"}:
            print(CHAT_HELP, file=stderr)
            continue
        if text.lower() in {"reset", "/reset"}:
            conversation.reset()
            print("(conversation cleared)", file=stderr)
            continue
        if text.startswith("/profile"):
            name = text[len("/profile") :].strip()
            try:
                conversation.set_profile(name)
            except ValueError as exc:
                print(f"error: {exc}", file=stderr)
            else:
                print(f"(profile: {name})", file=stderr)
            continue
        if text.startswith("/") and " " not in text:
            print(f"unknown command {text}; /help lists the commands", file=stderr)
            continue
        stdout.write("assistant> ")
        stdout.flush()
        replies = conversation.stream(text)
        try:
            for piece in replies:
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            print("\n(interrupted)", file=stderr)
        except ValueError as exc:
            print(f"\nerror: {exc}", file=stderr)
        finally:
            close = getattr(replies, "close", None)
            if close is not None:
                close()  # stops generation when the reply was interrupted
        stdout.write("\n")
        stdout.flush()


def _chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="HF model id, local folder, 'smollm2' or 'tiny' (default: STEADYCHAT_MODEL)",
    )
    parser.add_argument("--profile", help="general, professional, creative or precise")
    parser.add_argument("--thread", help="thread id to continue (default: a new thread)")
    parser.add_argument("--max-new-tokens", type=int, help="reply length limit in tokens")


class ServiceConversation:
    """A conversation on one thread of the turn graph (slots, memory, summaries, checkpoints).

    The service is async; it runs on an event loop in a background thread so that the terminal
    loop can stay synchronous.
    """

    def __init__(self, settings: Settings, *, thread_id: str | None = None) -> None:
        import asyncio
        import threading

        from graph.compose import open_service

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._cm = open_service(settings)
        self._service = self._call(self._cm.__aenter__())
        self.thread_id = thread_id or f"cli-{uuid.uuid4().hex[:12]}"
        self._call(self._service.ensure_thread(self.thread_id))
        self._profile = settings.default_profile

    def _call(self, coro: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def set_profile(self, name: str) -> None:
        """Switch the generation profile for later replies."""
        from nodes.profiles import get_profile

        get_profile(name)
        self._profile = name

    def reset(self) -> None:
        """Clear the thread (state, slots, vectors); the id stays."""
        self._call(self._service.reset_thread(self.thread_id))

    def stream(self, text: str) -> Iterator[str]:
        """Run one turn, yielding tokens; closing early cancels the turn (nothing is saved)."""
        import asyncio
        import contextlib

        from graph.errors import ServiceError

        context = self._service.context(profile=self._profile)
        events = self._service.stream_turn(self.thread_id, text, context=context)
        pending: list[asyncio.Future[Any]] = []

        async def next_event() -> Any:
            # The step runs as a task of its own: Ctrl-C interrupts only the wait for it here,
            # so ``close`` must cancel it and let it unwind before closing the stream.
            step = asyncio.ensure_future(anext(events))
            pending[:] = [step]
            return await step

        async def close() -> None:
            for step in pending:
                step.cancel()
                with contextlib.suppress(BaseException):
                    await step
            await events.aclose()

        try:
            while True:
                try:
                    event = self._call(next_event())
                except StopAsyncIteration:
                    return
                except ServiceError as exc:
                    raise ValueError(str(exc)) from exc
                if event.type == "token":
                    yield event.text
                elif event.type == "error":
                    raise ValueError(str(event.error))
        finally:
            self._call(close())

    def close(self) -> None:
        """Close the service and stop its event loop."""
        self._call(self._cm.__aexit__(None, None, None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def _settings_from_args(args: argparse.Namespace, **extra: object) -> Settings | None:
    """Settings from the environment with the command's overrides; None (after printing) if bad."""
    from graph.settings import Settings

    overrides: dict[str, object] = {k: v for k, v in extra.items() if v is not None}
    if getattr(args, "model", None):
        overrides["model"] = args.model
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _quiet_model_loading(settings: Settings) -> None:
    """Keep the libraries' warnings out of the terminal; progress bars stay for real models
    (a first download or conversion takes minutes), the tiny model loads too fast to need one."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if settings.model == "tiny":
        import os

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        hf_logging.disable_progress_bar()
        import torch

        # The tiny model's matrices are too small for intra-op threads to pay off.
        torch.set_num_threads(1)


@subcommand("chat", help="chat with the model in the terminal", arguments=_chat_arguments)
def chat_command(args: argparse.Namespace) -> int:
    """``steadychat chat``: a streamed terminal conversation on a thread of the turn graph."""
    settings = _settings_from_args(
        args, default_profile=args.profile, max_new_tokens=args.max_new_tokens
    )
    if settings is None:
        return 2
    _quiet_model_loading(settings)
    try:
        conversation = ServiceConversation(settings, thread_id=args.thread)
    except (ValueError, OSError) as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return 1
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    print(f"(thread {conversation.thread_id})", file=sys.stderr)
    try:
        return run_chat(
            conversation,
            stdin=sys.stdin,
            stdout=sys.stdout,
            stderr=sys.stderr,
            history_file=settings.data_dir / "chat_history",
        )
    finally:
        conversation.close()


# ----------------------------------------------------------------------------- service


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="HF model id, local folder, 'smollm2' or 'tiny' (default: STEADYCHAT_MODEL)",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument(
        "--engine-url",
        help="generate with this OpenAI-compatible engine (default: STEADYCHAT_ENGINE_URL); "
        "--model then names the tokenizer and chat template only",
    )
    parser.add_argument(
        "--engine-model", help="model name the engine serves (default: STEADYCHAT_ENGINE_MODEL)"
    )


@subcommand(
    "serve", help="run the HTTP service (REST, OpenAI API, web page)", arguments=_serve_arguments
)
def serve_command(args: argparse.Namespace) -> int:
    """``steadychat serve``: the HTTP service on the embedded defaults (SQLite + local Chroma)."""
    settings = _settings_from_args(
        args,
        host=args.host,
        port=args.port,
        engine_url=args.engine_url,
        engine_model=args.engine_model,
    )
    if settings is None:
        return 2
    _quiet_model_loading(settings)
    from graph.loading import resolve_model_source

    try:
        # Before uvicorn starts: a missing model is one line here, not a failed lifespan, and
        # a first conversion shows its progress before the server's log begins. With an
        # engine only the tokenizer is local; its loading reports for itself.
        if not settings.engine_url:
            resolve_model_source(settings)
    except ValueError as exc:
        print(f"steadychat serve: {exc}", file=sys.stderr)
        return 1
    from api.serve import serve

    serve(settings)
    return 0


def _replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", help="JSON list: strings (user turns) or {role, content, timestamp}"
    )
    parser.add_argument("--thread", required=True, help="thread to replay into (created if new)")
    parser.add_argument(
        "--model",
        help="HF model id, local folder, 'smollm2' or 'tiny' (default: STEADYCHAT_MODEL)",
    )


@subcommand(
    "replay", help="replay a conversation or transcript into a thread", arguments=_replay_arguments
)
def replay_command(args: argparse.Namespace) -> int:
    """``steadychat replay FILE --thread ID``: load a conversation to debug memory."""
    settings = _settings_from_args(args)
    if settings is None:
        return 2
    _quiet_model_loading(settings)
    from api.replay import run_replay

    return run_replay(settings, Path(args.file), args.thread)


def _state_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("thread", help="thread id")


@subcommand("state", help="print a thread's state as JSON", arguments=_state_arguments)
def state_command(args: argparse.Namespace) -> int:
    """``steadychat state ID``: slots, summaries, window and the last context account.

    It reads the checkpoint only: no model or embedder is loaded.
    """
    settings = _settings_from_args(args)
    if settings is None:
        return 2
    from api.replay import run_state

    return run_state(settings, args.thread)


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        choices=[
            "locomo",
            "long-conversation",
            "memory",
            "engine",
            "framework",
            "load",
            "planted",
            "allocator",
        ],
        help="which benchmark",
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark")


@subcommand(
    "bench", help="run a benchmark (prints ratios against baselines)", arguments=_bench_arguments
)
def bench_command(args: argparse.Namespace) -> int:
    """``steadychat bench NAME``: run one of the benchmarks under bench/."""
    if args.name == "locomo":
        from bench import locomo as module
    elif args.name == "memory":
        from bench import memory_latency as module  # type: ignore[no-redef]
    elif args.name == "planted":
        from bench import planted_answers as module  # type: ignore[no-redef]
    elif args.name == "engine":
        from bench import engine as module  # type: ignore[no-redef]
    elif args.name == "framework":
        from bench import framework as module  # type: ignore[no-redef]
    elif args.name == "load":
        from bench import load as module  # type: ignore[no-redef]
    elif args.name == "allocator":
        from bench import allocator as module  # type: ignore[no-redef]
    else:
        from bench import long_conversation as module  # type: ignore[no-redef]
    result = module.main(args.rest)
    return int(result or 0)


# ----------------------------------------------------------------------------- maintenance


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--days", type=float, help="idle age in days (default: STEADYCHAT_RETENTION_IDLE_DAYS)"
    )


@subcommand("sweep", help="delete threads idle past the retention age", arguments=_sweep_arguments)
def sweep_command(args: argparse.Namespace) -> int:
    """``steadychat sweep [--days N]``: the retention sweep, once."""
    settings = _settings_from_args(args)
    if settings is None:
        return 2
    from api.maintenance import run_sweep

    return run_sweep(settings, days=args.days)


@subcommand("scrub", help="remove deleted data's bytes from the local files (server stopped)")
def scrub_command(args: argparse.Namespace) -> int:
    """``steadychat scrub``: vacuum the SQLite checkpoints and the local Chroma store."""
    settings = _settings_from_args(args)
    if settings is None:
        return 2
    from api.maintenance import run_scrub

    return run_scrub(settings)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Stop the server of the source first. Exit codes: 0 copied and verified (or counted "
        "with --dry-run), 1 the target does not match after the copy, 2 a missing, invalid or "
        "busy source, or an unreachable target, 3 the target holds other content for some "
        "threads (nothing written; see --overwrite), 130 interrupted (run it again to resume)."
    )
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="DATA_DIR",
        help="data dir of the embedded deployment (default: STEADYCHAT_DATA_DIR)",
    )
    parser.add_argument(
        "--from-checkpoints",
        type=Path,
        metavar="FILE",
        help="its SQLite checkpoints file (default: DATA_DIR/checkpoints.sqlite)",
    )
    parser.add_argument(
        "--from-chroma-path",
        type=Path,
        metavar="DIR",
        help="its local Chroma folder (default: STEADYCHAT_CHROMA_PATH or DATA_DIR/chroma)",
    )
    parser.add_argument(
        "--to-checkpointer-url",
        metavar="URL",
        help="target PostgreSQL, postgresql://... (default: STEADYCHAT_CHECKPOINTER_URL)",
    )
    parser.add_argument(
        "--to-chroma-url",
        metavar="URL",
        help="target Chroma server, http://host:port (default: STEADYCHAT_CHROMA_URL)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace threads and records that the target holds with other content",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="only count what would be copied; write nothing"
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=500,
        help="Chroma records per read and write (default 500)",
    )


@subcommand(
    "migrate",
    help="move an embedded deployment (SQLite + local Chroma) to PostgreSQL + a Chroma server",
    arguments=_migrate_arguments,
)
def migrate_command(args: argparse.Namespace) -> int:
    """``steadychat migrate``: copy threads, history, registry and vectors; verify the copy."""
    settings = _settings_from_args(args)
    if settings is None:
        return 2
    from api.maintenance import run_migrate

    return run_migrate(
        settings,
        data_dir=args.source,
        checkpoints=args.from_checkpoints,
        chroma_path=args.from_chroma_path,
        checkpointer_url=args.to_checkpointer_url,
        chroma_url=args.to_chroma_url,
        overwrite=args.overwrite,
        dry_run=args.dry_run,
        batch_size=args.batch_size,
    )


# ----------------------------------------------------------------------------- tiny model


def _build_tiny_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="folder to build the model into")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and tokenizer")


@subcommand(
    "build-tiny-model",
    help="build the tiny random-weight Qwen3 model used offline",
    arguments=_build_tiny_arguments,
)
def build_tiny_model_command(args: argparse.Namespace) -> int:
    """``steadychat build-tiny-model PATH``: build (or reuse) the tiny model and print its path."""
    from graph.tiny_model import build_tiny_model

    try:
        path = build_tiny_model(args.path, seed=args.seed)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
