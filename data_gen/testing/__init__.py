"""Test helpers for code that talks to OpenAI-compatible endpoints (see fake_openai.FakeOpenAI)."""

from data_gen.testing.fake_openai import FAULTS, FakeOpenAI, body_hash

__all__ = ["FAULTS", "FakeOpenAI", "body_hash"]
