"""Vocabulary extension: add pieces learned from a (Chinese) corpus to a model's tokenizer and embeddings."""
