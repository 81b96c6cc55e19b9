"""Test helpers that ship with belle: a scripted OpenAI-compatible server (`belle.testing.openai_stub`)
and a short training of the tiny model on its corpus (`belle.testing.tiny_training`)."""
