"""Adapter for HF `Emu3ForConditionalGeneration`: one VQ tokenizer shared by both branches.

Emu3 has no vision encoder: an image enters the language model as the BPE ids of its VQ codes,
laid out as transformers' `Emu3Processor` and `Emu3Model` do,

    <|image start|> "{h}*{w}" <|image token|> (w visual tokens, <|extra_200|>) x h <|extra_201|> <|image end|>

where `<|extra_200|>` ends each row (EOL) and `<|extra_201|>` ends the grid (EOF). Generation
writes the same block after the prompt: visual tokens only (the sampler is restricted to them),
an EOL forced after every row, then the codes are decoded by the VQ decoder.

The VQ is a video tokenizer: an image is encoded as a clip of `temporal_downsample_factor`
identical frames (the encoder's temporal convolutions reduce it to one latent frame), and the
decoder returns that many frames, of which the first is the image. The spatial factor is
`2 ** (len(channel_multiplier) - 1)` (8 for the released checkpoints).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from unigame.models.sequences import (
    CAPTION_QUESTION,
    answer_ce,
    cache_argument,
    greedy_ids,
    guided_sample,
    pack,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import Emu3ForConditionalGeneration, PreTrainedTokenizerBase

__all__ = ["EMU3_CHAT_PROMPT", "EMU3_TOKENS", "TINY_EMU3_PROMPT", "Emu3Adapter", "Emu3Prompt", "Emu3Tokens"]


@dataclass(frozen=True)
class Emu3Tokens:
    """The special tokens of Emu3's image block (names as in the released tokenizer)."""

    image: str = "<image>"  # the processor's placeholder, one per grid cell incl. EOL cells
    image_start: str = "<|image start|>"
    image_end: str = "<|image end|>"
    image_wrapper: str = "<|image token|>"  # closes the "{h}*{w}" header
    eol: str = "<|extra_200|>"  # ends every row; transformers hard-codes this name
    eof: str = "<|extra_201|>"  # ends the grid
    visual: str = "<|visual token {:06d}|>"  # code k's BPE token; transformers parses the 6 digits

    def names(self) -> tuple[str, ...]:
        return (self.image, self.image_start, self.image_end, self.image_wrapper, self.eol, self.eof)


EMU3_TOKENS = Emu3Tokens()


@dataclass(frozen=True)
class Emu3Prompt:
    """Text around the image and the question; `{image}` becomes the image block."""

    understanding: str = "{image}{question}\n"
    generation: str = "{prompt}"
    negative: str = ""  # the classifier-free-guidance prompt of generation


TINY_EMU3_PROMPT = Emu3Prompt()
# Emu3-Chat's layout (transformers' Emu3 docs: "You are a helpful assistant. USER: <image>... ASSISTANT:").
EMU3_CHAT_PROMPT = Emu3Prompt(understanding="You are a helpful assistant. USER: {image}{question} ASSISTANT:")
PREPROCESSOR_FILE = "preprocessor_config.json"


class Emu3Adapter:
    """The unified-model protocol implemented for `Emu3ForConditionalGeneration`.

    Understanding tokens are the LM input embeddings of the image's visual tokens, (B, h*w, D)
    without the EOL cells (those are layout, not image content, and stay fixed). Emu3 picks each
    code by an argmin, which has no gradient, so `visual_tokens` makes the choice straight-through:
    the forward value is exactly the embedding of the nearest code (what Emu3 itself feeds), and
    the backward pass uses a softmax over the `soft_codes` nearest codes' distances, so
    `understanding_loss(pixels)` is differentiable w.r.t. the pixels, as the decoder adversary
    needs.

    Args:
        model: the Emu3 model.
        tokenizer: its tokenizer (must hold every `Emu3Tokens` name and the visual tokens).
        prompt: the text layout.
        image_size: square side the model reads and writes; the grid is image_size / spatial factor.
        image_mean, image_std: the image processor's normalisation (the VQ sees (x - mean) / std).
        soft_codes: codes in the straight-through softmax (>= 2).
        soft_temperature: its temperature, relative to the mean squared distance of those codes.
    """

    def __init__(
        self,
        model: Emu3ForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        prompt: Emu3Prompt = TINY_EMU3_PROMPT,
        image_size: int = 32,
        image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        image_std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        soft_codes: int = 8,
        soft_temperature: float = 0.5,
        tokens: Emu3Tokens = EMU3_TOKENS,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.tokens = tokens
        vq = model.model.vqmodel
        self.spatial_factor = int(vq.vision_spatial_factor)
        self.temporal_factor = int(vq.config.temporal_downsample_factor)
        if image_size % self.spatial_factor:
            raise ValueError(
                f"image_size={image_size} is not a multiple of the VQ's spatial factor {self.spatial_factor}"
            )
        if soft_codes < 2 or soft_temperature <= 0:
            raise ValueError(
                f"soft_codes={soft_codes} must be >= 2 and soft_temperature={soft_temperature} > 0"
            )
        self.image_size = image_size
        self.grid = image_size // self.spatial_factor  # h = w
        self.num_image_tokens = self.grid**2
        self.codebook_size = int(vq.config.codebook_size)
        self.soft_codes = min(soft_codes, self.codebook_size)
        self.soft_temperature = soft_temperature
        self._mean = torch.tensor(image_mean).view(1, 3, 1, 1)
        self._std = torch.tensor(image_std).view(1, 3, 1, 1)

        vocab = tokenizer.get_vocab()
        visual = [tokens.visual.format(k) for k in range(self.codebook_size)]
        missing = [name for name in (*tokens.names(), *visual) if name not in vocab]
        if missing:
            raise ValueError(
                f"the tokenizer lacks {len(missing)} Emu3 token(s), e.g. {missing[:3]}: it must hold the "
                f"image-block tokens and one visual token per VQ code ({self.codebook_size})."
            )
        self.pad_id: int = int(tokenizer.pad_token_id)
        self.bos_id: int = int(tokenizer.bos_token_id)
        self.eos_id: int = int(tokenizer.eos_token_id)
        self.image_token_id, self.eol_id, self.eof_id = (
            vocab[t] for t in (tokens.image, tokens.eol, tokens.eof)
        )
        self._code_ids = torch.tensor([vocab[name] for name in visual])  # (K,) code -> BPE id
        # The image header, then the grid as the language model reads it: a placeholder per code
        # (overwritten by `visual_tokens`), the real EOL id at the end of each row.
        self._header_ids = (
            [vocab[tokens.image_start]]
            + self._ids(f"{self.grid}*{self.grid}")
            + [vocab[tokens.image_wrapper]]
        )
        row = [self.image_token_id] * self.grid + [self.eol_id]
        self._image_block_ids = self._header_ids + row * self.grid + [self.eof_id, vocab[tokens.image_end]]

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", prompt: Emu3Prompt = TINY_EMU3_PROMPT
    ) -> Emu3Adapter:
        """Load a local Emu3 directory offline; the image size and normalisation come from its
        `preprocessor_config.json` (side = sqrt(min_pixels), the smallest square Emu3's image
        processor produces), with transformers' `Emu3ImageProcessor` defaults when absent."""
        from transformers import AutoTokenizer, Emu3ForConditionalGeneration

        path = Path(path)
        missing = [name for name in ("config.json", "tokenizer_config.json") if not (path / name).exists()]
        if missing:
            raise FileNotFoundError(
                f"{path} is not an Emu3 model directory: missing {', '.join(missing)} "
                "(adapter: Emu3Adapter for Emu3ForConditionalGeneration)"
            )
        model, info = Emu3ForConditionalGeneration.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, output_loading_info=True
        )
        if info.get("missing_keys"):
            missing_keys = sorted(info["missing_keys"])
            raise ValueError(
                f"{path} has no weights for {len(missing_keys)} tensor(s), e.g. {missing_keys[:3]} "
                "(they would be random); adapter: Emu3Adapter."
            )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        pre = (
            json.loads((path / PREPROCESSOR_FILE).read_text()) if (path / PREPROCESSOR_FILE).exists() else {}
        )
        side = round(pre.get("min_pixels", 512 * 512) ** 0.5)
        mean = tuple(pre.get("image_mean", (0.48145466, 0.4578275, 0.40821073)))
        std = tuple(pre.get("image_std", (0.26862954, 0.26130258, 0.27577711)))
        return cls(model.to(device).eval(), tokenizer, prompt, side, mean, std)

    def save_pretrained(self, path: str | Path) -> None:
        """Save model, tokenizer and the image settings `from_pretrained` reads back."""
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        pre = {
            "image_processor_type": "Emu3ImageProcessor",
            "image_mean": self._mean.flatten().tolist(),
            "image_std": self._std.flatten().tolist(),
            "min_pixels": self.image_size**2,
            "max_pixels": self.image_size**2,
            "spatial_factor": self.spatial_factor,
        }
        (path / PREPROCESSOR_FILE).write_text(json.dumps(pre, indent=2) + "\n")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ text helpers
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _understanding_prompt_ids(self, question: str) -> list[int]:
        before, after = self.prompt.understanding.split("{image}")
        ids = self._ids(before.format(question=question)) + self._image_block_ids
        return [self.bos_id] + ids + self._ids(after.format(question=question))

    def _generation_prompt_ids(self, prompt: str) -> list[int]:
        return [self.bos_id] + self._ids(self.prompt.generation.format(prompt=prompt)) + self._header_ids

    # ------------------------------------------------------------------ VQ latents
    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0,1] pixels -> the VQ's input, in torch so gradients reach the pixels."""
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear")
        return (pixels - self._mean.to(pixels)) / self._std.to(pixels)

    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0,1] -> (B, h*w, C) the VQ's continuous pre-quantisation latent.

        Unlike Janus's, these are not unit-norm (Emu3's codebook is plain L2), so the decoder
        adversary needs `game.budget: relative`.
        """
        vq = self.model.model.vqmodel
        x = self.normalize_pixels(pixels).to(vq.quant_conv.conv.weight.dtype)
        clip = x.unsqueeze(1).expand(-1, self.temporal_factor, -1, -1, -1)  # (B, T, 3, H, W) a still clip
        hidden = vq.encoder(clip)  # (B, 1, C_lat, h, w): the temporal convs reduce T frames to one
        latent = vq.quant_conv(hidden.permute(0, 2, 1, 3, 4))  # (B, C, 1, h, w)
        return latent[:, :, 0].flatten(2).transpose(1, 2)  # (B, h*w, C)

    def _distances(self, latents: torch.Tensor) -> torch.Tensor:
        """Squared L2 distances (B, N, K) to the codebook, computed as Emu3's quantizer does."""
        codebook = self.model.model.vqmodel.quantize.embedding.weight  # (K, C)
        latents = latents.to(codebook.dtype)
        return (latents**2).sum(-1, keepdim=True) + (codebook**2).sum(-1) - 2 * latents @ codebook.t()

    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, N, C) latents -> (B, N) nearest codes, exactly as Emu3's quantizer picks them."""
        return self._distances(latents).argmin(-1)

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.model.vqmodel.quantize.embedding(codes)  # (B, N, C)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, h*w, C) latents -> (B, 3, H, W) pixels in [0,1]; differentiable w.r.t. the latents.

        `Emu3VQVAE.decode` only takes codes (and runs under no_grad in `decode_image_tokens`), so
        this does its steps on continuous latents: post_quant_conv, then the decoder, which also
        conditions its spatial norms on the latent itself.

        Autocast is off and the latents are cast to float32, also inside a bf16 autocast region:
        bf16 would round a perturbation of ~1% of a token away. The decoder runs at its weights'
        precision: float32, since a bf16 run keeps `fp32_modules()` out of its bf16 storage.
        """
        vq = self.model.model.vqmodel
        batch, n, channels = latents.shape
        with torch.autocast(device_type=latents.device.type, enabled=False):
            quant = latents.float().transpose(1, 2).reshape(batch, channels, 1, self.grid, self.grid)
            quant = quant.to(vq.post_quant_conv.conv.weight.dtype)  # (B, C, 1, h, w); float32 unless cast
            post = vq.post_quant_conv(quant)  # (B, C_lat, 1, h, w)
            frames = vq.decoder(post.permute(0, 2, 1, 3, 4), quant.permute(0, 2, 1, 3, 4))  # (B*T, 3, H, W)
        image = frames.view(batch, -1, *frames.shape[1:])[:, 0].float()  # (B, 3, H, W) the first frame
        return (image * self._std.to(image) + self._mean.to(image)).clamp(0, 1)

    def fp32_modules(self) -> list[torch.nn.Module]:
        """The VQ's decoding path (codebook, post_quant_conv, decoder): a bf16 run keeps it in float32."""
        vq = self.model.model.vqmodel
        return [vq.quantize, vq.post_quant_conv, vq.decoder]

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_latents(self.codes_to_latents(codes))

    # ------------------------------------------------------------------ understanding
    def visual_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0,1] -> (B, h*w, D) input embeddings of the image's visual tokens.

        Forward: exactly the embedding of each latent's nearest code. Backward: straight-through a
        softmax over the `soft_codes` nearest codes (see the class docstring).
        """
        latents = self.encode_latents(pixels)  # (B, N, C)
        with torch.no_grad():
            near = self._distances(latents).topk(self.soft_codes, dim=-1, largest=False).indices  # (B, N, k)
        codebook = self.model.model.vqmodel.quantize.embedding.weight
        d2 = (latents.unsqueeze(2).to(codebook.dtype) - codebook[near]).pow(2).sum(-1).float()  # (B, N, k)
        scale = d2.mean(-1, keepdim=True).detach().clamp(min=1e-12) * self.soft_temperature
        soft = torch.softmax(-d2 / scale, dim=-1)  # (B, N, k)
        hard = F.one_hot(torch.zeros_like(near[..., 0]), self.soft_codes).to(soft)  # the nearest code
        weights = hard + (soft - soft.detach())  # forward: exactly one-hot; backward: d soft
        embeds = self.model.get_input_embeddings()(self._code_ids.to(near.device)[near])  # (B, N, k, D)
        return (weights.to(embeds.dtype).unsqueeze(-1) * embeds).sum(2)  # (B, N, D)

    def _embed_with_image(self, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        embeds = self.model.get_input_embeddings()(ids)  # (B, L, D)
        image_mask = (ids == self.image_token_id).unsqueeze(-1)  # (B, L, 1): the code cells
        return embeds.masked_scatter(image_mask, tokens.to(embeds.dtype))

    def understanding_loss_from_tokens(
        self, tokens: torch.Tensor, questions: list[str], answers: list[str]
    ) -> torch.Tensor:
        """Per-sample CE (mean over answer tokens incl. EOS) given visual tokens (B, h*w, D)."""
        prompts = [self._understanding_prompt_ids(q) for q in questions]
        targets = [self._ids(a) + [self.eos_id] for a in answers]
        ids, mask, positions, labels = pack(prompts, targets, self.pad_id, self.device)
        embeds = self._embed_with_image(ids, tokens)
        hidden = self.model.model.text_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).last_hidden_state
        return answer_ce(self.model.lm_head, hidden[:, :-1], labels[:, 1:])

    def understanding_loss(
        self, pixels: torch.Tensor, questions: list[str], answers: list[str]
    ) -> torch.Tensor:
        """Per-sample CE of the answers given images (B,), differentiable w.r.t. the pixels."""
        return self.understanding_loss_from_tokens(self.visual_tokens(pixels), questions, answers)

    @torch.no_grad()
    def answer(self, pixels: torch.Tensor, questions: list[str], max_new_tokens: int = 4) -> list[str]:
        """Greedy answers, batched with a KV cache."""
        prompts = [self._understanding_prompt_ids(q) for q in questions]
        ids, mask, positions, _ = pack(prompts, None, self.pad_id, self.device)
        rows = greedy_ids(
            self.model.model.text_model,
            self.model.lm_head,
            self.model.get_input_embeddings(),
            self._embed_with_image(ids, self.visual_tokens(pixels)),
            mask,
            positions,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            max_new_tokens=max_new_tokens,
        )
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]

    @torch.no_grad()
    def caption(self, pixels: torch.Tensor, max_new_tokens: int = 32) -> list[str]:
        """Greedy description of each image (asked with the caption question)."""
        return self.answer(pixels, [CAPTION_QUESTION] * pixels.shape[0], max_new_tokens)

    # ------------------------------------------------------------------ generation
    def _image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM logits restricted to the visual tokens, in code order: (..., D) -> (..., K)."""
        return self.model.lm_head(hidden).float()[..., self._code_ids.to(hidden.device)]

    def _grid_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h*w) codes -> (B, h*(w+1)) BPE ids with an EOL after every row."""
        rows = self._code_ids.to(codes.device)[codes].view(-1, self.grid, self.grid)
        eol = torch.full_like(rows[:, :, :1], self.eol_id)
        return torch.cat([rows, eol], dim=-1).flatten(1)

    def generation_loss(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Per-sample teacher-forced CE (B,) of the image's codes given the text, over visual tokens."""
        with torch.no_grad():
            codes = self.quantize(self.encode_latents(pixels))  # (B, N)
        return self.generation_loss_from_codes(codes, prompts)

    def generation_loss_from_codes(self, codes: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Per-sample teacher-forced CE (B,) of given codes (B, N) given the text."""
        return F.cross_entropy(
            self._teacher_forced_logits(prompts, codes).transpose(1, 2), codes, reduction="none"
        ).mean(-1)

    def _teacher_forced_logits(self, prompts: list[str], codes: torch.Tensor) -> torch.Tensor:
        """(B, N, K) restricted logits predicting each code from the prompt and the codes before it."""
        prompt_ids = [self._generation_prompt_ids(p) for p in prompts]
        ids, mask, positions, _ = pack(prompt_ids, None, self.pad_id, self.device)
        grid = self._grid_ids(codes)  # (B, h*(w+1))
        ids = torch.cat([ids, grid], dim=1)
        mask = torch.cat([mask, torch.ones_like(grid)], dim=1)
        positions = torch.cat(
            [positions, positions[:, -1:] + torch.arange(1, grid.shape[1] + 1, device=ids.device)], dim=1
        )
        hidden = self.model.model.text_model(
            input_ids=ids, attention_mask=mask, position_ids=positions
        ).last_hidden_state
        # Code cells are predicted from the previous position; EOL cells carry no prediction.
        is_code = torch.ones(self.grid, self.grid + 1, dtype=torch.bool, device=ids.device)
        is_code[:, -1] = False
        start = ids.shape[1] - grid.shape[1] - 1
        predictors = hidden[:, start:-1][:, is_code.flatten()]  # (B, N, D)
        return self._image_logits(predictors)

    @torch.no_grad()
    def generate_codes(
        self,
        prompts: list[str],
        guidance: float = 3.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        embedding_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, h*w) VQ codes sampled autoregressively with classifier-free guidance.

        Sampling is restricted to the visual tokens and an EOL is fed after every row, as Emu3's
        `prefix_allowed_tokens_fn` recipe constrains `generate`. The unconditional branch reads
        `prompt.negative` instead of the prompt. `embedding_hook` maps the visual-token embeddings
        fed back at every step (2B, 1, D) (conditional and unconditional rows; EOL is not hooked):
        UniGame's official-style mining injects the challenger's perturbation there.
        """
        from transformers import DynamicCache

        batch = len(prompts)
        cond = [self._generation_prompt_ids(p) for p in prompts]
        uncond = [self._generation_prompt_ids(self.prompt.negative)] * batch
        ids, mask, positions, _ = pack(cond + uncond, None, self.pad_id, self.device)
        embed = self.model.get_input_embeddings()
        embeds = embed(ids)  # (2B, L, D)
        code_ids = self._code_ids.to(ids.device)
        eol = embed(torch.full((2 * batch, 1), self.eol_id, device=ids.device))  # (2B, 1, D)
        cache = DynamicCache()
        codes = torch.zeros(batch, self.num_image_tokens, dtype=torch.long, device=ids.device)
        for step in range(self.num_image_tokens):
            hidden = self.model.model.text_model(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_argument(self.model.model.text_model): cache},
            ).last_hidden_state
            logits = self._image_logits(hidden[:, -1])  # (2B, K)
            next_codes = guided_sample(logits, guidance, temperature, generator)  # (B,)
            codes[:, step] = next_codes
            embeds = embed(code_ids[torch.cat([next_codes, next_codes])][:, None])  # (2B, 1, D)
            if embedding_hook is not None:
                embeds = embedding_hook(embeds)
            if (step + 1) % self.grid == 0:  # the row is full: EOL goes in with the last code
                embeds = torch.cat([embeds, eol.to(embeds.dtype)], dim=1)
            fed = embeds.shape[1]
            mask = torch.cat([mask, torch.ones_like(mask[:, :fed])], dim=1)
            positions = positions[:, -1:] + torch.arange(1, fed + 1, device=ids.device)
        return codes

    @torch.no_grad()
    def generate_latents(
        self,
        prompts: list[str],
        guidance: float = 3.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        embedding_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Text-to-image as (B, h*w, C) latents: the codebook entries of the sampled codes, which
        `decode_latents` maps to the images `generate_images` returns; arguments as in `generate_codes`."""
        return self.codes_to_latents(
            self.generate_codes(prompts, guidance, temperature, generator, embedding_hook)
        )

    @torch.no_grad()
    def generate_images(
        self,
        prompts: list[str],
        guidance: float = 3.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        embedding_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Text-to-image: (B, 3, H, W) pixels in [0,1]; arguments as in `generate_codes`."""
        return self.decode_latents(
            self.generate_latents(prompts, guidance, temperature, generator, embedding_hook)
        )

    # ------------------------------------------------------------------ LoRA
    def lora_target_modules(self) -> str:
        """A regex over module names: attention and MLP projections of the language model only.

        A plain ["q_proj", "v_proj"] list would also match the VQ's attention blocks.
        """
        return r".*text_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
