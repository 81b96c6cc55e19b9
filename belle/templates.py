"""Prompt templates: a frozen registry of formats, each rendering a conversation as pieces.

A piece is `(text, trained)`. Training tokenizes each piece on its own and concatenates the ids,
so no token ever merges across a turn boundary (BELLE issue 337); generation builds its prompt the
same way. For the `belle` template, a user turn with the reply header is one piece,
`"Human: \\n" + content + "\\n\\nAssistant: \\n"`, and an assistant turn is `content + EOS`.

Every template also emits an equivalent Jinja `chat_template`, saved into `tokenizer_config.json`,
so `apply_chat_template`, vLLM and TGI render the same text as `render_text`. They tokenize that
text as one string, which gives training's tokens with a byte-level BPE tokenizer (special tokens
split the turns) but not with a SentencePiece (Metaspace) one: encoding each piece alone starts it
with `▁`, a whole string only at its start, so a served multi-turn prompt lacks the `▁` before each
later turn that training saw (a first turn agrees). belle's own engine encodes prompts piece by
piece (`encode_prompt`). The `model` template goes the other way: it uses a tokenizer's own Jinja
and derives the pieces from it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

Piece = tuple[str, bool]


@dataclass(frozen=True)
class Template:
    """A prompt format. `{content}` marks a message's text; `{bos}` and `{eos}` the tokenizer's tokens.

    Args:
        user: a user turn.
        assistant_header: follows a user turn when a reply follows (or a generation prompt is asked).
        assistant_end: follows an assistant reply and is trained, so the model learns to stop.
        separator: follows `assistant_end`; not trained.
        system: a system message, placed before the first turn.
        system_in_first_user: put the rendered `system` inside the first user turn instead (llama2).
        prefix: starts every conversation.
        default_system: used when a conversation has no system message.
        chat_template: for the `model` template only: the tokenizer's own Jinja source.
    """

    name: str
    user: str = "{content}"
    assistant_header: str = ""
    assistant_end: str = "{eos}"
    separator: str = ""
    system: str = "{content}\n\n"
    system_in_first_user: bool = False
    prefix: str = ""
    default_system: str | None = None
    chat_template: str | None = None


CHATML = Template(
    name="chatml",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_header="<|im_start|>assistant\n",
    assistant_end="<|im_end|>",
    separator="\n",
    system="<|im_start|>system\n{content}<|im_end|>\n",
)
TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            name="belle",
            user="Human: \n{content}",
            assistant_header="\n\nAssistant: \n",
        ),
        Template(name="raw", system="{content}\n"),
        CHATML,
        dataclasses.replace(CHATML, name="qwen", default_system="You are a helpful assistant."),
        Template(
            name="llama2",
            user="{bos}[INST] {content} [/INST]",
            assistant_header=" ",
            assistant_end=" {eos}",
            system="<<SYS>>\n{content}\n<</SYS>>\n\n",
            system_in_first_user=True,
        ),
        Template(
            name="llama3",
            prefix="<|begin_of_text|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
            assistant_end="<|eot_id|>",
            system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        ),
    )
}
TEMPLATE_NAMES = (*TEMPLATES, "model")


def get_template(name: str, tokenizer: Any = None) -> Template:
    """The registered template `name`; `model` wraps `tokenizer.chat_template`."""
    if name == "model":
        source = getattr(tokenizer, "chat_template", None)
        if not source:
            raise ValueError("template 'model' needs a tokenizer with a chat_template; pick one of " + ", ".join(TEMPLATES))
        return Template(name="model", chat_template=source)
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; choose from {', '.join(TEMPLATE_NAMES)}")
    return TEMPLATES[name]


def render_pieces(
    template: Template,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = False,
    bos_token: str = "",
    eos_token: str = "",
) -> list[Piece]:
    """Render messages as `(text, trained)` pieces; consecutive untrained text is one piece.

    With `add_generation_prompt`, a history ending in a user turn ends with the reply header.
    """
    if template.chat_template is not None:
        return _model_pieces(template.chat_template, messages, add_generation_prompt, bos_token, eos_token)

    def fill(fmt: str, content: str = "") -> str:
        return fmt.replace("{bos}", bos_token).replace("{eos}", eos_token).replace("{content}", content)

    system = template.default_system
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    pieces: list[Piece] = []

    def emit(text: str, trained: bool) -> None:
        if pieces and not trained and not pieces[-1][1]:
            pieces[-1] = (pieces[-1][0] + text, False)
        elif text:
            pieces.append((text, trained))

    emit(fill(template.prefix), False)
    if system is not None and not template.system_in_first_user:
        emit(fill(template.system, system), False)
    for i, message in enumerate(messages):
        content = message["content"]
        if message["role"] == "user":
            if i == 0 and system is not None and template.system_in_first_user:
                content = fill(template.system, system) + content
            header = template.assistant_header if i + 1 < len(messages) or add_generation_prompt else ""
            emit(fill(template.user, content) + header, False)
        else:
            emit(content + fill(template.assistant_end), True)
            emit(fill(template.separator), False)
    return pieces


def render_text(
    template: Template,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = False,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    return "".join(text for text, _ in render_pieces(template, messages, add_generation_prompt, bos_token, eos_token))


def _model_pieces(source: str, messages: list[dict[str, str]], add_generation_prompt: bool, bos: str, eos: str) -> list[Piece]:
    """Pieces of a foreign Jinja template, found by rendering growing prefixes of the history.

    Each assistant reply is the text that rendering it adds to the prompt ending in the reply header.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    def render(history: list[dict[str, str]], generation: bool) -> str:
        rendered, _ = render_jinja_template(
            [history], chat_template=source, add_generation_prompt=generation, bos_token=bos, eos_token=eos
        )
        return rendered[0]

    pieces: list[Piece] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, full = render(messages[:i], True), render(messages[: i + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError(
                "the tokenizer's chat_template does not render a conversation as a growing prefix, so its "
                "assistant turns cannot be located for masking; use a registered template instead"
            )
        pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    final = render(messages, add_generation_prompt)
    if not final.startswith(done):
        raise ValueError("the tokenizer's chat_template renders the finished conversation differently from its turns")
    pieces.append((final[len(done):], False))
    return [piece for piece in pieces if piece[0]]


def to_jinja(template: Template) -> str:
    """A Jinja `chat_template` that renders exactly what `render_text` does."""
    if template.chat_template is not None:
        return template.chat_template

    def out(fmt: str, content: str = "''") -> str:
        return f"{{{{- {_expression(fmt, content)} -}}}}" if fmt else ""

    default = _literal(template.default_system) if template.default_system is not None else "none"
    if template.system_in_first_user:
        system_block = ""
        first_user = (
            "{%- if system is not none and (loop.index0 == 0 or (loop.index0 == 1 and messages[0]['role'] == 'system')) -%}"
            + out(template.user, f"({_expression(template.system, 'system')}) + message['content']")
            + "{%- else -%}" + out(template.user, "message['content']") + "{%- endif -%}"
        )
    else:
        system_block = "{%- if system is not none -%}" + out(template.system, "system") + "{%- endif -%}"
        first_user = out(template.user, "message['content']")
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}"
        f"{{%- else -%}}{{%- set system = {default} -%}}{{%- endif -%}}"
        + out(template.prefix)
        + system_block
        + "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        + first_user
        + "{%- if not loop.last or add_generation_prompt -%}" + out(template.assistant_header) + "{%- endif -%}"
        "{%- elif message['role'] == 'assistant' -%}"
        + out("{content}" + template.assistant_end + template.separator, "message['content']")
        + "{%- endif -%}{%- endfor -%}"
    )


def _expression(fmt: str, content: str) -> str:
    """A Jinja expression for a format string: literals joined with `bos_token`, `eos_token` and `content`."""
    names = {"{bos}": "bos_token", "{eos}": "eos_token", "{content}": content}
    parts = re.split(r"(\{bos\}|\{eos\}|\{content\})", fmt)
    return " + ".join(names.get(part) or _literal(part) for part in parts if part)


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
