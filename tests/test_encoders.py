"""Prompt, image and VAE encoding with the tiny models: template crop, masks, shapes, determinism."""

import numpy as np
import pytest
import torch

from goan_core.models.encoders import (
    PROMPT_TEMPLATE,
    crop_or_pad,
    decode_latents,
    encode_image_embeds,
    encode_prompt,
    encode_start_latent,
    template_crop_start,
)
from goan_core.errors import InputError
from goan_core.jobs import Encoders, build_conditioning, goan_encoders
from goan_core.models import ModelSet
from goan_core.params import JobParams

CPU, F32 = torch.device("cpu"), torch.float32


def image(height=64, width=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def prompt_token_count(tokenizer, prompt: str) -> int:
    """Tokens of the templated prompt after the template's prefix (the closing <|eot_id|> included)."""
    return len(tokenizer(PROMPT_TEMPLATE.format(prompt))["input_ids"]) - template_crop_start(tokenizer)


def test_crop_start_is_the_template_prefix(tiny_models):
    tokenizer = tiny_models.tokenizer
    crop_start = template_crop_start(tokenizer)
    prefix = tokenizer(PROMPT_TEMPLATE.split("{}")[0])["input_ids"]
    full = tokenizer(PROMPT_TEMPLATE.format("A red car drives along the coast"))["input_ids"]
    assert crop_start == len(prefix) > 10
    assert full[:crop_start] == prefix
    assert full[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(full[-1]) == "<|eot_id|>"


def test_prompt_embeds_are_cropped_and_padded_to_512(tiny_models):
    prompt = "A cat walks slowly across a sunny garden"
    embeds, mask, pooled = encode_prompt(tiny_models, prompt, CPU, F32)
    count = prompt_token_count(tiny_models.tokenizer, prompt)
    assert embeds.shape == (1, 512, 32) and embeds.dtype == F32 and embeds.device == CPU
    assert mask.shape == (1, 512) and mask.dtype == torch.bool
    assert int(mask.sum()) == count > 1
    assert mask[0, :count].all() and not mask[0, count:].any()
    assert torch.count_nonzero(embeds[0, count:]) == 0
    assert torch.count_nonzero(embeds[0, :count]) > 0
    assert pooled.shape == (1, 16) and pooled.dtype == F32


def test_prompt_embeds_are_the_llama_hidden_state_after_the_template(tiny_models):
    prompt = "waves roll onto the beach"
    tokens = tiny_models.tokenizer(PROMPT_TEMPLATE.format(prompt), return_tensors="pt")
    with torch.no_grad():
        hidden = tiny_models.text_encoder(**tokens, output_hidden_states=True).hidden_states[-3]
    crop_start = template_crop_start(tiny_models.tokenizer)
    embeds, mask, _ = encode_prompt(tiny_models, prompt, CPU, F32)
    count = int(mask.sum())
    torch.testing.assert_close(embeds[:, :count], hidden[:, crop_start:])


def test_long_prompts_keep_256_tokens(tiny_models):
    embeds, mask, pooled = encode_prompt(tiny_models, "a dog runs on the beach " * 200, CPU, F32)
    assert embeds.shape == (1, 512, 32) and int(mask.sum()) == 256
    assert pooled.shape == (1, 16)


def test_any_text_tokenizes(tiny_models):
    for prompt in ("", "Café naïve façade — 日本語 🙂 \t\n", "zyxqwv unknownword 12345 !!!"):
        embeds, mask, pooled = encode_prompt(tiny_models, prompt, CPU, F32)
        assert embeds.shape == (1, 512, 32) and mask.sum() >= 1 and pooled.shape == (1, 16)
        ids = tiny_models.tokenizer(prompt)["input_ids"]
        assert tiny_models.tokenizer.decode(ids, skip_special_tokens=True) == prompt  # nothing unknown
        clip_ids = tiny_models.tokenizer_2(prompt)["input_ids"]
        assert tiny_models.tokenizer_2.decode(clip_ids, skip_special_tokens=True) == prompt.lower()


def test_special_token_ids_match_the_model_configs(tiny_models):
    for tokenizer, model in ((tiny_models.tokenizer, tiny_models.text_encoder),
                             (tiny_models.tokenizer_2, tiny_models.text_encoder_2)):
        assert tokenizer.bos_token_id == model.config.bos_token_id
        assert tokenizer.eos_token_id == model.config.eos_token_id
        assert tokenizer.pad_token_id == model.config.pad_token_id
        assert len(tokenizer) <= model.config.vocab_size


def test_clip_tokens_are_padded_to_77(tiny_models):
    ids = tiny_models.tokenizer_2("a cat", padding="max_length", max_length=77, truncation=True)["input_ids"]
    long = tiny_models.tokenizer_2("cat " * 300, padding="max_length", max_length=77, truncation=True)
    long = long["input_ids"]
    assert len(ids) == len(long) == 77
    assert ids[-1] == tiny_models.tokenizer_2.pad_token_id


def test_prompt_encoding_is_deterministic_and_prompt_dependent(tiny_models):
    a = encode_prompt(tiny_models, "a cat", CPU, F32)
    b = encode_prompt(tiny_models, "a cat", CPU, F32)
    c = encode_prompt(tiny_models, "a dog", CPU, F32)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[2], c[2])


def test_crop_or_pad():
    x = torch.randn(1, 600, 4)
    cropped, mask = crop_or_pad(x, 512)
    assert torch.equal(cropped, x[:, :512]) and mask.all() and mask.shape == (1, 512)
    padded, mask = crop_or_pad(x[:, :3], 5)
    assert torch.equal(padded[:, :3], x[:, :3]) and torch.count_nonzero(padded[:, 3:]) == 0
    assert mask.tolist() == [[True, True, True, False, False]]


def test_image_embeds_shape(tiny_models):
    embeds = encode_image_embeds(tiny_models, image(48, 80), CPU, F32)
    assert embeds.shape == (1, 16, 24) and embeds.dtype == F32
    assert torch.equal(embeds, encode_image_embeds(tiny_models, image(48, 80), CPU, F32))


def test_start_latent_is_deterministic_and_leaves_rngs_alone(tiny_models):
    before = torch.get_rng_state()
    latent = encode_start_latent(tiny_models.vae, image(), CPU, F32)
    assert torch.equal(before, torch.get_rng_state())
    assert latent.shape == (1, 16, 1, 8, 8) and latent.dtype == F32
    assert torch.equal(latent, encode_start_latent(tiny_models.vae, image(), CPU, F32))
    with torch.no_grad():
        pixels = torch.from_numpy(image()).float().div(127.5).sub(1).permute(2, 0, 1)[None, :, None]
        mode = tiny_models.vae.encode(pixels).latent_dist.mode()
    assert torch.equal(latent, mode * tiny_models.vae.config.scaling_factor)


@pytest.mark.parametrize("frames", [1, 3, 6])
def test_decode_gives_four_pixel_frames_per_latent_frame(tiny_models, frames):
    latents = torch.randn(1, 16, frames, 8, 8, generator=torch.Generator().manual_seed(frames))
    pixels = decode_latents(tiny_models.vae, latents, CPU, F32)
    assert pixels.shape == (1, 3, (frames - 1) * 4 + 1, 64, 64) and pixels.dtype == F32
    assert torch.isfinite(pixels).all()


def test_decode_undoes_the_scaling_factor(tiny_models):
    latents = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        direct = tiny_models.vae.decode(latents / tiny_models.vae.config.scaling_factor).sample
    assert torch.equal(decode_latents(tiny_models.vae, latents, CPU, F32), direct)


def test_conditioning_without_cfg_has_no_negative(tiny_models):
    params = JobParams(prompt="a cat", cfg=1.0)
    encoders = goan_encoders(tiny_models, CPU, F32)
    conditioning, recorded = build_conditioning(params, image(), encoders)
    assert recorded == params  # goan encoded the texts it records
    assert conditioning.negative_prompt_embeds is None
    assert conditioning.negative_prompt_mask is None and conditioning.negative_pooled is None
    assert conditioning.prompt_embeds.shape == (1, 512, 32)
    assert conditioning.image_embeds.shape == (1, 16, 24)
    assert encoders.vae.encode_start_latent(image()).shape == (1, 16, 1, 8, 8)


def test_conditioning_with_cfg_encodes_the_negative_prompt(tiny_models):
    params = JobParams(prompt="a cat", negative_prompt="blurry, low quality", cfg=3.0)
    conditioning, _ = build_conditioning(params, image(), goan_encoders(tiny_models, CPU, F32))
    negative = encode_prompt(tiny_models, "blurry, low quality", CPU, F32)
    assert torch.equal(conditioning.negative_prompt_embeds, negative[0])
    assert torch.equal(conditioning.negative_prompt_mask, negative[1])
    assert torch.equal(conditioning.negative_pooled, negative[2])


def test_missing_encoders_are_named_with_the_front_end_hint(tiny_models):
    text_only = goan_encoders(ModelSet(text_encoder=tiny_models.text_encoder, text_encoder_2=tiny_models.text_encoder_2,
                                       tokenizer=tiny_models.tokenizer, tokenizer_2=tiny_models.tokenizer_2), CPU, F32)
    with pytest.raises(InputError, match="the start image needs load the SigLIP"):
        build_conditioning(JobParams(prompt="a cat"), image(), text_only)
    with pytest.raises(InputError, match="real CFG .* needs connect a negative"):
        build_conditioning(JobParams(prompt="a cat", cfg=2.0), image(),
                           Encoders(prompt=text_only.prompt, hints={"negative_prompt": "connect a negative"}))


def test_missing_encoders_and_wrong_dtype_are_clear_errors(tiny_models):
    without_text = ModelSet(vae=tiny_models.vae, image_encoder=tiny_models.image_encoder)
    with pytest.raises(InputError, match="text_encoder.*need_text=True"):
        encode_prompt(without_text, "a cat", CPU, F32)
    with pytest.raises(InputError, match="feature_extractor.*need_image=True"):
        encode_image_embeds(without_text, image(), CPU, F32)
    with pytest.raises(InputError, match="VAE is not loaded"):
        encode_start_latent(None, image(), CPU, F32)
    with pytest.raises(InputError, match="float32.*bfloat16"):
        decode_latents(tiny_models.vae, torch.zeros(1, 16, 1, 8, 8), CPU, torch.bfloat16)
