"""ComfyUI's native CONDITIONING, CLIP_VISION_OUTPUT and VAE, with structures of ComfyUI's shape at tiny sizes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nodes_helpers import *  # noqa: F401,F403  (fixtures)
from nodes_helpers import JOB, run_sampler


class FakeComfyVAE:
    """comfy.sd.VAE's layout around the tiny diffusers VAE: IMAGE [N,H,W,3] 0..1 <-> RAW latents [1,16,T,h,w]."""

    def __init__(self, vae):
        self.vae = vae
        self.calls = []

    def encode(self, pixels):
        self.calls.append(("encode", tuple(pixels.shape)))
        x = pixels.movedim(-1, 0)[None] * 2.0 - 1.0  # [1,3,N,H,W] in -1..1
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.mode()

    def decode(self, latent):
        self.calls.append(("decode", tuple(latent.shape)))
        with torch.no_grad():
            out = self.vae.decode(latent).sample
        return ((out + 1.0) / 2.0).clamp(0, 1).movedim(1, -1)  # [B,T,H,W,3]


def comfy_conditioning(embeds, mask, pooled, padding=0):
    """What CLIPTextEncode with DualCLIPLoader(hunyuan_video) gives: user tokens only (+ masked padding)."""
    n = int(mask.sum())
    cond = embeds[:, :n]
    extras = {"pooled_output": pooled}
    if padding:
        cond = torch.cat([cond, torch.randn(1, padding, cond.shape[2])], dim=1)
        extras["attention_mask"] = torch.cat([torch.ones(1, n), torch.zeros(1, padding)], dim=1).long()
    return [[cond, extras]]


@pytest.fixture(scope="module")
def encoded(loaded, picture):
    from goan_pack.goan_core.models.encoders import encode_image_embeds, encode_prompt
    from goan_pack.goan_core.media.image import nearest_bucket, resize_and_center_crop

    _, _, text, image_encoder = loaded
    h, w = nearest_bucket(*picture.shape[:2], JOB["resolution"])
    source = resize_and_center_crop(picture, w, h)
    cpu = torch.device("cpu")
    positive = encode_prompt(text.models, JOB["prompt"], cpu, torch.float32)
    negative = encode_prompt(text.models, "blurry", cpu, torch.float32)
    embeds = encode_image_embeds(image_encoder.models, source, cpu, torch.float32)
    return positive, negative, embeds


def test_conditioning_is_cropped_and_padded_like_the_diffusers_encoders(pack, encoded):
    from goan_pack.nodes.native import prompt_from_conditioning

    (embeds, mask, pooled), _, _ = encoded
    for padding in (0, 5):
        got = prompt_from_conditioning(comfy_conditioning(embeds, mask, pooled, padding))
        assert torch.equal(got[0], embeds) and torch.equal(got[1], mask) and torch.equal(got[2], pooled)
    long = [[torch.randn(1, 300, 32), {"pooled_output": torch.randn(1, 16)}]]  # more than 256 prompt tokens
    cut, cut_mask, _ = prompt_from_conditioning(long)
    assert cut.shape == (1, 512, 32) and int(cut_mask.sum()) == 256 and torch.equal(cut[:, :256], long[0][0][:, :256])


@pytest.mark.parametrize("bad, message", [
    (None, "expected ComfyUI CONDITIONING"),
    ([], "expected ComfyUI CONDITIONING"),
    ([[torch.zeros(1, 4, 8)]], r"\[tensor, dict\]"),
    ([[torch.zeros(4, 8), {"pooled_output": torch.zeros(1, 4)}]], "3-D tensor"),
    ([[torch.zeros(1, 4, 8), {}]], "pooled_output"),
    ([[torch.zeros(1, 4, 8), {"pooled_output": torch.zeros(1, 4), "attention_mask": torch.ones(1, 3)}]],
     "attention_mask covers 3"),
])
def test_conditioning_errors_say_what_to_connect(pack, bad, message):
    from goan_pack.goan_core.errors import InputError
    from goan_pack.nodes.native import prompt_from_conditioning

    with pytest.raises(InputError, match=message):
        prompt_from_conditioning(bad)


def test_clip_vision_output_as_object_or_mapping(pack):
    from goan_pack.goan_core.errors import InputError
    from goan_pack.nodes.native import image_embeds_from_clip_vision

    hidden = torch.randn(1, 729, 24)
    assert torch.equal(image_embeds_from_clip_vision(SimpleNamespace(last_hidden_state=hidden)), hidden)
    assert torch.equal(image_embeds_from_clip_vision({"last_hidden_state": hidden}), hidden)
    with pytest.raises(InputError, match="SigLIP"):
        image_embeds_from_clip_vision(SimpleNamespace(image_embeds=hidden))


def test_comfy_vae_layouts(loaded, picture):
    from goan_pack.goan_core.models.encoders import decode_latents, encode_start_latent
    from goan_pack.nodes.native import ComfyVAE

    _, vae, _, _ = loaded
    fake = FakeComfyVAE(vae.model)
    adapter = ComfyVAE(fake)
    source = picture[:48, :64]
    latent = adapter.encode_start_latent(source)
    expected = encode_start_latent(vae.model, source, torch.device("cpu"), torch.float32)
    assert latent.shape == expected.shape == (1, 16, 1, 6, 8)
    assert torch.allclose(latent, expected, atol=1e-5)
    assert fake.calls[0] == ("encode", (1, 48, 64, 3))
    z = torch.randn(1, 16, 2, 6, 8) * 0.3
    pixels = adapter.decode(z)
    reference = decode_latents(vae.model, z, torch.device("cpu"), torch.float32).clamp(-1, 1)
    assert pixels.shape == reference.shape == (1, 3, 5, 48, 64)
    assert torch.allclose(pixels, reference, atol=1e-5)


def test_sampler_with_native_inputs_matches_goan_encoders(host, loaded, image, encoded):
    from goan_pack.goan_core.jobs import build_conditioning
    from goan_pack.goan_core.media import nearest_bucket, resize_and_center_crop
    from goan_pack.goan_core.params import JobParams
    from goan_pack.nodes.sampler import node_encoders
    from goan_pack.nodes.types import image_to_uint8

    transformer, vae, text, image_encoder = loaded
    (embeds, mask, pooled), negative, image_embeds = encoded
    params = JobParams(**{k: JOB[k] for k in ("prompt", "seed", "seconds", "steps", "lws", "mode", "resolution")},
                       cfg=2.0, negative_prompt="blurry")
    picture = image_to_uint8(image)
    source = resize_and_center_crop(picture, *reversed(nearest_bucket(*picture.shape[:2], params.resolution)))
    goan = build_conditioning(params, source, node_encoders(text_encoders=text, image_encoder=image_encoder))
    native = build_conditioning(params, source, node_encoders(
        positive=comfy_conditioning(embeds, mask, pooled, padding=3), negative=comfy_conditioning(*negative),
        clip_vision_output=SimpleNamespace(last_hidden_state=image_embeds)))
    for name, tensor in goan.tensors().items():
        assert torch.equal(getattr(native, name), tensor), name


def test_sampler_runs_on_comfy_vae_and_conditioning(host, loaded, image, encoded):
    (embeds, mask, pooled), _, image_embeds = encoded
    _, vae, _, _ = loaded
    fake = FakeComfyVAE(vae.model)
    job, images, fps = run_sampler(loaded, image, text_encoders=None, image_encoder=None, goan_vae=None, vae=fake,
                                   positive=comfy_conditioning(embeds, mask, pooled),
                                   clip_vision_output=SimpleNamespace(last_hidden_state=image_embeds),
                                   seconds=0.3, steps=2, autosave_every=0)
    assert job.status == "finished" and images.shape == (job.state.plan.total_pixel_frames, 48, 64, 3)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert [c[0] for c in fake.calls] == ["encode", "decode"]
