"""A frozen, differentiable CLIP/SigLIP text-image scorer (the semantic filter's judge).

`ClipScorer` wraps any local CLIP or SigLIP checkpoint directory (transformers `CLIPModel` /
`SiglipModel`) and does its image preprocessing in torch: resize with `F.interpolate` and normalise with
the checkpoint's mean/std. No PIL in the hot path, so decoded images can be scored on the accelerator and
gradients can flow back to the pixels if a caller wants them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# OpenAI CLIP's normalisation; the fallback when a checkpoint has no preprocessor_config.json.
OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Any of these in a checkpoint directory means it ships a tokenizer AutoTokenizer can load.
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
)
WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "model.safetensors.index.json")


def _as_hw(size: Any) -> tuple[int, int] | None:
    """(height, width) from an image-processor `size`/`crop_size` entry (int or dict), else None."""
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size)
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return (int(size["height"]), int(size["width"]))
        if "shortest_edge" in size:
            return (int(size["shortest_edge"]), int(size["shortest_edge"]))
    return None


def read_image_preprocessing(
    path: str | Path, vision_image_size: int | None = None
) -> tuple[tuple[int, int], tuple[float, ...], tuple[float, ...]]:
    """Image (height, width), mean and std for a checkpoint directory.

    Read from preprocessor_config.json (or the `image_processor` entry of processor_config.json) when
    present: the centre-crop size if cropping is on, else the resize size. Otherwise fall back to the
    vision config's square `image_size` with OpenAI CLIP's mean/std. Real CLIP resizes the shortest edge
    and centre-crops; for the square images scored here that is the same as resizing to the crop size.
    """
    path = Path(path)
    proc: dict[str, Any] | None = None
    if (path / "preprocessor_config.json").is_file():
        proc = json.loads((path / "preprocessor_config.json").read_text())
    elif (path / "processor_config.json").is_file():
        proc = json.loads((path / "processor_config.json").read_text()).get("image_processor")
    hw: tuple[int, int] | None = None
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    if proc is not None:
        if proc.get("do_center_crop") and proc.get("crop_size") is not None:
            hw = _as_hw(proc["crop_size"])
        if hw is None:
            hw = _as_hw(proc.get("size"))
        if proc.get("do_normalize", True) is False:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            mean = tuple(float(v) for v in proc.get("image_mean", mean))
            std = tuple(float(v) for v in proc.get("image_std", std))
    if hw is None:
        if vision_image_size is None:
            raise ValueError(f"{path}: no image size in preprocessor_config.json nor in the vision config")
        hw = (int(vision_image_size), int(vision_image_size))
    return hw, mean, std


def _pooled(out: Any) -> Tensor:
    """Feature tensor from get_*_features, which return a tensor (older transformers) or an output object."""
    return out if isinstance(out, Tensor) else out.pooler_output


class ClipScorer(nn.Module):
    """Frozen CLIP/SigLIP wrapper: L2-normalised image/text features and their cosine similarity.

    Pixels are float tensors [B, 3, H, W] in [0, 1] (any H, W; resized bilinearly to the model's size).
    Every method is plain differentiable torch; wrap calls in `torch.no_grad()` when no gradient is needed.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        image_size: int | tuple[int, int],
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        for name in ("get_image_features", "get_text_features"):
            if not hasattr(model, name):
                raise TypeError(
                    f"{type(model).__name__} has no {name}(); expected a CLIPModel or SiglipModel"
                )
        self.model = model
        self.model.requires_grad_(False)
        self.model.eval()
        self.tokenizer = tokenizer
        self.image_size: tuple[int, int] = (
            (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(image_size)
        )
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean/std must have 3 channels, got mean={list(mean)} std={list(std)}")
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if max_length is None:
            text_cfg = getattr(getattr(model, "config", None), "text_config", None)
            max_length = int(getattr(text_cfg, "max_position_embeddings", 0) or 0) or None
        if max_length is None:
            raise ValueError("max_length not given and the model config has no text max_position_embeddings")
        self.max_length = int(max_length)

    # ------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
    ) -> ClipScorer:
        """Load a local checkpoint directory offline (safetensors weights only; code shipped in the
        directory runs only with `trust_remote_code`)."""
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"CLIP checkpoint directory {str(path)!r} does not exist")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"CLIP checkpoint {str(path)!r} is missing config.json")
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"CLIP checkpoint {str(path)!r} is missing its tokenizer: none of {', '.join(TOKENIZER_FILES)}"
            )
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise FileNotFoundError(
                f"CLIP checkpoint {str(path)!r} is missing model.safetensors (pickle weights are not loaded)"
            )
        kwargs: dict[str, Any] = {
            "local_files_only": True,
            "use_safetensors": True,
            "trust_remote_code": trust_remote_code,
        }
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = AutoModel.from_pretrained(str(path), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
        vision_cfg = getattr(model.config, "vision_config", None)
        hw, mean, std = read_image_preprocessing(path, getattr(vision_cfg, "image_size", None))
        scorer = cls(model, tokenizer, hw, mean, std)
        if device is not None:
            scorer.to(device)
        return scorer

    def train(self, mode: bool = True) -> ClipScorer:
        """The scorer stays in eval mode (no dropout) whatever the parent module does."""
        super().train(False)
        return self

    # ----------------------------------------------------------------------------------- features
    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, pixels: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> normalised [B, 3, h, w] at the model's size and dtype."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be [B, 3, H, W] in [0, 1], got shape {tuple(pixels.shape)}")
        x = pixels.to(device=self.device, dtype=torch.float32)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=False)
        x = (x - self.mean) / self.std
        return x.to(self.dtype)

    def image_features(self, pixels: Tensor) -> Tensor:
        """L2-normalised image embeddings [B, E] (float32) for pixels [B, 3, H, W] in [0, 1]."""
        feats = _pooled(self.model.get_image_features(pixel_values=self.preprocess(pixels)))
        return F.normalize(feats.float(), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Pad/truncate to the model's max text positions (SigLIP pools the last position, so pad to max)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string")
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        keep = ("input_ids", "attention_mask")
        return {k: v.to(self.device) for k, v in enc.items() if k in keep}

    def text_features(self, texts: Sequence[str]) -> Tensor:
        """L2-normalised text embeddings [B, E] (float32)."""
        feats = _pooled(self.model.get_text_features(**self.tokenize(texts)))
        return F.normalize(feats.float(), dim=-1)

    def text_image_similarity(self, pixels: Tensor, texts: Sequence[str]) -> Tensor:
        """Cosine similarity [B] in [-1, 1] between image i and text i."""
        if len(texts) != pixels.shape[0]:
            raise ValueError(
                f"got {pixels.shape[0]} images but {len(texts)} texts; expected one text per image"
            )
        return (self.image_features(pixels) * self.text_features(texts)).sum(-1)

    def image_similarity(self, pixels_a: Tensor, pixels_b: Tensor) -> Tensor:
        """Cosine similarity [B] between image features of a[i] and b[i] (the `cosine` filter ablation)."""
        if pixels_a.shape[0] != pixels_b.shape[0]:
            raise ValueError(f"batch sizes differ: {pixels_a.shape[0]} vs {pixels_b.shape[0]}")
        return (self.image_features(pixels_a) * self.image_features(pixels_b)).sum(-1)
