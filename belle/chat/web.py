"""`belle chat`: the web chat, a Gradio page over a `ChatBackend` (models in this process, or a server).

Replies stream as they are generated; a reply the server cut off ends in a `[reply cut off: why]`
line, which is left out of the conversation sent with the next message. Stop ends the generation;
the chat's own buttons regenerate the last reply, undo the last exchange and clear the
conversation. The system prompt, the decoding settings and, with several models, the model are
under "Settings". Replies are generated one at a time: other tabs wait in Gradio's queue.
"""

from __future__ import annotations

from typing import Any, Iterator

import gradio as gr

from belle.chat.backends import CUT_PREFIX, BackendError, ChatBackend, ReplyCut, cut_note
from belle.generation import GenerationParams, PromptTooLong

TITLE = "belle chat"
REMOTE_MAX_NEW_TOKENS = 4096
# Fonts the browser already has: the default theme's Google Fonts are unreachable on closed networks.
CUT_SEPARATOR = "\n\n"  # between a cut reply and its note
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def text_of(content: Any) -> str:
    """The text of a Gradio message's content: a string, or a list of parts such as
    `{"type": "text", "text": ...}`; files and components contribute nothing."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "") if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return "".join(text_of(part) for part in content)
    return ""


def without_cut_note(reply: str) -> str:
    """`reply` without the note that `chat` puts under a cut reply."""
    if reply.startswith(CUT_PREFIX):
        return ""
    return reply.rpartition(CUT_SEPARATOR + CUT_PREFIX)[0] if CUT_SEPARATOR + CUT_PREFIX in reply else reply


def to_messages(message: Any, history: list[dict[str, Any]], system: str) -> list[dict[str, str]]:
    """The conversation for the backend: the system prompt, the answered exchanges of Gradio's
    `history` (a user turn left without a reply, after an error or a Stop, is dropped; the note
    under a cut reply too) and `message`."""
    exchanges: list[dict[str, str]] = []
    for turn in history:
        role, text = turn["role"], text_of(turn["content"])
        if role == "assistant":
            text = without_cut_note(text)
        if role == "user":
            if exchanges and exchanges[-1]["role"] == "user":
                exchanges.pop()
            exchanges.append({"role": "user", "content": text})
        elif role == "assistant" and exchanges:
            if exchanges[-1]["role"] == "assistant":
                exchanges[-1]["content"] += text
            else:
                exchanges.append({"role": "assistant", "content": text})
    if exchanges and exchanges[-1]["role"] == "user":
        exchanges.pop()
    return ([{"role": "system", "content": system}] if system else []) + exchanges + [{"role": "user", "content": text_of(message)}]


def max_new_tokens_limit(backend: ChatBackend, params: GenerationParams) -> int:
    """The largest reply the slider offers: the backend's context length or, for a server, whose
    limits the page cannot see, `REMOTE_MAX_NEW_TOKENS` (or `params.max_new_tokens`, if larger)."""
    return backend.context_length or max(REMOTE_MAX_NEW_TOKENS, params.max_new_tokens)


def build_app(backend: ChatBackend, params: GenerationParams, system: str = "") -> gr.Blocks:
    """The chat page (a `gr.ChatInterface`, which is a `gr.Blocks`) for `backend`'s models.

    `params` and `system` are the settings a new page starts with. The page's API endpoint is
    `/chat`: (message, system, temperature, top_p, top_k, repetition_penalty, max_new_tokens[, model])
    returns the reply; `model` is there only when the backend has several models.
    """
    names = backend.names

    def chat(message: Any, history: list[dict[str, Any]], system: str, temperature: float, top_p: float,
             top_k: float, repetition_penalty: float, max_new_tokens: float, model: str = names[0]) -> Iterator[str]:
        """Stream the reply to `message` after `history`: yields the reply so far, at least once."""
        try:
            settings = GenerationParams(temperature, top_p, int(top_k), repetition_penalty, int(max_new_tokens), stop=params.stop)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        stream = backend.stream(model, to_messages(message, history, system), settings)
        reply = ""
        try:
            for delta in stream:
                reply += delta
                yield reply
        except ReplyCut as e:
            reply += (CUT_SEPARATOR if reply else "") + cut_note(e)
            yield reply
        except PromptTooLong as e:
            raise gr.Error(f"cannot reply: {e}. Clear the conversation or lower max new tokens.") from None
        except BackendError as e:
            raise gr.Error(f"the model server failed: {e}") from None
        finally:
            stream.close()  # Stop closes this generator; closing the stream ends the generation
        if not reply:
            yield ""

    limit = max_new_tokens_limit(backend, params)
    settings = [
        gr.Textbox(system, label="System prompt", lines=2),
        gr.Slider(0, 2, params.temperature, step=0.05, label="Temperature", info="0 decodes greedily"),
        gr.Slider(0.05, 1, params.top_p, step=0.05, label="Top p"),
        gr.Slider(0, 100, params.top_k, step=1, label="Top k", info="0 turns it off"),
        gr.Slider(1, 2, params.repetition_penalty, step=0.05, label="Repetition penalty"),
        gr.Slider(1, limit, min(params.max_new_tokens, limit), step=1, label="Max new tokens"),
    ]
    if len(names) > 1:
        settings.append(gr.Dropdown(names, value=names[0], label="Model"))
    return gr.ChatInterface(
        chat,
        chatbot=gr.Chatbot(label=names[0] if len(names) == 1 else "Chat", buttons=["copy", "copy_all"], scale=1),
        additional_inputs=settings,
        additional_inputs_accordion=gr.Accordion("Settings", open=False),
        title=TITLE,
        api_name="chat",
        analytics_enabled=False,
        fill_height=True,
    )


def launch(backend: ChatBackend, params: GenerationParams, *, system: str = "",
           host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    """Serve the chat page at http://HOST:PORT until interrupted; a public gradio.live link only with `share`."""
    app = build_app(backend, params, system)
    app.queue(default_concurrency_limit=1)
    _, local_url, share_url = app.launch(server_name=host, server_port=port, share=share, theme=THEME,
                                         quiet=True, prevent_thread_lock=True)
    print(f"belle chat: {local_url}" + (f" (public link: {share_url})" if share_url else ""), flush=True)
    app.block_thread()
