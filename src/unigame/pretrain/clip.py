"""A tiny CLIP trained contrastively on ShapesWorld image-caption pairs: the semantic filter's scorer.

The model is a plain transformers `CLIPModel` from a small config, so it saves as safetensors and loads
with `CLIPModel.from_pretrained` / `ClipScorer.from_pretrained` offline like any real checkpoint.

Text pooling: transformers' CLIP text tower pools the hidden state at the first `eos_token_id`, except
when `eos_token_id == 2`, a legacy value for which it pools at the *highest token id* in each sequence
(`input_ids.argmax(-1)`). Our shared tokenizer's `<eos>` is id 2, so using it would silently pool on an
arbitrary word. The CLIP tokenizer is therefore the shared tokenizer (all ids unchanged: pad 0, bos 1,
...) plus one end-of-text token appended as the last id, which it adds after every text
(`<bos> ... <|endoftext|>`); the config's `eos_token_id` is that id. Being the highest id, it also pools
correctly under the legacy rule.

Run `python -m unigame.pretrain.clip --out DIR` to train, save and print the separation figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from unigame.data.pixels import images_to_pixels as to_pixels
from unigame.data.shapes import Scene, ShapeObject, ShapesConfig, caption, render, sample_scene
from unigame.data.shifts import apply_shift
from unigame.models.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipScorer

if TYPE_CHECKING:  # pragma: no cover
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerBase

CLIP_EOT_TOKEN = "<|endoftext|>"
TEXT_MAX_POSITIONS = 48
# Mild pixel shifts used as training augmentation: decoded images are slightly noisy/blurry/off-colour.
DEFAULT_AUGMENT_SHIFTS: tuple[str, ...] = ("noise", "blur", "brightness_contrast")


# -------------------------------------------------------------------------------------- tokenizer
def clip_tokenizer(tokenizer: PreTrainedTokenizerBase, max_length: int = TEXT_MAX_POSITIONS) -> Any:
    """The tiny CLIP's tokenizer: `tokenizer`'s ids unchanged plus `<|endoftext|>` as the last id, with
    `<bos> text <|endoftext|>` added on every call (see the module docstring for why). Idempotent."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    if tokenizer.eos_token == CLIP_EOT_TOKEN:
        return tokenizer
    if tokenizer.pad_token is None or tokenizer.bos_token is None:
        raise ValueError("the text tokenizer needs pad and bos tokens (expected <pad>=0, <bos>=1)")
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    eot_id = backend.get_vocab_size(with_added_tokens=True)
    backend.add_special_tokens([AddedToken(CLIP_EOT_TOKEN, special=True, normalized=False)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=tokenizer.pad_token,
        bos_token=tokenizer.bos_token,
        eos_token=CLIP_EOT_TOKEN,
        add_bos_token=True,
        add_eos_token=True,
        model_max_length=max_length,
    )
    got = fast.convert_tokens_to_ids(CLIP_EOT_TOKEN)
    if (
        got != eot_id
        or fast.pad_token_id != tokenizer.pad_token_id
        or fast.bos_token_id != tokenizer.bos_token_id
    ):
        raise RuntimeError(f"clip_tokenizer changed ids: {CLIP_EOT_TOKEN} got {got}, expected {eot_id}")
    return fast


# ----------------------------------------------------------------------------------------- config
def tiny_clip_config(
    vocab_size: int,
    image_size: int = 32,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    patch_size: int | None = None,
    projection_dim: int = 64,
    eos_token_id: int | None = None,
) -> CLIPConfig:
    """A tiny CLIP for 32/64 px ShapesWorld images: ViT and text transformer of width 64, 2 layers, 4 heads,
    MLP 4x, 64-d projection, 48 text positions. `patch_size` defaults to image_size // 4 (a 4x4 patch grid,
    so 64 px costs the same as 32 px). `vocab_size` is the CLIP tokenizer's length
    (`len(clip_tokenizer(tok))`); `eos_token_id` defaults to its last id, the appended end-of-text token."""
    from transformers import CLIPConfig

    if patch_size is None:
        patch_size = max(1, image_size // 4)
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    eos = vocab_size - 1 if eos_token_id is None else eos_token_id
    if eos == 2:
        raise ValueError(
            "eos_token_id=2 makes transformers' CLIP pool on the highest token id; use another id"
        )
    common = {
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "hidden_act": "gelu",
    }
    text = dict(
        common,
        vocab_size=vocab_size,
        max_position_embeddings=TEXT_MAX_POSITIONS,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=eos,
    )
    vision = dict(common, image_size=image_size, patch_size=patch_size, num_channels=3)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


@torch.no_grad()
def reinit_tiny(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Re-initialise for a tiny width: Linear/Conv N(0, 1/fan_in), Embedding and CLIP's class embedding
    N(0, 1), LayerNorm identity. HF's std-0.02 embeddings (and 0.02 patch/position init) are far too small
    at hidden 64 and make the contrastive loss sit at log(B) for hundreds of steps."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            module.weight.normal_(0.0, fan_in**-0.5, generator=generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, 1.0, generator=generator)
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        cls_emb = getattr(module, "class_embedding", None)
        if isinstance(cls_emb, nn.Parameter):
            cls_emb.normal_(0.0, 1.0, generator=generator)


# ------------------------------------------------------------------------------------------- data


def sample_batch(
    rng: np.random.Generator,
    config: ShapesConfig,
    batch_size: int,
    *,
    augment_prob: float = 0.0,
    augment_shifts: Sequence[str] = DEFAULT_AUGMENT_SHIFTS,
    max_strength: float = 1.0,
    unique_captions: bool = True,
) -> tuple[list[Scene], list[np.ndarray], list[str]]:
    """Fresh scenes, their (optionally shifted) renders and captions. With `unique_captions` a scene whose
    caption already occurs in the batch is resampled, so InfoNCE has no false negatives; a config with
    fewer distinct captions than the batch (after 20 x batch_size rejections) gets duplicates instead."""
    scenes: list[Scene] = []
    images: list[np.ndarray] = []
    captions: list[str] = []
    seen: set[str] = set()
    rejections = 0
    while len(scenes) < batch_size:
        scene = sample_scene(rng, config)
        text = caption(scene)
        if unique_captions and text in seen and rejections < 20 * batch_size:
            rejections += 1
            continue
        seen.add(text)
        if augment_prob > 0 and rng.random() < augment_prob:
            name = augment_shifts[int(rng.integers(len(augment_shifts)))]
            image = apply_shift(scene, config, name, rng, strength=float(rng.uniform(0.0, max_strength)))
        else:
            image = render(scene, config)
        scenes.append(scene)
        images.append(image)
        captions.append(text)
    return scenes, images, captions


def _normalise(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.tensor(mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - m) / s


# --------------------------------------------------------------------------------------- training
def train_tiny_clip(
    tokenizer: PreTrainedTokenizerBase,
    shapes_config: ShapesConfig | None = None,
    steps: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 3e-3,
    progress: bool = True,
    *,
    clip_config: CLIPConfig | None = None,
    augment_prob: float = 0.3,
    augment_shifts: Sequence[str] = DEFAULT_AUGMENT_SHIFTS,
    warmup_steps: int | None = None,
    weight_decay: float = 0.01,
    reinit: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> CLIPModel:
    """Train a tiny CLIP on freshly sampled ShapesWorld pairs with CLIP's symmetric InfoNCE.

    Seeds: `torch.manual_seed(seed)` for the init, `np.random.default_rng(seed)` for the data; threads are
    the caller's (`torch.set_num_threads`). `augment_prob` of the images get one of `augment_shifts` at a
    random strength in [0, 1] (robustness to imperfect decoded images). AdamW with linear warm-up and cosine
    decay to 0. `reinit` applies `reinit_tiny` (measured: no gain over CLIP's own init here, whose attention/
    MLP/projection stds already scale with 1/sqrt(width)). `on_step(step, loss)` is called after every step.
    Returns the model in eval mode.

    """
    from tqdm.auto import tqdm
    from transformers import CLIPModel

    shapes_config = shapes_config or ShapesConfig()
    tok = clip_tokenizer(tokenizer)
    cfg = clip_config or tiny_clip_config(len(tok), shapes_config.image_size)
    if cfg.text_config.vocab_size < len(tok):
        raise ValueError(f"clip_config vocab_size {cfg.text_config.vocab_size} < tokenizer length {len(tok)}")
    if cfg.text_config.eos_token_id != tok.eos_token_id:
        raise ValueError(
            f"clip_config eos_token_id {cfg.text_config.eos_token_id} != tokenizer's {tok.eos_token_id}"
        )
    if cfg.vision_config.image_size != shapes_config.image_size:
        raise ValueError(
            f"clip_config image_size {cfg.vision_config.image_size} != ShapesConfig.image_size "
            f"{shapes_config.image_size}"
        )
    if steps < 1 or batch_size < 2:
        raise ValueError(f"need steps >= 1 and batch_size >= 2, got steps={steps} batch_size={batch_size}")

    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    if reinit:
        reinit_tiny(model)
    model.train()
    rng = np.random.default_rng(seed)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or name == "logit_scale" else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )
    warm = max(1, steps // 20) if warmup_steps is None else max(1, warmup_steps)

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    bar = tqdm(range(steps), desc="tiny CLIP", disable=not progress, dynamic_ncols=True)
    for step in bar:
        _, images, captions = sample_batch(
            rng, shapes_config, batch_size, augment_prob=augment_prob, augment_shifts=augment_shifts
        )
        enc = tok(captions, padding=True, return_tensors="pt")
        pixel_values = _normalise(to_pixels(images), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        out = model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            pixel_values=pixel_values,
            return_loss=True,
        )
        loss = out.loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"tiny CLIP loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():  # CLIP clamps the temperature at 100
            model.logit_scale.clamp_(0.0, math.log(100.0))
        value = float(loss.detach())
        if on_step is not None:
            on_step(step, value)
        if progress and (step % 10 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{value:.3f}")
    bar.close()
    model.eval()
    return model


# ------------------------------------------------------------------------------------------ saving
def save_tiny_clip(
    model: CLIPModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, image_size: int
) -> Path:
    """Save model (safetensors), CLIP tokenizer and a CLIP image-processor config so both
    `ClipScorer.from_pretrained(out_dir)` and `CLIPModel.from_pretrained(out_dir, local_files_only=True)`
    load it offline. Written to a temporary sibling and renamed into place, so a crash leaves no half
    checkpoint."""
    tok = clip_tokenizer(tokenizer)
    if (
        model.config.text_config.vocab_size < len(tok)
        or model.config.text_config.eos_token_id != tok.eos_token_id
    ):
        raise ValueError(
            "model and tokenizer disagree on vocabulary / eos id; pass the tokenizer it was trained with"
        )
    if model.config.vision_config.image_size != image_size:
        raise ValueError(
            f"image_size={image_size} but the model was built for {model.config.vision_config.image_size}"
        )
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(
            json.dumps(image_processor_dict(image_size), indent=2) + "\n"
        )
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def image_processor_dict(image_size: int) -> dict[str, Any]:
    """A CLIP image-processor config matching training: square resize (bilinear), no-op crop, [0, 1]
    rescale, OpenAI CLIP mean/std. Built with transformers' CLIP image processor so AutoImageProcessor
    reads it back."""
    try:  # the PIL backend needs no torchvision
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - other transformers layouts
        from transformers import CLIPImageProcessor as Processor

    proc = Processor(
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=2,  # bilinear, as ClipScorer's F.interpolate
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )
    return proc.to_dict()


# ---------------------------------------------------------------------------------------- evaluation
def _hard_negative(scene: Scene, config: ShapesConfig, rng: np.random.Generator) -> str | None:
    """Caption of the scene with one object's colour or shape swapped (what a bad decode looks like)."""
    for _ in range(10):
        i = int(rng.integers(len(scene.objects)))
        o = scene.objects[i]
        if rng.random() < 0.5 and len(config.colours) > 1:
            new = ShapeObject(
                o.shape, str(rng.choice([c for c in config.colours if c != o.colour])), o.size, o.x, o.y
            )
        elif len(config.shapes) > 1:
            new = ShapeObject(
                str(rng.choice([s for s in config.shapes if s != o.shape])), o.colour, o.size, o.x, o.y
            )
        else:
            continue
        text = caption(Scene(scene.objects[:i] + (new,) + scene.objects[i + 1 :], scene.background))
        if text != caption(scene):
            return text
    return None


@torch.no_grad()
def evaluate_scorer(
    scorer: ClipScorer,
    shapes_config: ShapesConfig | None = None,
    *,
    n_batches: int = 8,
    batch_size: int = 32,
    seed: int = 10_000,
    shift: str | None = None,
    strength: float = 0.5,
) -> dict[str, float]:
    """Separation figures on held-out pairs (natural caption distribution, duplicates allowed).

    retrieval_acc: image -> caption top-1 within each batch (a tie on an identical caption string counts
    as correct); matched_cos / mismatched_cos: mean cosine with the own caption / the next scene's caption
    (pairs with identical text skipped); pair_acc: fraction with matched > mismatched; hard_*: the same
    against the own caption with one object's colour or shape swapped. `shift` renders the same scenes
    with that shift at `strength`, so clean and shifted figures compare like for like.
    """
    config = shapes_config or ShapesConfig()
    # separate streams: the same seed gives the same scenes and hard negatives with or without a shift
    rng, shift_rng, neg_rng = (np.random.default_rng([seed, k]) for k in range(3))
    hits = total = 0
    matched: list[float] = []
    mismatched: list[float] = []
    pair_wins: list[bool] = []
    hard: list[float] = []
    hard_wins: list[bool] = []
    for _ in range(n_batches):
        scenes, _, captions = sample_batch(rng, config, batch_size, unique_captions=False)
        if shift is None:
            images = [render(s, config) for s in scenes]
        else:
            images = [apply_shift(s, config, shift, shift_rng, strength=strength) for s in scenes]
        img = scorer.image_features(to_pixels(images))
        txt = scorer.text_features(captions)
        sim = (img @ txt.T).cpu()
        best = sim.argmax(1).tolist()
        hits += sum(captions[j] == captions[i] for i, j in enumerate(best))
        total += len(captions)
        diag = sim.diagonal()
        matched += diag.tolist()
        for i in range(len(captions)):
            j = (i + 1) % len(captions)
            if captions[j] != captions[i]:
                mismatched.append(float(sim[i, j]))
                pair_wins.append(bool(diag[i] > sim[i, j]))
        negs = [_hard_negative(s, config, neg_rng) for s in scenes]
        keep = [i for i, t in enumerate(negs) if t is not None]
        if keep:
            hard_txt = scorer.text_features([negs[i] for i in keep])
            hard_sim = (img[keep] * hard_txt).sum(-1).cpu()
            hard += hard_sim.tolist()
            hard_wins += (diag[keep] > hard_sim).tolist()
    return {
        "retrieval_acc": hits / total,
        "matched_cos": float(np.mean(matched)),
        "mismatched_cos": float(np.mean(mismatched)),
        "pair_acc": float(np.mean(pair_wins)),
        "hard_mismatched_cos": float(np.mean(hard)) if hard else float("nan"),
        "hard_pair_acc": float(np.mean(hard_wins)) if hard_wins else float("nan"),
        "n_pairs": float(total),
    }


def scorer_from_model(model: CLIPModel, tokenizer: PreTrainedTokenizerBase) -> ClipScorer:
    """A ClipScorer around an in-memory tiny CLIP (same preprocessing as a saved one)."""
    return ClipScorer(
        model,
        clip_tokenizer(tokenizer),
        model.config.vision_config.image_size,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
    )


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, save and report: `python -m unigame.pretrain.clip --out runs/tiny_clip`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--tokenizer", default=None, help="saved text tokenizer dir (default: train one, seed 0)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--augment-prob", type=float, default=0.3)
    p.add_argument("--eval-batches", type=int, default=8, help="held-out batches of 32 per figure")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from unigame.data.shapes import corpus_texts
    from unigame.models.text_tokenizer import train_text_tokenizer

    if args.tokenizer:
        tok = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    else:
        tok = train_text_tokenizer(corpus_texts(2000, 0))
    config = ShapesConfig(image_size=args.image_size)
    t0 = time.perf_counter()
    model = train_tiny_clip(
        tok,
        config,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr,
        progress=not args.no_progress,
        augment_prob=args.augment_prob,
    )
    train_s = time.perf_counter() - t0
    save_tiny_clip(model, tok, args.out, args.image_size)
    scorer = ClipScorer.from_pretrained(args.out)
    report: dict[str, Any] = {"train_seconds": round(train_s, 1), "threads": torch.get_num_threads()}
    report["clean"] = evaluate_scorer(scorer, config, n_batches=args.eval_batches)
    for shift in ("noise", "blur"):
        for strength in (0.5, 1.0):
            report[f"{shift}@{strength}"] = evaluate_scorer(
                scorer, config, n_batches=args.eval_batches, shift=shift, strength=strength
            )
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":  # pragma: no cover
    main()
