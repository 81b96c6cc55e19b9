"""`belle generate`: batch inference, BELLE's `inference.py --infer_file`, over a JSON-lines prompts file,
with a local model (batched by length) or any OpenAI-compatible server; resumable by id."""
