"""The Emu3 adapter on a tiny random `Emu3ForConditionalGeneration`: layout fidelity against
transformers' own Emu3 code, differentiability, generation, and UniGame training through the protocol."""

import pytest
import torch
import torch.nn.functional as F

from unigame.data.shapes import corpus_texts
from unigame.data.splits import build_split
from unigame.methods.unigame.trainer import UniGameTrainer, attach_lora
from unigame.models.emu3 import Emu3Adapter
from unigame.models.sequences import pack
from unigame.models.tiny_emu3 import TinyEmu3Config, build_tiny_emu3, train_emu3_tokenizer
from unigame.train.config import DataConfig, GameConfig, LoggingConfig, ModelConfig, OptimConfig, TrainConfig
from unigame.train.protocol import UnifiedModel, check_unified_model

CFG = TinyEmu3Config()
QUESTIONS = ["Is there a red circle?", "How many objects are there in this picture today?"]
ANSWERS = ["yes", "a small red circle and a large blue square"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_emu3_tokenizer(corpus_texts(200, 0), CFG)


@pytest.fixture
def make_emu3(tokenizer):
    """A factory of fresh tiny Emu3 adapters, identical weights every call (seed 0)."""
    return lambda: Emu3Adapter(build_tiny_emu3(tokenizer, CFG, seed=0), tokenizer)


@pytest.fixture(scope="module")
def adapter(tokenizer):
    return Emu3Adapter(build_tiny_emu3(tokenizer, CFG, seed=0), tokenizer)


def _hf_image_sizes(batch: int) -> torch.Tensor:
    return torch.tensor([[CFG.image_size, CFG.image_size]] * batch)


def test_tiny_emu3_is_the_hf_class_with_emu3_factors(adapter, tokenizer):
    from transformers import Emu3ForConditionalGeneration

    assert isinstance(adapter.model, Emu3ForConditionalGeneration)
    assert isinstance(adapter, UnifiedModel)
    check_unified_model(adapter)
    assert (adapter.spatial_factor, adapter.temporal_factor, adapter.grid) == (4, 4, 8)
    # transformers' own code -> BPE map agrees with the adapter's
    hf_map = adapter.model.model.vocabulary_mapping.img2bpe_mapping_tensor.long()
    torch.testing.assert_close(hf_map, adapter._code_ids)
    # the attributes Emu3Processor reads from the tokenizer
    assert (tokenizer.image_token, tokenizer.boi_token, tokenizer.eof_token) == (
        "<image>",
        "<|image start|>",
        "<|extra_201|>",
    )
    # Emu3Processor.replace_image_token's block (h*(w+1) placeholders), once EOL cells become placeholders
    block = [adapter.image_token_id if i == adapter.eol_id else i for i in adapter._image_block_ids]
    expected = "<|image start|>8*8<|image token|>" + "<image>" * (8 * 9) + "<|extra_201|><|image end|>"
    assert tokenizer.decode(block) == expected


def test_understanding_matches_transformers_forward(adapter):
    """The adapter's path (its own code selection, EOL cells kept as ids) gives the same logits as
    `Emu3ForConditionalGeneration.forward` on the processor's layout (every grid cell a placeholder)."""
    pixels = torch.rand(2, 3, 32, 32)
    prompts = [adapter._understanding_prompt_ids(q) for q in QUESTIONS]
    with torch.no_grad():
        ids, mask, positions, _ = pack(prompts, None, adapter.pad_id, adapter.device)
        embeds = adapter._embed_with_image(ids, adapter.visual_tokens(pixels))
        mine = adapter.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        processor_ids = ids.masked_fill(ids == adapter.eol_id, adapter.image_token_id)
        theirs = adapter.model(
            input_ids=processor_ids,
            pixel_values=adapter.normalize_pixels(pixels),
            image_sizes=_hf_image_sizes(2),
            attention_mask=mask,
            position_ids=positions,
        ).logits
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_codes_and_decoding_match_the_vq(adapter):
    pixels = torch.rand(2, 3, 32, 32)
    vq = adapter.model.model.vqmodel
    with torch.no_grad():
        codes = adapter.quantize(adapter.encode_latents(pixels))  # (B, 64)
        hf_codes = torch.stack(vq.encode(adapter.normalize_pixels(pixels), _hf_image_sizes(2)).image_tokens)
        assert torch.equal(codes, hf_codes.flatten(1))
        hf_image = vq.decode(hf_codes)  # (B, 3, 32, 32) in the normalised space
        torch.testing.assert_close(adapter.decode_codes(codes), ((hf_image + 1) / 2).clamp(0, 1))


def test_understanding_forward_backward_reaches_pixels_and_lora(make_emu3):
    adapter = make_emu3()
    peft_model = attach_lora(adapter.model, adapter.lora_target_modules(), r=4, alpha=8, dropout=0.0)
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    assert wrapped and all(".text_model.layers." in n for n in wrapped)  # never the VQ's attention
    assert len(wrapped) == CFG.text_layers * 7  # q, k, v, o, gate, up, down
    pixels = torch.rand(3, 3, 32, 32, requires_grad=True)
    loss = adapter.understanding_loss(
        pixels,
        ["Is there a red circle?", "What colour is it?", "Describe the image."],
        ["yes", "blue", "a red circle"],
    )
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0  # straight-through the code choice
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    frozen = [p for n, p in peft_model.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad and p.grad is None for p in frozen)


def test_visual_tokens_are_exact_code_embeddings_with_a_gradient(adapter):
    pixels = torch.rand(2, 3, 32, 32, requires_grad=True)
    tokens = adapter.visual_tokens(pixels)
    codes = adapter.quantize(adapter.encode_latents(pixels))
    exact = adapter.model.get_input_embeddings()(adapter._code_ids[codes])
    assert tokens.shape == (2, 64, CFG.text_hidden) and torch.equal(tokens, exact)
    loss = adapter.understanding_loss_from_tokens(tokens, QUESTIONS, ANSWERS)
    (grad,) = torch.autograd.grad(loss.sum(), pixels)
    assert grad.abs().sum() > 0


def test_per_sample_loss_does_not_depend_on_batch_padding(adapter):
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        together = adapter.understanding_loss(pixels, QUESTIONS, ANSWERS)
        alone = torch.stack(
            [
                adapter.understanding_loss(pixels[i : i + 1], QUESTIONS[i : i + 1], ANSWERS[i : i + 1])[0]
                for i in range(2)
            ]
        )
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def test_latent_round_trip_is_differentiable(adapter):
    latents = adapter.encode_latents(torch.rand(2, 3, 32, 32)).detach().requires_grad_(True)
    assert latents.shape == (2, 64, CFG.codebook_dim)
    decoded = adapter.decode_latents(latents)
    assert decoded.shape == (2, 3, 32, 32) and decoded.min() >= 0 and decoded.max() <= 1
    decoded.sum().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_generate_images_and_the_eol_layout(adapter):
    prompts = ["a small red circle", "a large blue square"]
    images = adapter.generate_images(prompts, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    again = adapter.generate_images(prompts, guidance=2.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(images, again)
    # Greedy cached generation (EOL fed after each row) = argmax of one teacher-forced forward over
    # the full block: checks the row layout and the positions of the cached loop.
    codes = adapter.generate_codes(prompts, guidance=1.0, temperature=0.0)
    assert codes.shape == (2, 64) and int(codes.max()) < CFG.codebook_size
    with torch.no_grad():
        forced = adapter._teacher_forced_logits(prompts, codes).argmax(-1)
    assert torch.equal(codes, forced)


def test_embedding_hook_sees_every_visual_step(adapter):
    seen = []

    def hook(embeds: torch.Tensor) -> torch.Tensor:
        seen.append(embeds.shape)
        return embeds + 0.5

    plain = adapter.generate_codes(["a red circle"], guidance=1.0, temperature=0.0)
    hooked = adapter.generate_codes(["a red circle"], guidance=1.0, temperature=0.0, embedding_hook=hook)
    assert seen == [torch.Size([2, 1, CFG.text_hidden])] * 64
    assert not torch.equal(plain, hooked)


def test_generated_latents_are_the_codes_that_decode_to_the_generated_images(adapter):
    """`generate_latents` (what official-style mining stores) decodes to `generate_images`' pixels."""
    prompts = ["a small red circle", "a large blue square"]
    latents = adapter.generate_latents(prompts, guidance=2.0, generator=torch.Generator().manual_seed(0))
    images = adapter.generate_images(prompts, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, adapter.num_image_tokens, CFG.codebook_dim)
    assert torch.equal(adapter.codes_to_latents(adapter.quantize(latents)), latents)  # codebook entries
    assert torch.equal(adapter.decode_latents(latents), images)


def test_generation_loss_is_per_sample(adapter):
    loss = adapter.generation_loss(torch.rand(2, 3, 32, 32), ["a small red circle", "a large blue square"])
    assert loss.shape == (2,) and torch.isfinite(loss).all()


def test_answer_and_caption(adapter):
    answers = adapter.answer(torch.rand(2, 3, 32, 32), QUESTIONS, max_new_tokens=3)
    captions = adapter.caption(torch.rand(1, 3, 32, 32), max_new_tokens=4)
    assert len(answers) == 2 and len(captions) == 1 and all(isinstance(a, str) for a in answers + captions)


def test_save_and_load_through_the_engine_loader(adapter, tmp_path):
    from unigame.train.loading import load_adapter

    adapter.save_pretrained(tmp_path / "emu3")
    loaded = load_adapter(ModelConfig(path=str(tmp_path / "emu3")))
    assert isinstance(loaded, Emu3Adapter) and loaded.image_size == 32
    with pytest.raises(ValueError, match="janus_pro.*use emu3_chat or tiny"):
        load_adapter(ModelConfig(path=str(tmp_path / "emu3"), prompt="janus_pro"))
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.understanding_loss(pixels, QUESTIONS, ANSWERS),
            adapter.understanding_loss(pixels, QUESTIONS, ANSWERS),
        )


class PooledPixels:
    """A scorer stand-in for the cosine filter: 4x4 average-pooled pixels as image features."""

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.adaptive_avg_pool2d(pixels.float(), 4).flatten(1), dim=-1)  # (B, 48)

    def text_image_similarity(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
        raise AssertionError("the cosine filter never scores text")


@pytest.mark.parametrize(
    "precision, game",
    [
        # Emu3's latents are not unit-norm, so the decoder budget is relative to each token's norm.
        ("fp32", {"filter": "none", "budget": "relative"}),
        ("bf16", {"filter": "cosine", "cosine_threshold": 0.5, "budget": "relative"}),  # BatchNorm in bf16
        ("fp32", {"adversary": "embedding", "mining": "official", "filter": "none"}),  # via embedding_hook
    ],
    ids=["decoder-none", "decoder-cosine-bf16", "official-mining"],
)
def test_unigame_trains_emu3_through_the_protocol(make_emu3, tmp_path, precision, game):
    adapter = make_emu3()
    cfg = TrainConfig(
        model=ModelConfig(path="unused-an-adapter-is-injected", precision=precision),
        data=DataConfig(train_items=8, batch_size=2),
        game=GameConfig(percentile=0.0, **game),
        optim=OptimConfig(steps=2),
        logging=LoggingConfig(
            log_every=1, checkpoint_every=0, tensorboard=False, plots=False, panel_items=0, progress=False
        ),
    )
    trainer = UniGameTrainer(cfg, tmp_path / "emu3", adapter, PooledPixels(), build_split("train", 8, 0))
    trainer.setup()
    if precision == "bf16":  # BatchNorm statistics follow their frozen weights; RoPE frequencies stay fp32
        norm = adapter.model.model.vqmodel.encoder.time_res_stack[0].norm1
        assert norm.weight.dtype == norm.running_var.dtype == torch.bfloat16
        assert adapter.model.model.text_model.rotary_emb.inv_freq.dtype == torch.float32
    frozen_before = {
        n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if not p.requires_grad
    }
    before = trainer.trainable_state()
    trainer.train()
    trainer.cleanup()
    after = trainer.trainable_state()
    lora = [k for k in after if k.startswith("lora.") and "lora_B" in k]
    assert lora and any(not torch.equal(before[k], after[k]) for k in lora)
    assert not torch.equal(before["perturber.gate"], after["perturber.gate"])  # the gradient reached δ
    for name, param in trainer.peft_model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(frozen_before[name], param), name  # VQ, embeddings, LM weights untouched
    assert len(trainer.buffer) > 0
    # latents stored, not pixels: z̃ and, with residual decoding (the default), z beside it; official
    # mining stores the generated codes' latents
    stored = (64, CFG.codebook_dim) if game.get("mining") == "official" else (2, 64, CFG.codebook_dim)
    assert trainer.buffer.state_dict()["latents"].shape[1:] == stored


def test_bf16_run_decodes_the_perturbed_latent_in_fp32(make_emu3, tmp_path):
    """As for Janus (tests/methods/unigame/test_trainer.py): in a bf16 run the VQ decoding path stays float32 and
    decodes with autocast off, so G(z + δ) − G(z) at ε = 0.01·‖z_t‖ equals the fp32 one (relative error
    0 measured; bound 1e-6). Decoding in bf16 (bf16-stored VQ under autocast) got it wrong by 0.91."""
    cfg = TrainConfig(
        model=ModelConfig(path="unused-an-adapter-is-injected", precision="bf16"),
        data=DataConfig(train_items=8, batch_size=2),
        game=GameConfig(filter="none", budget="relative"),
        optim=OptimConfig(steps=1),
        logging=LoggingConfig(
            checkpoint_every=0, tensorboard=False, plots=False, panel_items=0, progress=False
        ),
    )
    trainer = UniGameTrainer(cfg, tmp_path / "emu3", make_emu3(), PooledPixels(), build_split("train", 8, 0))
    trainer.setup()
    vq = trainer.adapter.model.model.vqmodel
    for module in trainer.adapter.fp32_modules():
        assert all(p.dtype == torch.float32 for p in module.parameters())
        assert all(b.dtype == torch.float32 for b in module.buffers() if b.is_floating_point())
    assert vq.encoder.time_res_stack[0].norm1.weight.dtype == torch.bfloat16  # the rest is stored in bf16
    reference = make_emu3()
    pixels = trainer.batches.batch([0, 1, 2, 3]).pixels
    with torch.no_grad():
        z = reference.encode_latents(pixels)  # (B, N, C), not unit-norm
        direction = F.normalize(torch.randn(z.shape, generator=torch.Generator().manual_seed(0)), dim=-1)
        z_tilde = z + 0.01 * z.norm(dim=-1, keepdim=True) * direction  # the relative budget at ε = 0.01
        expected = reference.decode_latents(z_tilde) - reference.decode_latents(z)
        with trainer._autocast():
            got = trainer.adapter.decode_latents(z_tilde) - trainer.adapter.decode_latents(z)
    assert expected.abs().max() > 1e-3
    error = float((got - expected).norm() / expected.norm())
    assert error < 1e-6, error
    trainer.cleanup()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("vq_downsample", 3, "vq_downsample=3"),
        ("vq_channels", 40, "vq_channels=40"),
        ("max_positions", 64, "max_positions=64"),
    ],
)
def test_invalid_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TinyEmu3Config(**{field: value}).validate()


def test_adapter_rejects_a_tokenizer_without_emu3_tokens(adapter):
    from unigame.models.text_tokenizer import train_text_tokenizer

    with pytest.raises(ValueError, match="lacks .* Emu3 token"):
        Emu3Adapter(adapter.model, train_text_tokenizer(corpus_texts(20, 0), vocab_size=300))
