"""Where a chat front end gets its replies: models loaded in this process, or an OpenAI-compatible
server (`belle serve`, vLLM, ...). Both offer `names` and `stream(model, messages, params)`, a
generator of text deltas; closing the generator (Stop, a new message) ends the generation.
"""

from __future__ import annotations

import os
from typing import Iterator

from belle.generation import Engine, GenerationParams


class LocalBackend:
    """Engines in this process. A history too long for the context loses its oldest exchanges."""

    def __init__(self, engines: dict[str, Engine]):
        self.engines = engines
        self.names = list(engines)

    def stream(self, model: str, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[str]:
        yield from self.engines[model].chat(messages, params)


class RemoteBackend:
    """An OpenAI-compatible server at `base_url` (ending in `/v1`); the key comes from `api_key_env`."""

    def __init__(self, base_url: str, api_key_env: str = "BELLE_API_KEY", timeout_s: float = 600):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY", timeout=timeout_s, max_retries=1)
        self.names = [model.id for model in self.client.models.list()]

    def stream(self, model: str, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[str]:
        response = self.client.chat.completions.create(
            model=model,
            messages=messages,
            stream=True,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            extra_body={"top_k": params.top_k, "repetition_penalty": params.repetition_penalty},
        )
        with response:  # leaving early closes the connection, which cancels the server's generation
            for chunk in response:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
