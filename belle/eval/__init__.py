"""Evaluation: eval sets, judge prompts and score parsing, answer generation, judging and reports."""
