"""Near-duplicate detection that works on Chinese: character-level ROUGE-L, confirmed exactly,
with MinHash LSH to find the candidates when there are too many texts to compare one by one.

The usual ROUGE-L implementation (the `rouge_score` package) splits text on non-alphanumeric ASCII
and so drops every Chinese character: two different Chinese instructions both become an empty token
list and nothing is ever found similar. Here texts are compared character by character after
`normalize`, so "写一首关于春天的诗" and "写一首关于秋天的诗" score 0.89.

Two entry points:
- `NearDuplicateIndex`: incremental, for self-instruct (is this new instruction too close to one
  already kept?).
- `find_duplicates`: bulk, for `belle data dedup` over millions of records.

Both find candidates the same way above a few thousand texts: MinHash signatures of the set of
character bigrams of the normalized text (texts shorter than `SHORT_TEXT` characters also add their
single characters), banded into `num_perm // rows` bands of `rows` hashes. Two texts become
candidates when any band agrees; every candidate is then scored exactly with `rouge_l`, so LSH can
miss a near duplicate but never invents one. Recall for pairs above 0.7, measured by
benchmarks/bench_dedup.py against exact search: see data/README.md.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

SHORT_TEXT = 10  # below this many normalized characters, single characters are shingles too
DEFAULT_ROWS = 3

_U32 = np.uint64(32)
_NO_CHAR = np.uint64(0x1FFFFF)  # above the last Unicode code point: "no next character"


# ---------------------------------------------------------------------------------------------
# What is compared


@functools.cache
def _deletions() -> dict[int, None]:
    """`str.translate` table that deletes punctuation (P*), symbols (S*), separators (Z*: spaces),
    control characters (Cc: tabs, newlines), format characters (Cf: zero-width spaces, BOM) and lone
    surrogates. Built on first use (about 0.2 s: one pass over the code points)."""
    table = {}
    for code in range(0x110000):
        category = unicodedata.category(chr(code))
        if category[0] in "PSZ" or category in ("Cc", "Cf", "Cs"):
            table[code] = None
    return table


def normalize(text: str) -> str:
    """The form in which texts are compared: NFKC (full-width letters, digits and punctuation
    become half-width), lower case, then every whitespace, punctuation and symbol character
    removed. "请写一首诗，关于ＡＩ。" and "请写一首诗: 关于 ai" both become "请写一首诗关于ai"."""
    return unicodedata.normalize("NFKC", text).lower().translate(_deletions())


def _f1(lcs: np.ndarray | int, a_len: np.ndarray | int, b_len: np.ndarray | int) -> np.ndarray:
    """ROUGE-L F1 (beta 1) from LCS lengths: 2 * lcs / (a_len + b_len); 1.0 where both are empty."""
    total = np.asarray(a_len + b_len, dtype=np.float64)
    return np.where(total > 0, 2.0 * np.asarray(lcs, dtype=np.float64) / np.maximum(total, 1.0), 1.0)


def rouge_l(a: str, b: str) -> float:
    """Character-level ROUGE-L F1 of `normalize(a)` and `normalize(b)`, in [0, 1].

    With L the length of their longest common subsequence of characters, precision L/len(b),
    recall L/len(a), and F1 = 2L / (len(a) + len(b)). Identical normalized texts score 1.0, two
    empty ones included (so a text that is all punctuation duplicates another such text); an empty
    text against a non-empty one scores 0.0.
    """
    a, b = normalize(a), normalize(b)
    return float(_f1(LCSseq.similarity(a, b), len(a), len(b)))


def _scores(query: str, choices: Sequence[str], lengths: np.ndarray) -> np.ndarray:
    """rouge_l of one normalized `query` against normalized `choices` (their `lengths`), float64.
    One rapidfuzz call: LCS lengths of every pair computed in C++ (bit-parallel, ~0.2 us a pair
    for instruction-sized texts)."""
    lcs = process.cdist([query], choices, scorer=LCSseq.similarity, dtype=np.int32, workers=1)[0]
    return _f1(lcs, len(query), lengths)


# ---------------------------------------------------------------------------------------------
# MinHash LSH, vectorised with numpy


def _mix64(x: np.ndarray) -> np.ndarray:
    """A fixed bijective 64-bit mixer (the splitmix64 finalizer), elementwise on uint64."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _shingles(norms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The shingles of normalized texts as (text position int64, 32-bit shingle hash uint32),
    grouped by text in order; a text with no characters has none.

    Shingles are character bigrams (code point pairs); a one-character text gets that character
    alone. Texts shorter than SHORT_TEXT characters also get each single character: one edit in
    the middle of a 5-character text breaks 2 of its 4 bigrams, and single characters keep such a
    pair's Jaccard similarity high enough for LSH to find it. Repeats need no removal: a minimum
    is the same over a multiset as over its set.
    """
    lengths = np.fromiter(map(len, norms), np.int64, len(norms))
    if not lengths.sum():
        return np.zeros(0, np.int64), np.zeros(0, np.uint32)
    code = np.frombuffer("".join(norms).encode("utf-32-le"), np.uint32).astype(np.uint64)
    text = np.repeat(np.arange(len(norms)), lengths)
    length = lengths[text]
    offset = np.arange(len(code)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    nxt = np.full(len(code), _NO_CHAR, np.uint64)
    has_next = offset + 1 < length
    nxt[:-1][has_next[:-1]] = code[1:][has_next[:-1]]
    bigram = has_next | (length == 1)
    keys = [(code << np.uint64(21) | nxt)[bigram]]
    texts = [text[bigram]]
    short = length < SHORT_TEXT
    if short.any():  # single characters, tagged so they never equal a bigram
        keys.append((code[short] << np.uint64(21) | _NO_CHAR) ^ np.uint64(1 << 63))
        texts.append(text[short])
        order = np.argsort(np.concatenate(texts), kind="stable")
        texts, keys = [np.concatenate(texts)[order]], [np.concatenate(keys)[order]]
    return texts[0], (_mix64(keys[0]) >> _U32).astype(np.uint32)


class MinHasher:
    """MinHash signatures and LSH band keys of normalized texts, computed in bulk with numpy.

    Shingles are first hashed to 32 bits with a fixed 64-bit mixer; each of the `num_perm` hash
    functions is then h(x) = (a*x + b) mod 2**32 with a odd (a permutation of the 32-bit values),
    a and b drawn from `seed`. A text's signature is the minimum of each function over its
    shingles; two signatures agree at a position with probability equal to the Jaccard similarity
    of the two shingle sets (measured on structured inputs: unbiased, with the binomial spread).
    Band k combines hashes k*rows .. k*rows+rows-1 into one 32-bit key; `bands = num_perm // rows`
    (leftover hashes unused).

    Args:
        num_perm: hash functions per signature.
        rows: hashes per band. More rows: fewer false candidates, lower recall.
        seed: seed of the hash functions; band keys are comparable only between equal seeds.
        chunk: shingles hashed at once (temporaries of chunk * num_perm * 4 bytes).
    """

    def __init__(self, num_perm: int = 128, rows: int = DEFAULT_ROWS, seed: int = 1, chunk: int = 1 << 16):
        if not 1 <= rows <= num_perm:
            raise ValueError(f"rows must be in 1..num_perm ({num_perm}), got {rows}")
        self.num_perm, self.rows, self.bands, self.chunk = num_perm, rows, num_perm // rows, chunk
        rng = np.random.default_rng(seed)
        self._a = (rng.integers(0, 2**31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1))[:, None]  # odd
        self._b = rng.integers(0, 2**32, num_perm, dtype=np.uint32)[:, None]
        self._band_mix = rng.integers(1, 2**63, rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

    def signatures(self, norms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures uint32 [len(norms), num_perm], has_shingles bool [len(norms)]) of normalized texts;
        rows of texts without shingles (empty texts) are all 0xFFFFFFFF."""
        text, x = _shingles(norms)
        signature = np.full((len(norms), self.num_perm), np.iinfo(np.uint32).max, np.uint32)
        for start in range(0, len(x), self.chunk):
            part_text, part_x = text[start : start + self.chunk], x[start : start + self.chunk]
            hashes = self._a * part_x + self._b  # [num_perm, shingles], wraps mod 2**32
            first = np.flatnonzero(np.r_[True, part_text[1:] != part_text[:-1]])
            owners = part_text[first]
            # reduceat along the last axis of a [num_perm, shingles] array is ~20x faster than along
            # the first of its transpose; a text cut by a chunk boundary keeps the smaller minimum
            signature[owners] = np.minimum(signature[owners], np.minimum.reduceat(hashes, first, axis=1).T)
        has = np.zeros(len(norms), bool)
        has[text] = True
        return signature, has

    def band_keys(self, norms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(band keys uint32 [len(norms), bands], has_shingles bool [len(norms)])."""
        signature, has = self.signatures(norms)
        used = signature[:, : self.bands * self.rows].astype(np.uint64).reshape(len(norms), self.bands, self.rows)
        with np.errstate(over="ignore"):
            combined = _mix64((used * self._band_mix).sum(axis=2, dtype=np.uint64) + np.uint64(self.rows))
        return (combined >> _U32).astype(np.uint32), has


class _Buckets:
    """Append-only multimap from 64-bit keys (band << 32 | band key) to record ids, for the
    incremental index: recent records in a dict, older ones in sorted numpy runs merged like a
    log-structured tree (a run is merged into the one before it once it is at least half its size).
    Memory: 12 bytes per (record, band) in runs; dict entries only for the last `flush_at` records.
    """

    def __init__(self, flush_at: int = 2048):
        self.flush_at = flush_at
        self._recent: dict[int, list[int]] = {}
        self._pending_keys: list[np.ndarray] = []
        self._pending_ids: list[int] = []
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted uint64 keys, int32 ids)

    def add(self, keys: np.ndarray, ident: int) -> None:
        for key in keys.tolist():
            self._recent.setdefault(key, []).append(ident)
        self._pending_keys.append(keys)
        self._pending_ids.append(ident)
        if len(self._pending_ids) >= self.flush_at:
            self._flush()

    def add_many(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """Add records in bulk: keys [records, bands] uint64, ids [records]."""
        if len(ids):
            self._flush()
            self._push(keys.ravel(), np.repeat(ids.astype(np.int32), keys.shape[1]))

    def _flush(self) -> None:
        if self._pending_ids:
            keys = np.concatenate(self._pending_keys)
            ids = np.repeat(np.asarray(self._pending_ids, np.int32), len(self._pending_keys[0]))
            self._recent, self._pending_keys, self._pending_ids = {}, [], []
            self._push(keys, ids)

    def _push(self, keys: np.ndarray, ids: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        self._runs.append((keys[order], ids[order]))
        while len(self._runs) > 1 and len(self._runs[-1][0]) * 2 >= len(self._runs[-2][0]):
            (k1, i1), (k2, i2) = self._runs.pop(), self._runs.pop()
            keys, ids = np.concatenate([k2, k1]), np.concatenate([i2, i1])
            order = np.argsort(keys, kind="stable")
            self._runs.append((keys[order], ids[order]))

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Ids of every record sharing at least one key (with repeats: one per shared key), int64."""
        found = [np.asarray(ids, np.int64) for key in keys.tolist() if (ids := self._recent.get(key))]
        for run_keys, run_ids in self._runs:
            lo = np.searchsorted(run_keys, keys, "left")
            hi = np.searchsorted(run_keys, keys, "right")
            hit = hi > lo
            if hit.any():
                lo, count = lo[hit], (hi - lo)[hit]
                # the indices lo[0]..hi[0]-1, lo[1]..hi[1]-1, ... as one array
                starts = np.repeat(lo - np.cumsum(count) + count, count)
                found.append(run_ids[starts + np.arange(count.sum())].astype(np.int64))
        return np.concatenate(found) if found else np.zeros(0, np.int64)


def _band_offsets(bands: int) -> np.ndarray:
    return np.arange(bands, dtype=np.uint64) << _U32


# ---------------------------------------------------------------------------------------------
# Incremental index


class NearDuplicateIndex:
    """Texts added one by one; `most_similar` finds the added text closest to a new one by
    character-level ROUGE-L (`rouge_l`). What self-instruct uses: for each candidate instruction,
    `most_similar`, then `add` it if it is not too close.

    While the index holds at most `exact_limit` texts, `most_similar` scores the query against all
    of them (one C++ call, about 1 ms per 5,000 instruction-sized texts). Above that it scores only
    the texts that share a MinHash LSH band with the query (see `MinHasher`), plus exact duplicates
    found by hash: it returns the same answer whenever that text is among the candidates, which for
    pairs above 0.7 is nearly always (see data/README.md for the measured recall), and None when
    no candidate is found. The LSH part is built when `exact_limit` is first exceeded and kept
    up to date from then on. Memory above `exact_limit`: about 0.5 kB per text for the LSH buckets
    besides the texts themselves.

    Args:
        threshold: ROUGE-L above which a text counts as a duplicate (used by `duplicate_of`).
        exact_limit: up to this many texts, compare against all of them.
        num_perm: MinHash hash functions per text.
        seed: seed of the MinHash functions.
        rows: MinHash hashes per LSH band (bands = num_perm // rows).
    """

    def __init__(self, threshold: float = 0.7, exact_limit: int = 5000, num_perm: int = 128, seed: int = 1, *, rows: int = DEFAULT_ROWS):
        self.threshold = threshold
        self.exact_limit = exact_limit
        self.texts: list[str] = []
        self._norms: list[str] = []
        self._lengths = np.zeros(1024, np.int64)
        self._first: dict[str, int] = {}  # normalized text -> index of its first occurrence
        self._hasher = MinHasher(num_perm, rows, seed)
        self._offsets = _band_offsets(self._hasher.bands)
        self._buckets: _Buckets | None = None
        self._last: tuple[str, bool, str, np.ndarray | None] | None = None  # (text, hashed?, normalized, LSH keys)

    def __len__(self) -> int:
        return len(self.texts)

    def _prepare(self, text: str, keys: bool) -> tuple[str, np.ndarray | None]:
        """normalize(text) and, if asked, its LSH keys (None for an empty text); cached for the
        usual most_similar(text) then add(text)."""
        if self._last is not None and self._last[0] == text and (self._last[1] or not keys):
            return self._last[2], self._last[3]
        norm = normalize(text)
        lsh = None
        if keys and norm:
            band, _ = self._hasher.band_keys([norm])
            lsh = self._offsets | band[0].astype(np.uint64)
        self._last = (text, keys, norm, lsh)
        return norm, lsh

    def most_similar(self, text: str) -> tuple[int, float] | None:
        """(index of the added text with the highest `rouge_l` against `text`, that score); the
        earliest one on ties. None when the index is empty, or above `exact_limit` when no added
        text shares an LSH band with `text` (no added text is then likely to score above 0.7)."""
        if not self.texts:
            return None
        lsh_mode = len(self.texts) > self.exact_limit
        norm, keys = self._prepare(text, keys=lsh_mode)
        if norm in self._first:
            return self._first[norm], 1.0
        if not lsh_mode:
            scores = _scores(norm, self._norms, self._lengths[: len(self._norms)])
            best = int(np.argmax(scores))
            return best, float(scores[best])
        self._build_buckets()
        if keys is None:
            return None  # empty after normalize and no empty text added (else found above)
        candidates = np.unique(self._buckets.lookup(keys))
        if not len(candidates):
            return None
        scores = _scores(norm, [self._norms[i] for i in candidates.tolist()], self._lengths[candidates])
        best = int(np.argmax(scores))  # candidates are sorted, so ties go to the earliest
        return int(candidates[best]), float(scores[best])

    def duplicate_of(self, text: str) -> tuple[int, float] | None:
        """`most_similar(text)` if its score is above `threshold`, else None."""
        match = self.most_similar(text)
        return match if match is not None and match[1] > self.threshold else None

    def add(self, text: str) -> int:
        """Add `text`; returns its index (0, 1, ... in the order added)."""
        index = len(self.texts)
        norm, keys = self._prepare(text, keys=self._buckets is not None)
        self.texts.append(text)
        self._norms.append(norm)
        if index == len(self._lengths):
            self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
        self._lengths[index] = len(norm)
        self._first.setdefault(norm, index)
        if self._buckets is not None and keys is not None:
            self._buckets.add(keys, index)
        return index

    def _build_buckets(self) -> None:
        """Hash every text added so far into the LSH buckets (once: later adds hash themselves)."""
        if self._buckets is not None:
            return
        self._buckets = _Buckets()
        for start in range(0, len(self._norms), 8192):
            band, has = self._hasher.band_keys(self._norms[start : start + 8192])
            ids = np.flatnonzero(has)
            self._buckets.add_many(self._offsets | band[ids].astype(np.uint64), ids + start)


# ---------------------------------------------------------------------------------------------
# Bulk


def find_duplicates(
    texts: Sequence[str],
    threshold: float = 0.7,
    *,
    num_perm: int = 128,
    rows: int = DEFAULT_ROWS,
    seed: int = 1,
    max_candidates: int = 100,
    batch_size: int = 20_000,
    progress: bool | None = None,
) -> list[tuple[int, float] | None]:
    """Exact and near duplicates among `texts`, keeping the first of each: for each text in
    order, None if it is kept, else (index of an earlier kept text it duplicates, rouge_l score).

    Texts are taken in order; a text is removed when
    - its normalized form (`normalize`) equals an earlier text's: it duplicates that first
      occurrence with score 1.0, or, when the first occurrence was itself removed, the same kept
      text and score as the first occurrence;
    - else when its `rouge_l` with an earlier kept text is above `threshold`: it duplicates the
      most similar such text (the earliest on ties). Candidates for this are the kept texts that
      share a MinHash LSH band with it (`MinHasher`); the `max_candidates` that share the most
      bands are scored exactly. `threshold >= 1` removes exact duplicates only, without LSH.

    Memory beyond the texts: their normalized copies, a dict of them, and up to 12 bytes per text
    and LSH band (num_perm // rows bands: about 0.5 GB for a million texts at the defaults). Time:
    about 5 minutes per million instruction-sized texts on 2 cores (benchmarks/bench_dedup.py).

    Args:
        texts: the texts to compare (e.g. one per record: its instruction, or the whole dialogue).
        threshold: ROUGE-L (character level, F1) above which a text is a near duplicate.
        num_perm: MinHash hash functions per text.
        rows: hashes per LSH band.
        seed: seed of the MinHash functions.
        max_candidates: most LSH candidates scored per text.
        batch_size: texts hashed at once.
        progress: show tqdm progress bars (stderr); default: when there are 50,000 texts or more.
    """
    from tqdm import tqdm

    n = len(texts)
    show = n >= 50_000 if progress is None else progress

    def bar(iterable, **kwargs):
        return tqdm(iterable, disable=not show, dynamic_ncols=True, mininterval=1, **kwargs)

    norms = [normalize(t) for t in bar(texts, desc="normalize", unit="text")]
    first: dict[str, int] = {}
    occurrence = np.fromiter((first.setdefault(norm, i) for i, norm in enumerate(norms)), np.int64, n)  # first equal text
    del first
    unique = np.flatnonzero(occurrence == np.arange(n))
    result: list[tuple[int, float] | None] = [None] * n
    if threshold < 1.0 and len(unique) > 1:
        unique_norms = [norms[i] for i in unique.tolist()]
        del norms
        near = _near_duplicates(unique_norms, threshold, MinHasher(num_perm, rows, seed), max_candidates, batch_size, bar)
        for position, (match, score) in near.items():
            result[int(unique[position])] = (int(unique[match]), score)
    for i in np.flatnonzero(occurrence != np.arange(n)).tolist():
        j = int(occurrence[i])  # an exact duplicate of a kept text, or of a removed one: then that one's verdict
        result[i] = (j, 1.0) if result[j] is None else result[j]
    return result


def _near_duplicates(norms: list[str], threshold: float, hasher: MinHasher, max_candidates: int, batch_size: int, bar) -> dict[int, tuple[int, float]]:
    """Greedy near-duplicate removal over distinct normalized texts: {position: (position of the
    kept text it duplicates, score)} for the removed ones."""
    n, bands = len(norms), hasher.bands
    keys = np.empty((n, bands), np.uint32)
    has = np.empty(n, bool)
    for start in bar(range(0, n, batch_size), desc="minhash", unit="batch"):
        keys[start : start + batch_size], has[start : start + batch_size] = hasher.band_keys(norms[start : start + batch_size])
    # Per band k, the texts that share their bucket with another, sorted by (key, position):
    # members[k]; first[k][p] is where the bucket of members[k][p] starts, so the earlier texts of
    # that bucket are members[k][first[k][p]:p]. slot[i, k] is p for text i, -1 if it is alone
    # (written over `keys`, column by column, to save memory).
    slot = keys.view(np.int32)
    members: list[np.ndarray] = []
    first: list[np.ndarray] = []
    has_earlier = np.zeros(n, bool)
    valid = np.flatnonzero(has)
    for k in bar(range(bands), desc="lsh buckets", unit="band"):
        order = valid[np.argsort(keys[valid, k], kind="stable")]
        ordered = keys[order, k]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        sizes = np.diff(np.r_[starts, len(ordered)])
        shared = np.repeat(sizes > 1, sizes)
        band_members = order[shared].astype(np.int32)
        band_first = np.repeat(np.r_[0, np.cumsum(sizes[sizes > 1])][:-1], sizes[sizes > 1]).astype(np.int32)
        column = np.full(n, -1, np.int32)
        column[band_members] = np.arange(len(band_members), dtype=np.int32)
        slot[:, k] = column
        has_earlier[band_members[np.arange(len(band_members)) != band_first]] = True
        members.append(band_members)
        first.append(band_first)
    kept = np.ones(n, bool)
    lengths = np.fromiter(map(len, norms), np.int64, n)
    table = np.empty(n, object)  # gathers candidate texts in C, ~4x faster than a list comprehension
    table[:] = norms
    removed: dict[int, tuple[int, float]] = {}
    for i in bar(np.flatnonzero(has_earlier).tolist(), desc="near duplicates", unit="text"):
        row = slot[i]
        parts = [members[k][first[k][p] : p] for k, p in zip(np.flatnonzero(row >= 0).tolist(), row[row >= 0].tolist())]
        candidates = np.concatenate(parts)
        candidates = candidates[kept[candidates]]
        if not len(candidates):
            continue
        candidates, shared_bands = np.unique(candidates, return_counts=True)
        # F1 = 2*LCS/(a+b) <= 2*min(a, b)/(a+b): texts too much shorter or longer cannot be above
        lengths_i, lengths_c = lengths[i], lengths[candidates]
        fits = 2 * np.minimum(lengths_i, lengths_c) > threshold * (lengths_i + lengths_c)
        candidates, shared_bands, lengths_c = candidates[fits], shared_bands[fits], lengths_c[fits]
        if not len(candidates):
            continue
        if len(candidates) > max_candidates:
            # most shared bands first (the count estimates Jaccard similarity), then closest length
            rank = np.lexsort((np.abs(lengths_c - lengths_i), -shared_bands))[:max_candidates]
            candidates = np.sort(candidates[rank])
        scores = _scores(norms[i], table[candidates], lengths[candidates])
        best = int(np.argmax(scores))
        if scores[best] > threshold:
            kept[i] = False
            removed[i] = (int(candidates[best]), float(scores[best]))
    return removed
