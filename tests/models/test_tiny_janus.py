import pytest
import torch

from unigame.data.shapes import corpus_texts
from unigame.models.janus import JanusAdapter
from unigame.models.text_tokenizer import train_text_tokenizer
from unigame.models.tiny_janus import SPECIAL_TOKENS, TinyJanusConfig, build_tiny_janus

SMALL = TinyJanusConfig(
    vision_hidden=32, vision_heads=2, text_hidden=32, text_heads=2, text_layers=1, vq_channels=32
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_text_tokenizer(corpus_texts(200, 0), vocab_size=SMALL.vocab_size)


@pytest.fixture(scope="module")
def adapter(tokenizer):
    return JanusAdapter(build_tiny_janus(SMALL, seed=0), tokenizer)


def test_tokenizer_round_trip_and_special_ids(tokenizer):
    for text in [
        "How many red objects are there?",
        "a large red circle to the left of a small blue square",
        "ünï 123",
    ]:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    # every answer word is one token, so answers are a single prediction step
    for word in ["yes", "no", "red", "circle", "3"]:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1


def test_model_is_the_hf_janus_class(adapter):
    from transformers import JanusForConditionalGeneration

    assert isinstance(adapter.model, JanusForConditionalGeneration)
    assert adapter.num_image_tokens == (32 // 4) ** 2


def test_understanding_forward_backward_per_sample(adapter):
    pixels = torch.rand(3, 3, 32, 32, requires_grad=True)
    loss = adapter.understanding_loss(
        pixels,
        ["Is there a red circle?", "What colour is it?", "Describe the image."],
        ["yes", "blue", "a small red circle"],
    )
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    lm_grad = adapter.model.model.language_model.layers[0].self_attn.q_proj.weight.grad
    assert lm_grad is not None and lm_grad.abs().sum() > 0
    adapter.model.zero_grad(set_to_none=True)


def test_per_sample_loss_does_not_depend_on_batch_padding(adapter):
    pixels = torch.rand(2, 3, 32, 32)
    questions = ["Is there a red circle?", "How many objects are there in this picture today?"]
    answers = ["yes", "a small red circle and a large blue square"]
    with torch.no_grad():
        together = adapter.understanding_loss(pixels, questions, answers)
        alone = torch.stack(
            [
                adapter.understanding_loss(pixels[i : i + 1], questions[i : i + 1], answers[i : i + 1])[0]
                for i in range(2)
            ]
        )
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def test_vq_latent_round_trip_is_differentiable(adapter):
    pixels = torch.rand(2, 3, 32, 32)
    latents = adapter.encode_latents(pixels).detach().requires_grad_(True)
    assert latents.shape == (2, 64, SMALL.codebook_dim)
    torch.testing.assert_close(latents.norm(dim=-1), torch.ones(2, 64))
    decoded = adapter.decode_latents(latents)
    assert decoded.shape == (2, 3, 32, 32) and decoded.min() >= 0 and decoded.max() <= 1
    decoded.sum().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    codes = adapter.quantize(latents.detach())
    assert codes.shape == (2, 64) and int(codes.max()) < SMALL.codebook_size


def test_answer_and_generation_loops(adapter):
    pixels = torch.rand(2, 3, 32, 32)
    answers = adapter.answer(
        pixels, ["Is there a red circle?", "What shape is the blue object?"], max_new_tokens=3
    )
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    generator = torch.Generator().manual_seed(0)
    images = adapter.generate_images(
        ["a small red circle", "a large blue square"], guidance=2.0, generator=generator
    )
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    again = adapter.generate_images(
        ["a small red circle", "a large blue square"],
        guidance=2.0,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(images, again)


def test_generated_latents_are_the_codes_that_decode_to_the_generated_images(adapter):
    """`generate_latents` (what official-style mining stores) decodes to `generate_images`' pixels."""
    prompts = ["a small red circle", "a large blue square"]
    latents = adapter.generate_latents(prompts, guidance=2.0, generator=torch.Generator().manual_seed(0))
    images = adapter.generate_images(prompts, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, adapter.num_image_tokens, SMALL.codebook_dim)
    assert torch.equal(adapter.codes_to_latents(adapter.quantize(latents)), latents)  # codebook entries
    assert torch.equal(adapter.decode_latents(latents), images)


def test_generation_loss_trains_the_generation_head(adapter):
    loss = adapter.generation_loss(
        torch.rand(2, 3, 32, 32), ["a small red circle", "a large blue square"], 0.5
    )
    assert loss.shape == (2,)
    loss.sum().backward()
    assert adapter.model.model.generation_head.vision_head.weight.grad.abs().sum() > 0
    adapter.model.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image_size", 48, "image_size=48"),
        ("patch_size", 3, "patch_size=3"),
        ("vq_channels", 40, "vq_channels=40"),
    ],
)
def test_invalid_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TinyJanusConfig(**{field: value}).validate()
