"""Test helpers that ship with belle: a scripted OpenAI-compatible server (`belle.testing.openai_stub`)."""
