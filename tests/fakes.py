"""Test doubles; the scripted chat model lives in bench/ so that benchmarks run without tests/."""

from bench.fakes import ScriptedChatModel

__all__ = ["ScriptedChatModel"]
