"""`belle gptq`: GPTQ and round-to-nearest quantization through GPTQModel, and evaluating the result."""
