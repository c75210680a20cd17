"""Shared pieces of the engine tests: a tiny random Janus, a second unified model of a different
architecture, a deterministic colour scorer, and small configs.

`ToyUnifiedModel` is the architecture-agnostic proof: one colour "VQ" shared by both branches (the
understanding branch reads the same latent tokens the generator writes), a transposed-conv decoder, and
a small causal transformer written here from `nn.Linear` layers. It implements the protocol methods
and nothing else, and `UniGameTrainer` trains it unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unigame.data.shapes import PALETTE, corpus_texts
from unigame.data.splits import build_split
from unigame.models.janus import JanusAdapter
from unigame.models.text_tokenizer import train_text_tokenizer
from unigame.models.tiny_janus import TinyJanusConfig, build_tiny_janus
from unigame.train.config import DataConfig, GameConfig, LoggingConfig, ModelConfig, OptimConfig, TrainConfig

SMALL = TinyJanusConfig(
    vision_hidden=32, vision_heads=2, text_hidden=32, text_heads=2, text_layers=1, vq_channels=32
)


@pytest.fixture(scope="session")
def text_tokenizer():
    return train_text_tokenizer(corpus_texts(200, 0), vocab_size=SMALL.vocab_size)


@pytest.fixture
def make_janus(text_tokenizer):
    """A factory of fresh tiny random Janus adapters, identical weights every call (seed 0)."""

    def make() -> JanusAdapter:
        return JanusAdapter(build_tiny_janus(SMALL, seed=0), text_tokenizer)

    return make


@pytest.fixture(scope="session")
def records():
    return build_split("train", 32, 0)


def small_config(steps: int = 3, **game: object) -> TrainConfig:
    """A fast config: 32 records, batch 4, no TensorBoard/plots/progress, game options as given.

    Direct decoding G(z + δ) unless `residual_decode` is given: the paper's rule, which the
    Janus-Pro recipes use (the tiny recipe's residual default is tested where it is named)."""
    game.setdefault("residual_decode", False)
    return TrainConfig(
        model=ModelConfig(path="unused-an-adapter-is-injected"),
        data=DataConfig(train_items=32, batch_size=4),
        game=GameConfig(**game),
        optim=OptimConfig(steps=steps),
        logging=LoggingConfig(
            log_every=2, checkpoint_every=0, tensorboard=False, plots=False, panel_items=0, progress=False
        ),
    )


# ---------------------------------------------------------------------------------------- scorer
class PaletteScorer:
    """A deterministic CLIP stand-in for ShapesWorld: an image is the share of pixels of each palette
    colour; a text is the set of colour words it names. Faithful images score ~1, others ~0."""

    def __init__(self) -> None:
        self.names = list(PALETTE)
        self.rgb = torch.tensor([PALETTE[n] for n in self.names], dtype=torch.float32) / 255  # (6, 3)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        distance = (pixels.float()[:, None] - self.rgb[:, :, None, None].to(pixels.device)).norm(
            dim=2
        )  # (B, 6, H, W)
        share = (distance < 0.25).float().mean(dim=(2, 3))  # (B, 6)
        return F.normalize(share + 1e-6, dim=-1)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        named = torch.tensor([[float(n in t.split()) for n in self.names] for t in texts])  # (B, 6)
        return F.normalize(named + 1e-6, dim=-1)

    def text_image_similarity(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return (self.image_features(pixels) * self.text_features(list(texts)).to(pixels.device)).sum(-1)


@pytest.fixture
def palette_scorer():
    return PaletteScorer()


# ------------------------------------------------------------------------------ second architecture
class WordTokenizer:
    """Whitespace word ids over ShapesWorld text; 0 pad, 1 eos, 2 unknown."""

    def __init__(self, texts: list[str]) -> None:
        words = sorted({w for t in texts for w in self.split(t)})
        self.vocab = ["<pad>", "<eos>", "<unk>", *words]
        self.ids = {w: i for i, w in enumerate(self.vocab)}

    @staticmethod
    def split(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(w, 2) for w in self.split(text)]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if i > 2)


class _Block(nn.Module):
    """Pre-norm causal self-attention + MLP, from plain Linear layers (what LoRA wraps)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.norm1(x)
        q, k, v = (
            proj(h).view(b, n, self.heads, d // self.heads).transpose(1, 2)
            for proj in (self.q, self.k, self.v)
        )
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, N, d/H)
        x = x + self.o(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class _ToyNet(nn.Module):
    def __init__(
        self, vocab: int, dim: int = 32, layers: int = 2, codebook: int = 16, max_len: int = 160
    ) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.rand(codebook, 3) * 2 - 1)  # colours of the shared "VQ"
        self.decoder = nn.ConvTranspose2d(3, 3, kernel_size=4, stride=4)  # conv decoder, 8x8 -> 32x32
        with torch.no_grad():  # starts as exact nearest upsampling, so decode(encode(x)) is x block-averaged
            self.decoder.weight.zero_()
            for c in range(3):
                self.decoder.weight[c, c] = 1.0
            self.decoder.bias.zero_()
        self.image_in = nn.Linear(3, dim)  # the understanding branch reads the shared latent tokens
        self.words = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, 2) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab)
        self.gen_head = nn.Linear(dim, codebook)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.position[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # (B, L, D)


class ToyUnifiedModel:
    """A second unified model, structurally unlike Janus, implementing only the protocol methods."""

    image_size = 32

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.tokenizer = WordTokenizer(corpus_texts(300, 0))
        self.model = _ToyNet(len(self.tokenizer.vocab))

    # understanding
    def visual_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.image_in(self.encode_latents(pixels))  # (B, 64, D)

    def understanding_loss_from_tokens(
        self, tokens: torch.Tensor, questions: list[str], answers: list[str]
    ) -> torch.Tensor:
        n, eos = tokens.shape[1], 1
        prompts = [self.tokenizer.encode(q) for q in questions]
        targets = [self.tokenizer.encode(a) + [eos] for a in answers]
        width = max(len(p) + len(t) for p, t in zip(prompts, targets))
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        labels = torch.full((len(prompts), n + width), -100)
        for i, (p, t) in enumerate(zip(prompts, targets)):
            ids[i, : len(p) + len(t)] = torch.tensor(p + t)
            labels[i, n + len(p) : n + len(p) + len(t)] = torch.tensor(t)
        x = torch.cat([tokens, self.model.words(ids.to(tokens.device)).to(tokens.dtype)], dim=1)
        logits = self.model.lm_head(self.model.run(x))[:, :-1].float()  # (B, L-1, V)
        target = labels[:, 1:].to(logits.device)
        ce = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
        return ce.sum(-1) / (target != -100).sum(-1)

    def understanding_loss(
        self, pixels: torch.Tensor, questions: list[str], answers: list[str]
    ) -> torch.Tensor:
        return self.understanding_loss_from_tokens(self.visual_tokens(pixels), questions, answers)

    @torch.no_grad()
    def answer(self, pixels: torch.Tensor, questions: list[str], max_new_tokens: int = 3) -> list[str]:
        tokens = self.visual_tokens(pixels)
        out = []
        for i, question in enumerate(questions):
            ids: list[int] = self.tokenizer.encode(question)
            new: list[int] = []
            for _ in range(max_new_tokens):
                x = torch.cat([tokens[i : i + 1], self.model.words(torch.tensor([ids + new]))], dim=1)
                nxt = int(self.model.lm_head(self.model.run(x))[0, -1].argmax())
                if nxt == 1:
                    break
                new.append(nxt)
            out.append(self.tokenizer.decode(new))
        return out

    def caption(self, pixels: torch.Tensor) -> list[str]:
        return self.answer(pixels, ["describe the image"] * pixels.shape[0], max_new_tokens=8)

    # the shared tokenizer and the decoder
    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = F.avg_pool2d(pixels * 2 - 1, 4)  # (B, 3, 8, 8)
        return grid.flatten(2).transpose(1, 2)  # (B, 64, 3)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        grid = latents.transpose(1, 2).reshape(latents.shape[0], 3, 8, 8)
        return ((self.model.decoder(grid) + 1) / 2).clamp(0, 1)  # (B, 3, 32, 32)

    # generation
    @torch.no_grad()
    def generate_images(
        self,
        prompts: list[str],
        guidance: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        embedding_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return self.decode_latents(
            self.generate_latents(prompts, guidance, temperature, generator, embedding_hook)
        )

    @torch.no_grad()
    def generate_latents(
        self,
        prompts: list[str],
        guidance: float = 1.0,  # accepted for the official miner; the toy has no CFG branch
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        embedding_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        rows = [self.tokenizer.encode(p)[:8] for p in prompts]
        seq = self.model.words(torch.tensor([row + [0] * (8 - len(row)) for row in rows]))  # (B, 8, D)
        codes = []
        for _ in range(64):
            logits = self.model.gen_head(self.model.run(seq)[:, -1]).float()  # (B, K)
            probs = torch.softmax(logits / max(temperature, 1e-4), dim=-1)
            code = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
            codes.append(code)
            embed = self.model.image_in(self.model.codebook[code])[:, None]  # (B, 1, D)
            if embedding_hook is not None:
                embed = embedding_hook(embed)
            seq = torch.cat([seq, embed], dim=1)
        return self.model.codebook[torch.stack(codes, 1)]  # (B, 64, 3) the sampled colours

    def lora_target_modules(self) -> str:
        return r"blocks\.\d+\.(q|k|v|o|fc1|fc2)"


@pytest.fixture
def toy_model():
    return ToyUnifiedModel(seed=0)
