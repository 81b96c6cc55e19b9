"""MkDocs hook: links from a page to files of the repository outside `docs/`.

Pages link to the repository's files (`../train/configs/quickstart.yaml`) so that they work where
the Markdown is read, on GitHub or in a clone. The site holds only `docs/`, so there such a link
becomes the file's path in code font. A link to a file that does not exist is reported, and fails
the strict build like any other broken link.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.repo_links")

# [text](target) outside code: the target is relative (no scheme, no leading # or /).
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((?![a-z]+:|#|/)([^)#\s]+)(#[^)\s]*)?\)")
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs = Path(os.path.abspath(config["docs_dir"]))
    repo = docs.parent
    page_dir = Path(page.file.abs_src_path).parent

    def rewrite(match: re.Match) -> str:
        text, target = match[1], match[2]
        path = Path(os.path.normpath(page_dir / target))  # lexically: a linked folder stays in the tree
        if path.is_relative_to(docs):
            return match[0]
        if not path.is_relative_to(repo) or not path.exists():
            log.warning("%s links to %s, which is not in the repository", page.file.src_uri, target)
            return match[0]
        shown = path.relative_to(repo).as_posix() + ("/" if path.is_dir() else "")
        return f"`{shown}`" if text.strip("`") in (shown, shown.rstrip("/")) else f"{text} (`{shown}`)"

    pieces = _CODE.split(markdown)
    return "".join(piece if i % 2 else _LINK.sub(rewrite, piece) for i, piece in enumerate(pieces))
