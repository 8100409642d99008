"""Reading the server-sent events of a response body, as a client would."""

from __future__ import annotations


def sse_events(body: str) -> list[tuple[str, str]]:
    """Split an SSE body into (event name, data) pairs, in order (``message`` when unnamed)."""
    events: list[tuple[str, str]] = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].removeprefix(" "))
        if data:
            events.append((name, "\n".join(data)))
    return events
