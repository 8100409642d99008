"""A deterministic long customer-service conversation used by tests and benchmarks."""

from __future__ import annotations

import random

TOPICS = [
    ("shipping", "When will my parcel arrive, and can I change the delivery address?"),
    ("refund", "How long does a refund take to reach my card?"),
    ("warranty", "Does the warranty cover a cracked screen on the tablet?"),
    ("billing", "Why was I charged twice on my last invoice?"),
    ("account", "How do I turn on two-factor authentication for my account?"),
    ("returns", "Can I return the headphones if I opened the box?"),
]

FILLER = [
    "Thanks, that helps. Let me check something else on my side first.",
    "I see. The tracking page still shows the parcel at the depot in Lyon.",
    "My colleague Marta said the store in Porto had the same model in stock.",
    "The invoice mentions a service fee that I do not remember agreeing to.",
    "I tried restarting the router and the app twice but nothing changed.",
    "Could you explain the difference between the standard and premium plans?",
    "Okay. I will wait for the email confirmation then.",
    "The product page said the battery lasts ten hours, mine lasts about four.",
]


def scripted_user_turns(n: int, *, seed: int = 7) -> list[str]:
    """``n`` user turns: personal facts early, a correction later, topics and questions around."""
    rng = random.Random(seed)
    fixed = {
        1: "Hi, my name is Alice Martin and I need help with an order.",
        2: "My email is alice.martin@example.com and my order number is #20240815CN001.",
        3: "Please reply in English and do not use abbreviations.",
        5: "Remember that I prefer delivery after 6 pm.",
    }
    correction_turn = max(6, int(n * 0.6))
    turns: list[str] = []
    for t in range(1, n + 1):
        if t in fixed:
            turns.append(fixed[t])
        elif t == correction_turn:
            turns.append("Actually my email is alice.m@example.org now, please update it.")
        elif t % 7 == 0:
            turns.append(rng.choice(TOPICS)[1])
        else:
            turns.append(rng.choice(FILLER))
    return turns


def scripted_reply(user_text: str, turn: int) -> str:
    """A plausible assistant reply of a few sentences (deterministic)."""
    return (
        f"Thank you for the details in message {turn}. I have noted that: {user_text[:60]} "
        "I will keep your order and contact details on file and follow up on anything open. "
        "Is there anything else I can check for you today?"
    )
