"""Perplexity (`belle.perplexity`): the windows score every token once, and the result equals a direct
computation, token by token, on the trained tiny model."""

import math

import pytest

from belle.modeling import load_model, load_tokenizer
from belle.models.tiny import tiny_corpus_text, tiny_heldout_text
from belle.perplexity import perplexity, score_ids, windows


@pytest.fixture(scope="module")
def trained(trained_tiny_dir):
    return load_model(trained_tiny_dir, device="cpu").eval(), load_tokenizer(trained_tiny_dir)


def direct_perplexity(model, ids) -> float:
    """exp of the mean NLL of ids[1:], from one forward pass over all of ids."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()  # (n - 1, vocab)
    nll = -logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])
    return math.exp(nll.mean().item())


@pytest.mark.parametrize(("n_tokens", "seqlen", "stride"), [(2, 8, None), (9, 8, None), (10, 8, None), (100, 8, None),
                                                             (100, 8, 3), (100, 8, 1), (37, 16, 16), (37, 64, 5)])
def test_windows_score_every_token_but_the_first_once_with_context(n_tokens, seqlen, stride):
    cut = windows(n_tokens, seqlen, stride)
    targets = [t for w in cut for t in range(w.first, w.stop)]
    assert targets == list(range(1, n_tokens))
    assert len(cut) == math.ceil((n_tokens - 1) / (stride or seqlen))
    for w in cut:
        assert 1 <= w.stop - 1 - w.begin <= seqlen  # inputs fit one window
        assert w.begin <= w.first - 1  # the first target's logits are in the window
        assert w.begin == 0 or w.first - w.begin >= seqlen - (stride or seqlen) + 1  # least context of any target


def test_stride_must_lie_between_one_and_seqlen():
    with pytest.raises(ValueError, match="stride"):
        windows(10, 4, 5)


@pytest.mark.slow
def test_perplexity_of_a_text_in_one_window_equals_a_direct_computation(trained):
    model, tokenizer = trained
    text = tiny_heldout_text()[:400]
    ids = tokenizer(text)["input_ids"]
    expected = direct_perplexity(model, ids)
    assert perplexity(model, tokenizer, text) == pytest.approx(expected, rel=1e-4)
    assert perplexity(model, tokenizer, text, seqlen=len(ids) - 1) == pytest.approx(expected, rel=1e-4)  # just fits
    assert perplexity(model, tokenizer, text, seqlen=len(ids) - 1, stride=7) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_a_long_text_is_scored_token_by_token_once(trained):
    model, tokenizer = trained
    ids = tokenizer(tiny_heldout_text())["input_ids"]
    for stride, passes in [(None, math.ceil((len(ids) - 1) / 128)), (64, math.ceil((len(ids) - 1) / 64))]:
        score = score_ids(model, ids, seqlen=128, stride=stride)
        assert (score.tokens, score.windows) == (len(ids) - 1, passes)
        assert math.isfinite(score.perplexity)


@pytest.mark.slow
def test_sliding_windows_match_scoring_each_token_alone_with_its_context(trained):
    """Token t of block k = (t - 1) // stride is predicted from ids[max(0, stop_k - 1 - seqlen) : t]."""
    import torch

    model, tokenizer = trained
    ids = tokenizer(tiny_corpus_text()[:400])["input_ids"][:90]
    seqlen, stride = 32, 12
    nll = 0.0
    with torch.inference_mode():
        for t in range(1, len(ids)):
            stop = min(1 + ((t - 1) // stride + 1) * stride, len(ids))
            logits = model(input_ids=torch.tensor([ids[max(0, stop - 1 - seqlen) : t]])).logits[0, -1]
            nll -= logits.float().log_softmax(-1)[ids[t]].item()
    score = score_ids(model, ids, seqlen=seqlen, stride=stride)
    assert score.nll == pytest.approx(nll, rel=1e-4)
    assert score.perplexity == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)


@pytest.mark.slow
def test_a_random_model_is_near_uniform_and_the_trained_one_far_better(tiny_model_dir, trained):
    random_model, tokenizer = load_model(tiny_model_dir, device="cpu").eval(), load_tokenizer(tiny_model_dir)
    text = tiny_corpus_text()[:3000]  # text the trained model learned
    vocab = random_model.config.vocab_size
    random_ppl = perplexity(random_model, tokenizer, text, seqlen=128)
    trained_ppl = perplexity(*trained, text, seqlen=128)
    assert vocab / 2 < random_ppl < 2 * vocab
    assert trained_ppl < random_ppl / 10
