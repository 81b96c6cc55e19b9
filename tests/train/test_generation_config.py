"""`belle train` and `belle train merge` write a generation_config.json whose end ids are the template's,
so `model.generate()`, vLLM and `belle serve` stop where the model was trained to stop."""

import pytest

from tests.train.helpers import SAMPLES, files_list

CHATML_END = "<|im_end|>"  # one token of the tiny tokenizer, and chatml's turn end


def assert_ends_like_the_template(folder, tokenizer, engine_dir=None):
    """The folder's generation config ends a reply at EOS and at chatml's turn end, pads with the pad
    token, sets no sampling, and is what the engine stops at when it loads the model."""
    from transformers import GenerationConfig

    from belle.generation import load_engine

    config = GenerationConfig.from_pretrained(folder)
    expected = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(CHATML_END)})
    assert len(expected) == 2
    assert config.eos_token_id == expected
    assert config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert not config.do_sample
    engine = load_engine(engine_dir or folder, device="cpu")
    assert sorted(engine.eos_token_ids) == expected
    assert engine.default_params.temperature == 0  # greedy: sampling is the user's to ask for


@pytest.mark.slow
def test_sft_full_writes_the_templates_end_ids(train, tokenizer, tmp_path):
    """A full run's folder; a LoRA run's adapter and its merged model are checked on test_merge.py's
    runs, which train with chatml for this."""
    full = tmp_path / "full"
    train(full, "model.template=chatml", f"data.train_files={files_list(SAMPLES / 'belle_conversations.jsonl')}",
          "training.max_steps=2", "training.batch_size=2")
    assert_ends_like_the_template(full, tokenizer)
