"""`belle eval`: an LLM judge scores a model's answers to an eval set: eval sets, judge prompts and score
parsing, answer generation, judging (one answer, or two models pairwise), reports and the scoring page."""
