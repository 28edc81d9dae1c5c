"""The sentence-embedding pipeline as one traceable torch module.

Backbone (Gemma 3, bidirectional) -> mean pooling over the attention mask -> Dense heads. L2
normalisation and Matryoshka truncation are left to the runtime so one graph serves every dim.
"""
from __future__ import annotations

import torch


class UnsupportedCheckpointError(ValueError):
    """The checkpoint is not an EmbeddingGemma-style sentence-transformers model we can export."""


class EmbeddingPipeline(torch.nn.Module):
    """input_ids, attention_mask [batch, seq] -> sentence_embedding [batch, dim] (not normalised)."""

    def __init__(self, backbone: torch.nn.Module, dense_layers: list[torch.nn.Linear]):
        super().__init__()
        self.backbone = backbone
        config = backbone.config
        if not getattr(config, "use_bidirectional_attention", False):
            raise UnsupportedCheckpointError(
                "the backbone config does not set use_bidirectional_attention; EmbeddingGemma needs it "
                "(transformers >= 4.57 reads it; older versions silently run a causal mask)"
            )
        # In memory transformers already holds the exclusive half-window (512 -> 257): |i - j| < window.
        self.window = int(config.sliding_window)
        self.layer_types = set(config.layer_types)
        # Dense heads as plain matmuls against [in, out] weights: exported as MatMul rather than Gemm,
        # which onnxruntime's block quantizers recognise.
        self.dense_weights = torch.nn.ParameterList(
            [torch.nn.Parameter(layer.weight.detach().t().contiguous(), requires_grad=False) for layer in dense_layers]
        )
        self.dense_biases = [None if layer.bias is None else layer.bias.detach() for layer in dense_layers]
        if any(b is not None for b in self.dense_biases):
            raise UnsupportedCheckpointError("Dense heads with a bias are not supported (EmbeddingGemma has none)")

    def attention_masks(self, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Additive float masks per layer type: padding keys hidden; sliding layers see |i-j| < window.

        A finite minimum (not -inf) keeps fully masked rows (padding queries far from any real token
        in a sliding layer) finite instead of NaN, so padding can never poison real rows.
        """
        seq = attention_mask.shape[1]
        neg = torch.finfo(torch.float32).min
        key_ok = attention_mask.bool()[:, None, None, :]  # [batch, 1, 1, seq]
        pos = torch.arange(seq, device=attention_mask.device)
        in_window = (pos[:, None] - pos[None, :]).abs() < self.window  # [seq, seq]
        zero = torch.zeros((), dtype=torch.float32)
        masks = {}
        if "full_attention" in self.layer_types:
            masks["full_attention"] = torch.where(key_ok, zero, neg).expand(-1, 1, seq, seq)
        if "sliding_attention" in self.layer_types:
            masks["sliding_attention"] = torch.where(key_ok & in_window[None, None], zero, neg)
        return masks

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=self.attention_masks(attention_mask)).last_hidden_state
        keep = attention_mask.to(hidden.dtype).unsqueeze(-1)
        # where() rather than multiply: an inf in a padded row times 0 would still give NaN.
        summed = torch.where(keep > 0, hidden, torch.zeros((), dtype=hidden.dtype)).sum(dim=1)
        pooled = summed / keep.sum(dim=1).clamp(min=1e-9)
        for weight in self.dense_weights:
            pooled = torch.matmul(pooled, weight)
        return pooled


def pipeline_from_sentence_transformer(st_model) -> EmbeddingPipeline:
    """Check that a loaded SentenceTransformer has the EmbeddingGemma layout and wrap it for export."""
    from sentence_transformers import models as st_models

    modules = list(st_model)
    kinds = [type(m).__name__ for m in modules]
    if not modules or not isinstance(modules[0], st_models.Transformer):
        raise UnsupportedCheckpointError(f"expected a Transformer module first, found modules {kinds}")
    pooling = next((m for m in modules if isinstance(m, st_models.Pooling)), None)
    if pooling is None or pooling.pooling_mode != "mean" or not pooling.include_prompt:
        raise UnsupportedCheckpointError(
            f"expected mean pooling that includes prompt tokens, found {kinds} "
            f"(pooling mode {getattr(pooling, 'pooling_mode', None)})"
        )
    dense = [m for m in modules if isinstance(m, st_models.Dense)]
    for m in dense:
        if not isinstance(m.activation_function, torch.nn.Identity):
            raise UnsupportedCheckpointError(f"Dense head with activation {m.activation_function} is not supported")
    allowed = (st_models.Transformer, st_models.Pooling, st_models.Dense, st_models.Normalize)
    extra = [k for m, k in zip(modules, kinds) if not isinstance(m, allowed)]
    if extra:
        raise UnsupportedCheckpointError(f"unsupported sentence-transformers modules: {extra}")
    backbone = modules[0].auto_model
    if backbone.config.model_type != "gemma3_text":
        raise UnsupportedCheckpointError(f"expected a gemma3_text backbone, found {backbone.config.model_type!r}")
    return EmbeddingPipeline(backbone, [m.linear for m in dense]).eval()
