"""Decryption of BELLE's XOR-encrypted releases, against files encrypted the way BELLE's release was."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest

from belle.cli import UsageError
from belle.models import decrypt as dec


def belle_encrypt(plain: bytes, key: bytes, block: int) -> bytes:
    """The encrypt side as BELLE/point-alpaca ran it: digest header, then `block`-byte chunks of the
    plain file XOR successive `block`-byte reads of the key file, rewinding it at its end and repeating
    a short key read across the chunk."""
    keys = io.BytesIO(key)
    out = [hashlib.sha256(plain).digest()]
    for start in range(0, len(plain), block):
        chunk = np.frombuffer(plain[start : start + block], np.uint8)
        key_chunk = keys.read(block)
        if not key_chunk:
            keys.seek(0)
            key_chunk = keys.read(block)
        stream = np.resize(np.frombuffer(key_chunk, np.uint8), len(chunk))
        out.append((chunk ^ stream).tobytes())
    return b"".join(out)


def write_release(folder: Path, name: str, plain: bytes, key: bytes, block: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{hashlib.sha256(plain).hexdigest()}.enc"
    path.write_bytes(belle_encrypt(plain, key, block))
    return path


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(dec, "BLOCK_BYTES", 1000)
    return 1000


@pytest.mark.parametrize("chunk_bytes", [1, 333, 1000, 4096, 64 << 20])
@pytest.mark.parametrize("key_size", [7, 999, 2000, 2500, 9000])
def test_decrypt_file_matches_plain(tmp_path: Path, small_blocks: int, chunk_bytes: int, key_size: int) -> None:
    rng = np.random.default_rng(key_size + chunk_bytes)
    plain, key = rng.bytes(7300), rng.bytes(key_size)
    original = tmp_path / "consolidated.00.pth"
    original.write_bytes(key)
    enc = write_release(tmp_path / "enc", "pytorch_model.bin", plain, key, small_blocks)
    out = tmp_path / "out" / "pytorch_model.bin"

    digest = dec.decrypt_file(enc, original, out, chunk_bytes=chunk_bytes)

    assert out.read_bytes() == plain
    assert digest == hashlib.sha256(plain).hexdigest()


def test_decrypt_file_real_block_size(tmp_path: Path) -> None:
    """10 MiB blocks, a key shorter than the plain file and not a multiple of the block or chunk."""
    rng = np.random.default_rng(0)
    plain, key = rng.bytes((23 << 20) + 123), rng.bytes((13 << 20) + 7)
    original = tmp_path / "consolidated.00.pth"
    original.write_bytes(key)
    enc = write_release(tmp_path, "pytorch_model-00001-of-00002.bin", plain, key, 10 << 20)
    out = tmp_path / "pytorch_model-00001-of-00002.bin"
    seen: list[int] = []

    dec.decrypt_file(enc, original, out, chunk_bytes=(3 << 20) + 17, progress=seen.append)

    assert out.read_bytes() == plain
    assert sum(seen) == len(plain)


def test_empty_plain_file(tmp_path: Path) -> None:
    original = tmp_path / "key"
    original.write_bytes(b"k" * 10)
    enc = write_release(tmp_path, "empty.txt", b"", b"k" * 10, 10 << 20)
    dec.decrypt_file(enc, original, tmp_path / "empty.txt")
    assert (tmp_path / "empty.txt").read_bytes() == b""


def test_wrong_original_raises_and_leaves_nothing(tmp_path: Path, small_blocks: int) -> None:
    rng = np.random.default_rng(1)
    plain, key = rng.bytes(5000), rng.bytes(3000)
    enc = write_release(tmp_path / "enc", "config.json", plain, key, small_blocks)
    wrong = tmp_path / "orig" / "consolidated.00.pth"
    wrong.parent.mkdir()
    wrong.write_bytes(key[:-1] + bytes([key[-1] ^ 1]))
    out_dir = tmp_path / "out"

    with pytest.raises(UsageError, match="sha256") as info:
        dec.decrypt_file(enc, wrong, out_dir / "config.json", chunk_bytes=700)

    message = str(info.value)
    assert str(enc) in message and str(wrong) in message
    assert hashlib.sha256(plain).hexdigest() in message
    assert list(out_dir.iterdir()) == []


def test_header_and_name_disagree(tmp_path: Path) -> None:
    enc = tmp_path / f"config.json.{'0' * 64}.enc"
    enc.write_bytes(hashlib.sha256(b"x").digest() + b"y")
    (tmp_path / "key").write_bytes(b"k")
    with pytest.raises(UsageError, match="damaged"):
        dec.decrypt_file(enc, tmp_path / "key", tmp_path / "config.json")


def test_truncated_and_missing_inputs(tmp_path: Path) -> None:
    short = tmp_path / "a.enc"
    short.write_bytes(b"abc")
    key = tmp_path / "key"
    key.write_bytes(b"k")
    with pytest.raises(UsageError, match="shorter than"):
        dec.decrypt_file(short, key, tmp_path / "a")
    good = write_release(tmp_path, "b", b"hello", b"k", 10 << 20)
    with pytest.raises(UsageError, match="missing.pth"):
        dec.decrypt_file(good, tmp_path / "missing.pth", tmp_path / "b")
    with pytest.raises(UsageError, match="nope.enc"):
        dec.decrypt_file(tmp_path / "nope.enc", key, tmp_path / "b")


def make_release(tmp_path: Path, block: int) -> tuple[Path, Path, dict[str, bytes]]:
    rng = np.random.default_rng(2)
    key = rng.bytes(2345)
    original_dir = tmp_path / "llama-7b"
    original_dir.mkdir()
    (original_dir / "consolidated.00.pth").write_bytes(key)
    (original_dir / "params.json").write_text("{}")
    plains = {
        "config.json": b'{"model_type": "llama"}',
        "pytorch_model-00001-of-00002.bin": rng.bytes(6100),
        "pytorch_model-00002-of-00002.bin": rng.bytes(1500),
        "tokenizer.model": rng.bytes(321),
    }
    enc_dir = tmp_path / "BELLE-LLaMA-7B-2M-enc"
    for name, plain in plains.items():
        write_release(enc_dir, name, plain, key, block)
    (enc_dir / "README.md").write_text("# release\n")
    (enc_dir / ".gitattributes").write_text("*.enc filter=lfs\n")
    return enc_dir, original_dir, plains


def test_decrypt_folder_end_to_end_and_resume(tmp_path: Path, small_blocks: int, monkeypatch) -> None:
    enc_dir, original_dir, plains = make_release(tmp_path, small_blocks)
    out_dir = tmp_path / "out"

    outputs = dec.decrypt_folder(enc_dir, original_dir, out_dir)

    assert [p.name for p in outputs] == sorted(plains)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(plains)
    for name, plain in plains.items():
        assert (out_dir / name).read_bytes() == plain

    (out_dir / "tokenizer.model").unlink()
    redone: list[Path] = []
    real = dec.decrypt_file

    def tracked(enc: Path, original: Path, out: Path, *args, **kwargs) -> str:
        redone.append(out)
        return real(enc, original, out, *args, **kwargs)

    monkeypatch.setattr(dec, "decrypt_file", tracked)
    reported: list[tuple[str, bool]] = []
    dec.decrypt_folder(enc_dir, original_dir, out_dir, report=lambda p, s: reported.append((p.name, s)))

    assert redone == [out_dir / "tokenizer.model"]
    assert dict(reported) == {name: name != "tokenizer.model" for name in plains}
    assert (out_dir / "tokenizer.model").read_bytes() == plains["tokenizer.model"]


@pytest.mark.parametrize("size", ["same", "other"])
def test_decrypt_folder_refuses_to_overwrite_another_file(tmp_path: Path, small_blocks: int, size: str) -> None:
    enc_dir, original_dir, plains = make_release(tmp_path, small_blocks)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    theirs = b"\0" * len(plains["tokenizer.model"]) if size == "same" else b"mine"
    (out_dir / "tokenizer.model").write_bytes(theirs)

    with pytest.raises(UsageError, match=r"tokenizer\.model exists and is not the decrypted file"):
        dec.decrypt_folder(enc_dir, original_dir, out_dir)

    assert (out_dir / "tokenizer.model").read_bytes() == theirs


def test_decrypt_folder_refuses_a_folder_with_an_output_name(tmp_path: Path, small_blocks: int) -> None:
    enc_dir, original_dir, _ = make_release(tmp_path, small_blocks)
    out_dir = tmp_path / "out"
    (out_dir / "config.json").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"config\.json exists and is not a file"):
        dec.decrypt_folder(enc_dir, original_dir, out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json"]


def test_decrypt_folder_refuses_an_output_folder_that_is_a_file(tmp_path: Path, small_blocks: int) -> None:
    enc_dir, original_dir, _ = make_release(tmp_path, small_blocks)
    (tmp_path / "out").write_text("notes")
    with pytest.raises(UsageError, match="is a file"):
        dec.decrypt_folder(enc_dir, original_dir, tmp_path / "out")
    assert (tmp_path / "out").read_text() == "notes"


def test_decrypt_folder_accepts_the_original_file(tmp_path: Path, small_blocks: int) -> None:
    enc_dir, original_dir, plains = make_release(tmp_path, small_blocks)
    dec.decrypt_folder(enc_dir, original_dir / "consolidated.00.pth", tmp_path / "out")
    assert (tmp_path / "out" / "config.json").read_bytes() == plains["config.json"]


def test_decrypt_folder_errors(tmp_path: Path, small_blocks: int) -> None:
    enc_dir, original_dir, _ = make_release(tmp_path, small_blocks)
    out_dir = tmp_path / "out"
    with pytest.raises(UsageError, match="missing-enc"):
        dec.decrypt_folder(tmp_path / "missing-enc", original_dir, out_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("x")
    with pytest.raises(UsageError, match="no encrypted files"):
        dec.decrypt_folder(empty, original_dir, out_dir)
    with pytest.raises(UsageError, match="missing-llama"):
        dec.decrypt_folder(enc_dir, tmp_path / "missing-llama", out_dir)
    (original_dir / "consolidated.00.pth").unlink()
    with pytest.raises(UsageError, match="consolidated.00.pth"):
        dec.decrypt_folder(enc_dir, original_dir, out_dir)
    assert not out_dir.exists()


def test_decrypt_verb_prints_each_file(tmp_path: Path, small_blocks: int, capsys) -> None:
    enc_dir, original_dir, plains = make_release(tmp_path, small_blocks)
    out_dir = tmp_path / "out"
    assert dec.decrypt(enc_dir, original_dir, out_dir) == 0
    assert dec.decrypt(enc_dir, original_dir, out_dir) == 0
    printed = capsys.readouterr().out
    assert printed.count("decrypted: ") == len(plains)
    assert printed.count("already done: ") == len(plains)
    assert f"{len(plains)} files in {out_dir} (0 decrypted, {len(plains)} already done)" in printed
    assert not [p for p in os.listdir(out_dir) if p.endswith(".part")]
