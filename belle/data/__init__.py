"""`belle data`: make instruction data with an LLM (self-instruct tasks, multi-turn dialogues), convert and
tokenize conversation data, and look at it and clean it (stats, dedup, filter)."""
