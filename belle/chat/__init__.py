"""`belle chat` and `belle serve`: web chat, terminal chat and an OpenAI-compatible API over the generation engine."""
