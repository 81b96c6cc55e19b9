"""Decrypt BELLE's XOR-encrypted LLaMA releases (the `*-enc` models) with the original LLaMA weights.

Format (BELLE's `models/decrypt.py`, after point-alpaca): a released file `NAME` ships as
`NAME.<sha256 hex>.enc`. Its first 32 bytes are the raw sha256 digest of the decrypted `NAME`; the rest
is `NAME` XOR a key stream read from one original LLaMA file (`consolidated.00.pth`) for every file.
The stream is cut in 10 MiB blocks: payload block i uses key-file block (i mod n), n = ceil(key bytes /
10 MiB), and the key file's short last block repeats itself to fill a payload block.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
from tqdm import tqdm

from belle.cli import UsageError

DIGEST_BYTES = 32
BLOCK_BYTES = 10 << 20
ORIGINAL_NAME = "consolidated.00.pth"
_ENCRYPTED_NAME = re.compile(r"^(?P<name>.+)\.(?P<digest>[0-9a-f]{64})\.enc$")

Progress = Callable[[int], object]


class _KeyStream:
    """Key bytes by payload offset (bytes after the digest header), laid out in `BLOCK_BYTES` blocks."""

    def __init__(self, file: BinaryIO, size: int, path: Path):
        self.file, self.size, self.path = file, size, path
        self.block = BLOCK_BYTES
        self.blocks = -(-size // self.block)

    def read(self, start: int, length: int) -> bytes:
        """Key bytes for payload offsets `[start, start + length)`."""
        pieces = []
        end = start + length
        while start < end:
            block, within = divmod(start, self.block)
            stop = min(end, (block + 1) * self.block)
            pieces.append(self._from_block(block % self.blocks, within, stop - start))
            start = stop
        return b"".join(pieces)

    def _from_block(self, key_block: int, within: int, length: int) -> bytes:
        """`length` bytes from offset `within` of key block `key_block`, repeating a short block."""
        base = key_block * self.block
        period = min(self.block, self.size - base)
        if within + length <= period:
            return self._read_at(base + within, length)
        whole = self._read_at(base, period)
        first = within % period
        rotated = whole[first:] + whole[:first]
        return (rotated * (length // period + 1))[:length]

    def _read_at(self, offset: int, length: int) -> bytes:
        self.file.seek(offset)
        data = self.file.read(length)
        if len(data) != length:
            raise UsageError(f"original file {self.path} changed size while it was being read")
        return data


def output_name(encrypted: Path) -> str:
    """The released file's name: `NAME.<sha256 hex>.enc` -> `NAME` (a bare `NAME.enc` -> `NAME`)."""
    match = _ENCRYPTED_NAME.match(encrypted.name)
    return match["name"] if match else encrypted.name.removesuffix(".enc")


def expected_digest(encrypted: Path) -> str:
    """The sha256 hex digest of the decrypted file, read from the encrypted file's 32-byte header."""
    try:
        with encrypted.open("rb") as f:
            header = f.read(DIGEST_BYTES)
    except FileNotFoundError:
        raise UsageError(f"encrypted file {encrypted} does not exist") from None
    if len(header) < DIGEST_BYTES:
        raise UsageError(f"{encrypted} is {len(header)} bytes, shorter than its {DIGEST_BYTES}-byte sha256 header")
    digest = header.hex()
    match = _ENCRYPTED_NAME.match(encrypted.name)
    if match and match["digest"] != digest:
        raise UsageError(
            f"{encrypted}: the sha256 in its name ({match['digest']}) differs from the one in its header "
            f"({digest}); the download is probably damaged"
        )
    return digest


def _xor(data: bytes, key: bytes) -> bytes:
    return np.bitwise_xor(np.frombuffer(data, np.uint8), np.frombuffer(key, np.uint8)).tobytes()


def _original_size(original: Path) -> int:
    if not original.is_file():
        raise UsageError(f"original LLaMA file {original} does not exist")
    size = original.stat().st_size
    if size == 0:
        raise UsageError(f"original LLaMA file {original} is empty")
    return size


def decrypt_file(
    encrypted: Path,
    original: Path,
    out: Path,
    chunk_bytes: int = 64 << 20,
    *,
    progress: Progress | None = None,
) -> str:
    """Decrypt one `*.enc` file with the original LLaMA file and return the sha256 hex digest.

    Reads `chunk_bytes` bytes of payload at a time; writes a temporary file beside `out` and renames it
    to `out` only once the digest matches the header. `progress` is called with each chunk's size in bytes.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    expected = expected_digest(encrypted)
    key_size = _original_size(original)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.part")
    hasher = hashlib.sha256()
    try:
        with encrypted.open("rb") as source, original.open("rb") as key_file, partial.open("wb") as sink:
            keys = _KeyStream(key_file, key_size, original)
            source.seek(DIGEST_BYTES)
            offset = 0
            while chunk := source.read(chunk_bytes):
                plain = _xor(chunk, keys.read(offset, len(chunk)))
                sink.write(plain)
                hasher.update(plain)
                offset += len(chunk)
                if progress:
                    progress(len(chunk))
            sink.flush()
            os.fsync(sink.fileno())
        got = hasher.hexdigest()
        if got != expected:
            raise UsageError(
                f"sha256 mismatch decrypting {encrypted} with {original}: expected {expected}, got {got}. "
                f"The original is probably the wrong file or LLaMA version (BELLE keys every file to the "
                f"original LLaMA {ORIGINAL_NAME}), or one of the two files is damaged"
            )
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return got


def file_digest(path: Path, chunk_bytes: int = 64 << 20, *, progress: Progress | None = None) -> str:
    """sha256 hex digest of a file, read `chunk_bytes` bytes at a time."""
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            hasher.update(chunk)
            if progress:
                progress(len(chunk))
    return hasher.hexdigest()


def _encrypted_files(enc_dir: Path) -> list[Path]:
    if not enc_dir.is_dir():
        raise UsageError(f"encrypted folder {enc_dir} does not exist")
    found = sorted(p for p in enc_dir.glob("*.enc") if p.is_file())
    if not found:
        raise UsageError(f"no encrypted files (NAME.<sha256>.enc) in {enc_dir}")
    return found


def original_file(original_dir: Path) -> Path:
    """The LLaMA file BELLE encrypted with: `original_dir/consolidated.00.pth`, or `original_dir` if a file."""
    if original_dir.is_file():
        return original_dir
    if not original_dir.is_dir():
        raise UsageError(f"original LLaMA folder {original_dir} does not exist")
    original = original_dir / ORIGINAL_NAME
    if not original.is_file():
        raise UsageError(
            f"{original} does not exist: BELLE's *-enc releases are keyed to the original LLaMA "
            f"{ORIGINAL_NAME} (pass the folder holding it, or the file itself)"
        )
    return original


def _check_output_folder(out_dir: Path, outputs: dict[Path, int]) -> None:
    """Refuse, before any work, an output folder that is a file, or outputs whose name is taken by a
    folder or by a file of another size (`outputs` maps each output path to its decrypted size)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output folder {out_dir} is a file; name a folder")
    for out, size in outputs.items():
        if out.is_dir() or (out.exists() and not out.is_file()):
            raise UsageError(f"{out} exists and is not a file; move it away or pick another output folder")
        if out.is_file() and out.stat().st_size != size:
            raise UsageError(_taken(out))


def _taken(out: Path) -> str:
    return (f"{out} exists and is not the decrypted file (another size or sha256); belle does not overwrite it: "
            "move it away or pick another output folder")


def _is_done(out: Path, digest: str, progress: Progress) -> bool:
    """Whether `out` exists and holds the decrypted file (sha256 `digest`); an existing file with
    other contents is refused (`_check_output_folder` has checked its size)."""
    if not out.exists():
        return False
    if file_digest(out, progress=progress) != digest:
        raise UsageError(_taken(out))
    return True


def decrypt_folder(
    enc_dir: Path,
    original_dir: Path,
    out_dir: Path,
    *,
    report: Callable[[Path, bool], object] | None = None,
) -> list[Path]:
    """Decrypt every `*.enc` file in `enc_dir` into `out_dir`, each keyed by the same original LLaMA file.

    Outputs that already exist with the right sha256 are kept (a re-run resumes); any other file or
    folder with an output's name is refused with `UsageError`, never overwritten. Other files in
    `enc_dir` (README.md, .gitattributes) are not part of the release format and are left alone.
    `report(output, skipped)` is called after each file. Returns the output paths in name order.
    """
    encrypted = _encrypted_files(enc_dir)
    original = original_file(original_dir)
    digests = {enc: expected_digest(enc) for enc in encrypted}
    sizes = {enc: enc.stat().st_size - DIGEST_BYTES for enc in encrypted}
    _check_output_folder(out_dir, {out_dir / output_name(enc): sizes[enc] for enc in encrypted})
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    with tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, unit_divisor=1024) as bar:
        for enc in encrypted:
            out = out_dir / output_name(enc)
            bar.set_description(out.name)
            start = bar.n
            skipped = _is_done(out, digests[enc], bar.update)
            if not skipped:
                bar.update(start - bar.n)
                decrypt_file(enc, original, out, progress=bar.update)
            outputs.append(out)
            if report:
                report(out, skipped)
    return outputs


def decrypt(enc_dir: Path, original_dir: Path, out_dir: Path) -> int:
    """Decrypt BELLE's XOR-encrypted weight release (`*-enc`) with the original LLaMA weights.

    Args:
        enc_dir: folder of encrypted files as downloaded.
        original_dir: folder with the original LLaMA weights the release was encrypted with.
        out_dir: where the decrypted files are written.
    """
    skipped_count = 0

    def report(out: Path, skipped: bool) -> None:
        nonlocal skipped_count
        skipped_count += skipped
        tqdm.write(f"{'already done' if skipped else 'decrypted'}: {out}")

    outputs = decrypt_folder(enc_dir, original_dir, out_dir, report=report)
    print(f"{len(outputs)} files in {out_dir} ({len(outputs) - skipped_count} decrypted, {skipped_count} already done)")
    return 0
