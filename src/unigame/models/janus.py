"""Adapter for HF `JanusForConditionalGeneration` (the tiny Janus and local Janus-Pro checkpoints).

Everything the game and the evaluation need from a unified model goes through these methods;
images are float tensors (B, 3, H, W) in [0, 1] and losses are per sample (B,).

Understanding: prompt tokens with image placeholders -> the vision encoder's aligned features
are written over the placeholders -> Llama -> lm_head. Generation: prompt -> Llama -> generation
head over VQ codes, one image token per step, with classifier-free guidance. The VQ's continuous
latent is the L2-normalised `quant_conv` output per token (Janus's codebook is L2-normalised), so
`decode_latents` is differentiable and accepts any point near the codebook.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from unigame.models.sequences import (
    CAPTION_QUESTION,
    answer_ce,
    cache_argument,
    decode_ids,
    greedy_ids,
    guided_sample,
    pack,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import JanusForConditionalGeneration, PreTrainedTokenizerBase


@dataclass(frozen=True)
class PromptFormat:
    """Text around the image and the question; `{image}` becomes the image token block."""

    understanding: str = "{question}\n{image}"
    generation: str = "{prompt}"
    image_start: str = "<begin_of_image>"
    image_end: str = "<end_of_image>"
    image_token: str = "<image_placeholder>"
    add_bos: bool = True


TINY_PROMPT = PromptFormat()
# Janus-Pro's own chat layout (deepseek-ai/Janus `VLChatProcessor`, sft_format "deepseek").
JANUS_PRO_PROMPT = PromptFormat(
    understanding="<|User|>: {image}\n{question}\n\n<|Assistant|>:",
    generation="<|User|>: {prompt}\n\n<|Assistant|>:",
)


class JanusAdapter:
    """The unified-model protocol implemented for `JanusForConditionalGeneration`."""

    def __init__(
        self,
        model: JanusForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        prompt: PromptFormat = TINY_PROMPT,
        image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        image_std: tuple[float, float, float] = (0.5, 0.5, 0.5),
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.prompt = prompt
        config = model.config
        self.image_size: int = int(config.vision_config.image_size)
        # Janus-Pro reads and writes the same 24x24 grid; the tiny Janus reads a coarser grid than
        # it writes (16 vs 64 tokens) to fit a laptop CPU, so the two counts are kept apart.
        vision = config.vision_config
        self.num_understanding_tokens: int = (vision.image_size // vision.patch_size) ** 2
        self.num_image_tokens: int = int(vision.num_image_tokens)
        self.image_token_id: int = int(config.image_token_id)
        self.pad_id: int = int(tokenizer.pad_token_id)
        self.eos_id: int = int(tokenizer.eos_token_id)
        self.bos_id: int = int(tokenizer.bos_token_id)
        self._mean = torch.tensor(image_mean).view(1, 3, 1, 1)
        self._std = torch.tensor(image_std).view(1, 3, 1, 1)
        self._image_block_ids = self._ids(
            prompt.image_start + prompt.image_token * self.num_understanding_tokens + prompt.image_end
        )
        self._boi_ids = self._ids(prompt.image_start)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs) -> JanusAdapter:
        """Load a saved Janus (tiny base or a local Janus-Pro directory), offline only."""
        from transformers import AutoTokenizer, JanusForConditionalGeneration

        path = Path(path)
        missing = [name for name in ("config.json", "tokenizer_config.json") if not (path / name).exists()]
        if missing:
            raise FileNotFoundError(
                f"{path} is not a Janus model directory: missing {', '.join(missing)} "
                "(adapter: JanusAdapter for JanusForConditionalGeneration)"
            )
        # safetensors only: a pickled pytorch_model.bin could run code when loaded
        model = JanusForConditionalGeneration.from_pretrained(
            path, local_files_only=True, use_safetensors=True, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        return cls(model.to(device).eval(), tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ text helpers
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _understanding_prompt_ids(self, question: str) -> list[int]:
        before, after = self.prompt.understanding.split("{image}")
        ids = self._ids(before.format(question=question)) + self._image_block_ids
        ids += self._ids(after.format(question=question))
        return ([self.bos_id] if self.prompt.add_bos else []) + ids

    def _pack(
        self, prompts: list[list[int]], targets: list[list[int]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return pack(prompts, targets, self.pad_id, self.device)

    # ------------------------------------------------------------------ understanding
    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0,1] pixels -> the vision encoder's input, in torch so gradients reach the pixels."""
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear")
        return (pixels - self._mean.to(pixels)) / self._std.to(pixels)

    def visual_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0,1] -> (B, N, D_text) aligned visual tokens at the LLM interface."""
        features = self.model.model.get_image_features(self.normalize_pixels(pixels), return_dict=True)
        return features.pooler_output  # (B, N, D_text)

    def _embed_with_image(self, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        embeds = self.model.get_input_embeddings()(ids)  # (B, L, D)
        image_mask = (ids == self.image_token_id).unsqueeze(-1)  # (B, L, 1)
        return embeds.masked_scatter(image_mask, tokens.to(embeds.dtype))

    def understanding_loss_from_tokens(
        self, tokens: torch.Tensor, questions: list[str], answers: list[str]
    ) -> torch.Tensor:
        """Per-sample CE (mean over answer tokens incl. EOS) given visual tokens (B, N, D)."""
        prompts = [self._understanding_prompt_ids(q) for q in questions]
        targets = [self._ids(a) + [self.eos_id] for a in answers]
        ids, mask, positions, labels = self._pack(prompts, targets)
        embeds = self._embed_with_image(ids, tokens)
        hidden = self.model.model.language_model(
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
        return self._greedy(self.visual_tokens(pixels), prompts, max_new_tokens)

    @torch.no_grad()
    def caption(self, pixels: torch.Tensor, max_new_tokens: int = 32) -> list[str]:
        """Greedy description of each image (asked with the caption question)."""
        return self.answer(pixels, [CAPTION_QUESTION] * pixels.shape[0], max_new_tokens)

    def _greedy(self, tokens: torch.Tensor, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        ids, mask, positions, _ = self._pack(prompts)
        rows = greedy_ids(
            self.model.model.language_model,
            self.model.lm_head,
            self.model.get_input_embeddings(),
            self._embed_with_image(ids, tokens),
            mask,
            positions,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            max_new_tokens=max_new_tokens,
        )
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]

    # ------------------------------------------------------------------ self-play (Ask-Solve-Generate)
    @torch.no_grad()
    def sample_answers(
        self,
        pixels: torch.Tensor,
        questions: list[str],
        temperature: float | Sequence[float] = 1.0,
        top_p: float | Sequence[float] = 1.0,
        generator: torch.Generator | None = None,
        max_new_tokens: int = 4,
    ) -> list[str]:
        """Sampled answers, one per image: `temperature` and nucleus `top_p` are one value or one per
        row (temperature 0: that row is greedy, equal to `answer`)."""
        return self._decode(pixels, questions, temperature, top_p, generator, max_new_tokens)[0]

    @torch.no_grad()
    def answer_entropies(
        self, pixels: torch.Tensor, questions: list[str], max_new_tokens: int = 4
    ) -> tuple[list[str], torch.Tensor]:
        """Greedy answers (as `answer`) and the entropy in nats of the full-vocabulary next-token
        distribution at each generated token, EOS included: (B, max_new_tokens), NaN after EOS."""
        return self._decode(pixels, questions, 0.0, 1.0, None, max_new_tokens)

    def answer_token_logits(
        self, pixels: torch.Tensor, questions: list[str], answers: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced float logits (B, T, V) predicting each answer token and EOS, and the target
        ids (B, T), -100 past a row's EOS: what a policy-gradient step needs beyond `understanding_loss`
        (per-token log-probabilities and a KL over the vocabulary)."""
        prompts = [self._understanding_prompt_ids(q) for q in questions]
        targets = [self._ids(a) + [self.eos_id] for a in answers]
        ids, mask, positions, labels = self._pack(prompts, targets)
        embeds = self._embed_with_image(ids, self.visual_tokens(pixels))
        hidden = self.model.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).last_hidden_state  # (B, L, D)
        width = max(len(t) for t in targets)
        start = ids.shape[1] - width  # the first answer column
        logits = self.model.lm_head(hidden[:, start - 1 : -1]).float()  # (B, T, V)
        return logits, labels[:, start:]

    def _decode(
        self,
        pixels: torch.Tensor,
        questions: list[str],
        temperature: float | Sequence[float],
        top_p: float | Sequence[float],
        generator: torch.Generator | None,
        max_new_tokens: int,
    ) -> tuple[list[str], torch.Tensor]:
        batch = len(questions)
        device = self.device
        temperatures = torch.as_tensor(temperature, dtype=torch.float32, device=device).expand(batch)
        top_ps = torch.as_tensor(top_p, dtype=torch.float32, device=device).expand(batch)
        prompts = [self._understanding_prompt_ids(q) for q in questions]
        ids, mask, positions, _ = self._pack(prompts)
        rows, entropies = decode_ids(
            self.model.model.language_model,
            self.model.lm_head,
            self.model.get_input_embeddings(),
            self._embed_with_image(ids, self.visual_tokens(pixels)),
            mask,
            positions,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            max_new_tokens=max_new_tokens,
            temperature=temperatures,
            top_p=top_ps,
            generator=generator,
        )
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows], entropies

    # ------------------------------------------------------------------ VQ latents
    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0,1] -> (B, N, D) continuous latent tokens, each L2-normalised."""
        vq = self.model.model.vqmodel
        hidden = vq.quant_conv(vq.encoder(pixels * 2 - 1))  # (B, D, h, w)
        return F.normalize(hidden.flatten(2).transpose(1, 2), dim=-1)  # (B, N, D)

    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, N, D) latents -> (B, N) nearest codebook ids (cosine, as the codebook is normalised)."""
        codebook = F.normalize(self.model.model.vqmodel.quantize.embedding.weight, dim=-1)  # (K, D)
        return (latents @ codebook.t()).argmax(-1)

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        codebook = F.normalize(self.model.model.vqmodel.quantize.embedding.weight, dim=-1)
        return codebook[codes]  # (B, N, D)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, N, D) latents -> (B, 3, H, W) pixels in [0,1]; differentiable w.r.t. the latents.

        Runs in float32 with autocast off, also inside a bf16 autocast region (see
        `decode_latents_raw`).
        """
        return ((self.decode_latents_raw(latents).float() + 1) / 2).clamp(0, 1)

    def decode_latents_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """The VQ decoder's own output range (~[-1, 1]), unclamped: what its training loss sees.

        Autocast is off and the latents are cast to float32: bf16 keeps 8 mantissa bits, so it
        would round a 1% offset of these unit-norm latents away (a bf16 decoder gets G(z + δ) − G(z)
        at ε = 0.01 wrong by ~100% on the tests' random tiny Janus). The decoder runs at its weights'
        precision: float32, since a bf16 run keeps `fp32_modules()` out of its bf16 storage.
        """
        vq = self.model.model.vqmodel
        side = int(round(latents.shape[1] ** 0.5))
        with torch.autocast(device_type=latents.device.type, enabled=False):
            grid = latents.float().transpose(1, 2).reshape(latents.shape[0], latents.shape[2], side, side)
            grid = grid.to(
                vq.post_quant_conv.weight.dtype
            )  # (B, D, h, w); float32 unless the caller cast the VQ
            return vq.decoder(vq.post_quant_conv(grid))  # (B, 3, H, W)

    def fp32_modules(self) -> list[torch.nn.Module]:
        """The VQ's decoding path (codebook, post_quant_conv, decoder): a bf16 run keeps it in float32."""
        vq = self.model.model.vqmodel
        return [vq.quantize, vq.post_quant_conv, vq.decoder]

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_latents(self.codes_to_latents(codes))

    # ------------------------------------------------------------------ generation
    def _generation_prompt_ids(self, prompt: str) -> list[int]:
        ids = self._ids(self.prompt.generation.format(prompt=prompt)) + self._boi_ids
        return ([self.bos_id] if self.prompt.add_bos else []) + ids

    def _unconditional(self, prompts: list[list[int]]) -> list[list[int]]:
        """Janus's CFG branch: every prompt token except BOS and BOI replaced by padding."""
        keep = {self.bos_id, *self._boi_ids}
        return [[t if t in keep else self.pad_id for t in p] for p in prompts]

    def generation_loss(
        self, pixels: torch.Tensor, prompts: list[str], drop_prompt: float = 0.0
    ) -> torch.Tensor:
        """Per-sample teacher-forced CE over the image's VQ codes given the text (B,).

        `drop_prompt` replaces a random fraction of prompts by the unconditional prompt, which
        trains the branch classifier-free guidance subtracts.
        """
        with torch.no_grad():
            codes = self.quantize(self.encode_latents(pixels))  # (B, N)
        return self.generation_loss_from_codes(codes, prompts, drop_prompt)

    def generation_loss_from_codes(
        self, codes: torch.Tensor, prompts: list[str], drop_prompt: float = 0.0
    ) -> torch.Tensor:
        """Per-sample teacher-forced CE (B,) of given VQ codes (B, N) given the text: trains on the
        codes a sampler drew, not on a lossy re-encoding of their decoded image."""
        prompt_ids = [self._generation_prompt_ids(p) for p in prompts]
        if drop_prompt > 0:
            drop = (torch.rand(len(prompt_ids)) < drop_prompt).tolist()
            uncond = self._unconditional(prompt_ids)
            prompt_ids = [u if d else p for p, u, d in zip(prompt_ids, uncond, drop)]
        ids, mask, positions, _ = self._pack(prompt_ids)
        text = self.model.get_input_embeddings()(ids)  # (B, Lp, D)
        image = self.model.prepare_embeddings_for_image_generation(codes[:, :-1])  # (B, N-1, D)
        embeds = torch.cat([text, image.to(text.dtype)], dim=1)
        n = codes.shape[1]
        mask = torch.cat([mask, torch.ones_like(codes[:, :-1])], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + torch.arange(1, n, device=ids.device)], dim=1)
        hidden = self.model.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).last_hidden_state
        logits = self.model.model.generation_head(hidden[:, -n:]).float()  # (B, N, K)
        return F.cross_entropy(logits.transpose(1, 2), codes, reduction="none").mean(-1)

    @torch.no_grad()
    def generate_codes(
        self,
        prompts: list[str],
        guidance: float = 3.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        embedding_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, N) VQ codes sampled autoregressively with classifier-free guidance.

        `embedding_hook`, when given, maps the image-token embeddings fed back at every step
        (2B, 1, D) (conditional and unconditional rows) to new ones: UniGame's official-style
        mining injects the challenger's perturbation here. The text prompt is never hooked.
        """
        from transformers import DynamicCache

        cond = [self._generation_prompt_ids(p) for p in prompts]
        ids, mask, positions, _ = self._pack(cond + self._unconditional(cond))
        batch = len(prompts)
        embeds = self.model.get_input_embeddings()(ids)
        cache = DynamicCache()
        lm = self.model.model.language_model
        codes = torch.zeros(batch, self.num_image_tokens, dtype=torch.long, device=ids.device)
        for step in range(self.num_image_tokens):
            hidden = lm(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_argument(lm): cache},
            ).last_hidden_state
            logits = self.model.model.generation_head(hidden[:, -1]).float()  # (2B, K)
            next_codes = guided_sample(logits, guidance, temperature, generator)  # (B,)
            codes[:, step] = next_codes
            embeds = self.model.prepare_embeddings_for_image_generation(
                torch.cat([next_codes, next_codes])[:, None]
            )  # (2B, 1, D)
            if embedding_hook is not None:
                embeds = embedding_hook(embeds)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
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
        """Text-to-image as (B, N, D) latents: the codebook entries of the sampled codes, which
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
        """Text-to-image: (B, 3, H, W) pixels in [0,1]; `embedding_hook` as in `generate_codes`."""
        return self.decode_latents(
            self.generate_latents(prompts, guidance, temperature, generator, embedding_hook)
        )

    # ------------------------------------------------------------------ LoRA
    def lora_target_modules(self) -> str:
        """A regex over module names: attention and MLP projections of the language model only.

        A plain ["q_proj", "v_proj"] list would also match the vision encoder's attention.
        """
        return r".*language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
