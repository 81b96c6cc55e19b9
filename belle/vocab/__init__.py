"""`belle vocab`: vocabulary extension, adding pieces learned from a (Chinese) corpus to a model's tokenizer
and embeddings."""
