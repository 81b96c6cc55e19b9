"""How each Hugging Face architecture maps onto llama.cpp's: hyper-parameters and tensors.

`GGUF_ARCHES` is keyed by HF `model_type`. A `GgufArch` writes the `{arch}.*` keys from the
transformers config and turns the HF state dict into `(GGUF tensor name, float32 array)` pairs,
one tensor at a time, with the changes llama.cpp's graph expects (see `GgufArch.tensors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from belle.architectures import gguf_refusal
from belle.cli import UsageError


def _rope_parameters(config: Any) -> dict[str, Any]:
    """`rope_theta` and the scaling settings: transformers 5's `rope_parameters`, else the old fields."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    scaling = getattr(config, "rope_scaling", None)
    if scaling and "rope_type" not in params:
        params.update(scaling)
    return params


ROPE_KINDS = ("default", "linear", "yarn")


def _rope_kind(config: Any) -> str:
    """The RoPE scaling of `config` (one of `ROPE_KINDS`), or a `UsageError` for another."""
    rope = _rope_parameters(config)
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind not in ROPE_KINDS:
        raise UsageError(f"GGUF export does not support rope_type {kind!r} (config.json's rope settings); "
                         f"it supports {', '.join(ROPE_KINDS)}")
    return kind


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _unfuse_qkv(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a fused query_key_value projection from HF's per-head `(q, k, v)` order (BLOOM,
    GPT-NeoX) to llama.cpp's `[all q; all k; all v]`. `weight`: (3 * n_heads * d, ...) or (3 * n_heads * d,)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 3, rows // n_heads // 3, *weight.shape[1:]).swapaxes(0, 1).reshape(weight.shape)


def _permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q or k projection from HF's rotate-half order to llama.cpp's interleaved RoPE order
    (pairs `(i, i + d/2)` of each head become neighbours). `weight`: (n_heads * d, ...) or (n_heads * d,)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@dataclass(frozen=True)
class GgufArch:
    """One HF architecture as llama.cpp runs it.

    `name` is the GGUF architecture (`general.architecture`), `model_arch` the member of
    `gguf.MODEL_ARCH` whose tensor map names the tensors. `permute_qk`: llama.cpp runs this
    architecture with interleaved RoPE, so q and k rows are reordered. `norm_offset` is added to
    every RMSNorm weight (Gemma stores `w - 1`). `extra` writes the architecture's own keys;
    `refuse` raises `UsageError` for a config llama.cpp's graph cannot run (see `check_config`).
    `layer_norm`: LayerNorm with a bias, not RMSNorm. `rope`: positions by RoPE (False: ALiBi).
    `fused_qkv`: one query_key_value projection, per head (q, k, v) in HF. `strip` is removed from
    the front of HF tensor names before the lookup (llama.cpp's map knows BLOOM's without it).
    `reuses_embeddings`: llama.cpp runs tied embeddings without an output matrix.
    """

    name: str
    model_arch: str
    permute_qk: bool = False
    norm_offset: float = 0.0
    extra: Callable[[Any, Any], None] | None = None
    refuse: Callable[[Any], None] | None = None
    layer_norm: bool = False
    rope: bool = True
    fused_qkv: bool = False
    strip: str = ""
    reuses_embeddings: bool = True

    def context_length(self, config: Any) -> int:
        """Tokens the model was trained on: `max_position_embeddings`; for BLOOM (ALiBi, no such
        field) `seq_length`, else 2048, the length BLOOM was trained on."""
        return int(getattr(config, "max_position_embeddings", None) or getattr(config, "seq_length", None) or 2048)

    def output_name(self, config: Any) -> str:
        """The GGUF tensor that is the output matrix: `token_embd.weight` when the embeddings are
        tied and llama.cpp reuses them (no `output.weight` is written), else `output.weight`."""
        tied = self.reuses_embeddings and bool(getattr(config, "tie_word_embeddings", False))
        return "token_embd.weight" if tied else "output.weight"

    def check_config(self, config: Any) -> None:
        """Raise `UsageError` for a variant of the architecture llama.cpp cannot run (a setting of
        `config`, the transformers config), before any weight is loaded."""
        if self.rope:
            _rope_kind(config)
        if self.refuse is not None:
            self.refuse(config)

    def write_hparams(self, writer: Any, config: Any, context_length: int) -> None:
        """The `{arch}.*` keys llama.cpp reads for this architecture."""
        dim = head_dim(config)
        writer.add_context_length(context_length)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(getattr(config, "intermediate_size", None) or 4 * config.hidden_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        writer.add_key_length(dim)
        writer.add_value_length(dim)
        if self.layer_norm:
            eps = getattr(config, "layer_norm_eps", None) or getattr(config, "layer_norm_epsilon", None)
            writer.add_layer_norm_eps(float(eps))
        else:
            writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        if self.rope:
            self._write_rope(writer, config, dim)
        if self.extra is not None:
            self.extra(writer, config)

    @staticmethod
    def _write_rope(writer: Any, config: Any, dim: int) -> None:
        from gguf import RopeScalingType

        rope = _rope_parameters(config)
        writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
        writer.add_rope_dimension_count(int(dim * rope.get("partial_rotary_factor", 1.0)))
        kind = _rope_kind(config)
        if kind == "linear":
            writer.add_rope_scaling_type(RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))
        elif kind == "yarn":
            writer.add_rope_scaling_type(RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(rope["factor"]))
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))

    def name_map(self, config: Any) -> Any:
        """gguf-py's HF -> GGUF tensor name map (`gguf.TensorNameMap`) for `config`'s blocks: build it
        once per export (milliseconds per call, more with many layers) and pass it to `tensor_name`."""
        import gguf

        return gguf.get_tensor_name_map(gguf.MODEL_ARCH[self.model_arch], config.num_hidden_layers)

    def tensor_name(self, hf_name: str, config: Any, name_map: Any) -> str | None:
        """The GGUF name of the HF tensor `hf_name` by `name_map` (`name_map(config)`); None for one
        the file leaves out (RoPE's `inv_freq`; `lm_head.weight` with tied embeddings). A
        `UsageError` for one the map does not know."""
        tied = self.output_name(config) == "token_embd.weight"
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            return None
        name = name_map.get_name(hf_name.removeprefix(self.strip), try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UsageError(f"GGUF export ({self.name}): no llama.cpp tensor for {hf_name}")
        return name

    def tensors(self, state: dict[str, Any], config: Any,
                name_map: Any = None) -> Iterator[tuple[str, np.ndarray]]:
        """`(GGUF name, float32 array)` for each tensor of `state` (HF names, torch tensors), in
        order, each made only when asked for; names by `name_map` (built here when None). The output
        matrix is left out when the embeddings are tied (llama.cpp then reuses `token_embd.weight`).
        An HF tensor the map does not know is a `UsageError`: writing a file without it would give a
        model that computes something else."""
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        name_map = self.name_map(config) if name_map is None else name_map
        for hf_name, tensor in state.items():
            name = self.tensor_name(hf_name, config, name_map)
            if name is None:
                continue
            array = tensor.detach().to("cpu").float().numpy()
            if self.fused_qkv and ".attn_qkv." in name:
                array = _unfuse_qkv(array, heads)
            elif self.permute_qk and ".attn_q." in name:
                array = _permute(array, heads)
            elif self.permute_qk and ".attn_k." in name:
                array = _permute(array, kv_heads)
            if self.norm_offset and name.endswith("norm.weight"):
                array = array + self.norm_offset
            yield name, array


def _qwen2_refuse(config: Any) -> None:
    if getattr(config, "use_sliding_window", False):
        raise UsageError("GGUF export: Qwen2 with use_sliding_window is not supported by llama.cpp's qwen2")


def _gemma2_refuse(config: Any) -> None:
    """llama.cpp alternates local and global layers itself (even layers local) and scales queries
    by 1/sqrt(head_dim): other layouts are refused."""
    if config.query_pre_attn_scalar != head_dim(config):
        raise UsageError(f"GGUF export: Gemma 2 with query_pre_attn_scalar {config.query_pre_attn_scalar} "
                         f"!= head_dim {head_dim(config)} is not supported")
    layer_types = getattr(config, "layer_types", None)
    expected = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(config.num_hidden_layers)]
    if layer_types is not None and list(layer_types) != expected:
        raise UsageError("GGUF export: Gemma 2 layers must alternate sliding and full attention, "
                         "as llama.cpp runs them")


def _gemma2_extra(writer: Any, config: Any) -> None:
    """Soft-capping and the sliding window."""
    writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping or 0.0))
    writer.add_final_logit_softcapping(float(config.final_logit_softcapping or 0.0))
    writer.add_sliding_window(int(config.sliding_window))


def _phi3_extra(writer: Any, config: Any) -> None:
    if getattr(config, "sliding_window", None):
        writer.add_sliding_window(int(config.sliding_window))


GELU = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")
"""The activations llama.cpp's GELU (tanh approximation) stands for; exact `gelu` differs by < 1e-3."""


def _bloom_refuse(config: Any) -> None:
    """llama.cpp adds each block's input, not its normed input, to the attention output."""
    if getattr(config, "apply_residual_connection_post_layernorm", False):
        raise UsageError("GGUF export: BLOOM with apply_residual_connection_post_layernorm is not supported "
                         "by llama.cpp's bloom")


def _gpt_neox_refuse(config: Any) -> None:
    if config.hidden_act not in GELU:
        raise UsageError(f"GGUF export: GPT-NeoX with hidden_act {config.hidden_act!r} is not supported; "
                         f"llama.cpp's gptneox runs {', '.join(GELU)}")


def _gpt_neox_extra(writer: Any, config: Any) -> None:
    writer.add_parallel_residual(bool(getattr(config, "use_parallel_residual", True)))


GGUF_ARCHES: dict[str, GgufArch] = {
    "llama": GgufArch("llama", "LLAMA", permute_qk=True),
    "mistral": GgufArch("llama", "LLAMA", permute_qk=True),
    "qwen2": GgufArch("qwen2", "QWEN2", refuse=_qwen2_refuse),
    "qwen3": GgufArch("qwen3", "QWEN3"),
    "gemma2": GgufArch("gemma2", "GEMMA2", norm_offset=1.0, extra=_gemma2_extra, refuse=_gemma2_refuse),
    "phi3": GgufArch("phi3", "PHI3", extra=_phi3_extra),
    "bloom": GgufArch("bloom", "BLOOM", refuse=_bloom_refuse, layer_norm=True, rope=False, fused_qkv=True,
                      strip="transformer."),
    "gpt_neox": GgufArch("gptneox", "GPTNEOX", extra=_gpt_neox_extra, refuse=_gpt_neox_refuse, layer_norm=True,
                         fused_qkv=True, reuses_embeddings=False),
}


def gguf_arch(model_type: str | None) -> GgufArch:
    """The `GgufArch` of an HF `model_type`, or a `UsageError` naming it and the supported ones."""
    if model_type not in GGUF_ARCHES:
        raise UsageError(gguf_refusal(model_type))
    return GGUF_ARCHES[model_type]
