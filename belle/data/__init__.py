"""`belle data`: convert and tokenize conversation data (and, later, generate it)."""
