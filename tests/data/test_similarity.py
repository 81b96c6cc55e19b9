"""belle.data.similarity: character-level ROUGE-L on Chinese, the incremental index (exact and LSH
paths agree) and bulk find_duplicates (matches an O(n^2) reference)."""

import random
import re

import numpy as np
import pytest

from belle.data.similarity import MinHasher, NearDuplicateIndex, find_duplicates, normalize, rouge_l


def whitespace_tokens(text: str) -> list[str]:
    """What a ROUGE tokenizer built for English keeps: lower-cased runs of ASCII letters and digits."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def test_chinese_is_compared_character_by_character():
    spring, autumn = "写一首关于春天的诗", "写一首关于秋天的诗"
    other = "解释一下光合作用的过程"
    # An English-style tokenizer keeps nothing of either sentence, so any score from it is blind.
    assert whitespace_tokens(spring) == whitespace_tokens(other) == []
    assert rouge_l(spring, autumn) == pytest.approx(2 * 8 / 18)  # LCS 8 of 9 + 9 characters
    assert rouge_l(spring, autumn) > 0.7
    assert rouge_l(spring, other) < 0.3
    assert rouge_l("把这句话翻译成英文：今天天气很好", "请把这句话翻译成英文：今天天气真好") > 0.7
    assert rouge_l("介绍一下长城的历史", "推荐三本适合初学者的编程书") < 0.7


def test_rouge_l_values():
    assert rouge_l("abcd", "abxd") == pytest.approx(0.75)
    assert rouge_l("abcd", "abxd") == rouge_l("abxd", "abcd")
    assert rouge_l("今天", "今天") == 1.0
    assert rouge_l("", "") == 1.0  # identical (empty) texts
    assert rouge_l("，。！", "") == 1.0  # all punctuation: empty once normalized
    assert rouge_l("", "今天") == 0.0
    assert rouge_l("甲乙", "丙丁") == 0.0


def test_punctuation_width_case_and_spaces_do_not_count():
    variants = ["请写一首诗，关于AI。", "请写一首诗: 关于 ai", "请写一首诗，关于ＡＩ！", " 请 写一首诗\n关于Ai…"]
    assert len({normalize(v) for v in variants}) == 1
    assert normalize(variants[0]) == "请写一首诗关于ai"
    assert normalize("１２３ＡＢＣ") == "123abc"
    assert normalize("“你好”——《世界》【测试】") == "你好世界测试"  # full-width quotes, dashes, brackets
    assert normalize("a\u200bb\ufeffc") == "abc"  # zero-width space, BOM
    assert find_duplicates(variants) == [None, (0, 1.0), (0, 1.0), (0, 1.0)]


# ---------------------------------------------------------------------------------------------
# Generated Chinese sentences with planted near duplicates


def corpus_phrases() -> list[str]:
    from belle.models.tiny import tiny_corpus_lines

    phrases = []
    for line in tiny_corpus_lines():
        phrases += [p for p in re.split(r"[，。；：！？、“”（）\s]+", line) if len(p) >= 4 and re.fullmatch(r"[\u4e00-\u9fff]+", p)]
    return list(dict.fromkeys(phrases))


TEMPLATES = ["请根据下面的内容写一段总结：{}", "把这句话改写得更正式一些：{}", "“{}”这句话想表达什么意思？",
             "为什么说{}？请解释原因。", "找出下面这段话里的关键词：{}", "如果{}，应该注意些什么？", "{}"]


def edit(text: str, rng: random.Random, alphabet: str, edits: int) -> str:
    chars = list(text)
    for _ in range(edits):
        at, op = rng.randrange(len(chars)), rng.random()
        if op < 0.4:
            chars[at] = rng.choice(alphabet)
        elif op < 0.7 or len(chars) < 6:
            chars.insert(at, rng.choice(alphabet))
        else:
            del chars[at]
    return "".join(chars)


@pytest.fixture(scope="module")
def sentences():
    """(base texts, [(query, index of its source)]): 300 base texts from corpus phrases and
    templates, and 200 queries made from them by 1-3 character edits or punctuation changes."""
    rng = random.Random(5)
    phrases = corpus_phrases()
    alphabet = "".join(phrases)
    base = list(dict.fromkeys(
        rng.choice(TEMPLATES).format("，".join(rng.sample(phrases, rng.randint(1, 3)))) for _ in range(300)
    ))
    queries = []
    for _ in range(200):
        source = rng.randrange(len(base))
        if rng.random() < 0.2:
            query = base[source].replace("，", ", ").replace("？", "?") + "。"
        else:
            query = edit(base[source], rng, alphabet, rng.randint(1, 3))
        queries.append((query, source))
    return base, queries


@pytest.mark.slow
def test_index_exact_and_lsh_paths_agree(sentences):
    base, queries = sentences
    exact, lsh = NearDuplicateIndex(exact_limit=10**9), NearDuplicateIndex(exact_limit=0)
    for text in base:
        assert exact.add(text) == lsh.add(text)
    assert len(exact) == len(lsh) == len(base) and lsh.texts == base
    planted = found = same = near = 0
    for query, source in queries:
        want, got = exact.most_similar(query), lsh.most_similar(query)
        assert want is not None
        # exact search is exact: nothing scores higher than its answer
        assert want[1] == pytest.approx(max(rouge_l(query, t) for t in base))
        if got is not None:  # LSH only scores real candidates: never above the exact answer
            assert got[1] == pytest.approx(rouge_l(query, base[got[0]]))
            assert got[1] <= want[1] + 1e-12
        if want[1] > 0.7:
            near += 1
            same += got == want
        if rouge_l(query, base[source]) > 0.7:
            planted += 1
            found += got is not None and got[1] > 0.7
    assert planted >= 150
    assert found / planted >= 0.95
    assert same / near >= 0.95


def test_index_switches_to_lsh_seamlessly(sentences):
    base, queries = sentences
    small, reference = NearDuplicateIndex(exact_limit=100), NearDuplicateIndex(exact_limit=10**9)
    agree = total = 0
    for i, text in enumerate(base):
        if i in (50, 150, 250):  # below the limit, just above it, well above it
            for query, _ in queries[:40]:
                a, b = small.most_similar(query), reference.most_similar(query)
                if i <= 100:
                    assert a == b
                elif b[1] > 0.7:
                    total += 1
                    agree += a == b
        small.add(text)
        reference.add(text)
    assert total and agree / total >= 0.95


def test_index_basics():
    index = NearDuplicateIndex()
    assert len(index) == 0 and index.most_similar("任何文本") is None
    assert index.add("写一首关于春天的诗") == 0
    assert index.add("今天天气怎么样") == 1
    assert index.add("写一首关于春天的诗！") == 2  # the index stores what it is given
    assert index.most_similar("写一首关于春天的诗。") == (0, 1.0)  # the first exact duplicate
    match = index.most_similar("写一首关于秋天的诗")
    assert match[0] == 0 and match[1] == pytest.approx(8 / 9)
    assert index.duplicate_of("写一首关于秋天的诗") == match
    assert index.duplicate_of("介绍一下光合作用") is None


@pytest.mark.parametrize("exact_limit", [0, 10**9])
def test_short_texts(exact_limit):
    index = NearDuplicateIndex(exact_limit=exact_limit)
    for text in ["写诗", "写一首诗", "翻译成英文", "讲个笑话", "今天星期几", "画", "猜谜语吧"]:
        index.add(text)
    assert index.most_similar("写一首词") == (1, 0.75)
    assert index.most_similar("翻译为英文") == (2, 0.8)  # an edit in the middle of a short text
    assert index.most_similar("画") == (5, 1.0)
    assert index.most_similar("！！") is None or index.most_similar("！！")[1] == 0.0


def test_short_texts_with_an_edit_in_the_middle_are_found_by_lsh():
    # One changed character in the middle of a 5-character text breaks 2 of its 4 bigrams (Jaccard
    # 1/3); single characters as extra shingles lift that to 1/2, which LSH finds almost surely.
    rng = random.Random(2)
    alphabet = "".join(corpus_phrases())
    texts = list(dict.fromkeys("".join(rng.sample(alphabet, 5)) for _ in range(60)))[:40]
    index = NearDuplicateIndex(exact_limit=0)
    for text in texts:
        index.add(text)
    found = 0
    for i, text in enumerate(texts):
        query = text[:2] + rng.choice("甲乙丙丁戊") + text[3:]
        assert rouge_l(query, text) == pytest.approx(0.8)
        match = index.most_similar(query)
        found += match is not None and match[0] == i
    assert found >= 39


# ---------------------------------------------------------------------------------------------
# Bulk


def reference_duplicates(texts: list[str], threshold: float) -> list:
    """find_duplicates' documented rule, by comparing every text with every kept one."""
    result, kept, first = [], [], {}
    for i, text in enumerate(texts):
        norm = normalize(text)
        if norm in first:
            j = first[norm]
            result.append((j, 1.0) if result[j] is None else result[j])
            continue
        first[norm] = i
        scores = [(rouge_l(text, texts[j]), -j) for j in kept]
        best = max(scores, default=(0.0, 0))
        if best[0] > threshold:
            result.append((-best[1], best[0]))
        else:
            result.append(None)
            kept.append(i)
    return result


def test_find_duplicates_keeps_the_first_and_names_it():
    texts = [
        "写一首关于春天的诗",  # 0 kept
        "解释一下光合作用的过程",  # 1 kept
        "写一首关于秋天的诗",  # 2 near duplicate of 0
        "写一首关于春天的诗！",  # 3 exact duplicate of 0
        "写一首关于秋天的诗。",  # 4 exact duplicate of 2, which was removed: 2's verdict
        "解释一下光合作用的原理",  # 5 near duplicate of 1
        "推荐三本适合初学者的编程书",  # 6 kept
    ]
    result = find_duplicates(texts, progress=False)
    assert result[0] is None and result[1] is None and result[6] is None
    assert result[2][0] == 0 and result[2][1] == pytest.approx(8 / 9)
    assert result[3] == (0, 1.0)
    assert result[4] == result[2]
    assert result[5][0] == 1 and result[5][1] > 0.7
    assert result == reference_duplicates(texts, 0.7)
    # threshold 1: exact duplicates only
    assert find_duplicates(texts, threshold=1.0) == [None, None, None, (0, 1.0), (2, 1.0), None, None]
    assert find_duplicates([]) == []
    assert find_duplicates(["只有一条"]) == [None]


@pytest.mark.slow
def test_find_duplicates_matches_brute_force(sentences):
    base, queries = sentences
    rng = random.Random(9)
    texts = base + [q for q, _ in queries]
    rng.shuffle(texts)
    texts = texts[:500]
    result = find_duplicates(texts, progress=False)
    reference = reference_duplicates(texts, 0.7)
    assert sum(r is not None for r in reference) >= 60
    for i, got in enumerate(result):
        if got is not None:  # a removal always names an earlier text and its true score
            assert got[0] < i and got[1] > 0.7 and got[1] == pytest.approx(rouge_l(texts[i], texts[got[0]]))
    agree = sum(g == w for g, w in zip(result, reference))
    assert agree / len(texts) >= 0.99
    assert sum((g is None) == (w is None) for g, w in zip(result, reference)) / len(texts) >= 0.99


def test_find_duplicates_earlier_index_and_score_are_true(sentences):
    base, queries = sentences
    texts = base + [q for q, _ in queries]
    result = find_duplicates(texts, progress=False, batch_size=64)  # several hashing batches
    removed = {i for i, r in enumerate(result) if r is not None}
    for i, match in enumerate(result):
        if match is not None:
            j, score = match
            assert j < i and j not in removed
            assert score == pytest.approx(rouge_l(texts[i], texts[j]))
    planted = [(len(base) + k, s) for k, (_, s) in enumerate(queries) if s not in removed and rouge_l(texts[len(base) + k], base[s]) > 0.7]
    assert sum(result[i] is not None for i, _ in planted) / len(planted) >= 0.95


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(0)
    hasher = MinHasher(num_perm=256, rows=4, seed=3)
    errors = []
    for _ in range(40):
        a = "".join(chr(0x4E00 + int(c)) for c in rng.integers(0, 3000, 40))
        b = a[: int(rng.integers(5, 40))] + "".join(chr(0x4E00 + int(c)) for c in rng.integers(0, 3000, 10))
        shingles = [{s[i : i + 2] for i in range(len(s) - 1)} for s in (a, b)]
        true = len(shingles[0] & shingles[1]) / len(shingles[0] | shingles[1])
        signatures, has = hasher.signatures([a, b])
        errors.append((signatures[0] == signatures[1]).mean() - true)
    assert has.all()
    assert abs(np.mean(errors)) < 0.02 and np.abs(errors).max() < 0.15
    keys, has = hasher.band_keys(["", "今天天气很好"])
    assert keys.shape == (2, 64) and not has[0] and has[1]
