"""ComfyUI's native CONDITIONING, CLIP_VISION_OUTPUT and VAE, with structures of ComfyUI's shape at tiny sizes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nodes_helpers import *  # noqa: F401,F403  (fixtures)
from nodes_helpers import JOB, pause_when, run_sampler


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
    goan, recorded = build_conditioning(params, source, node_encoders(text_encoders=text, image_encoder=image_encoder))
    assert recorded == params
    native, recorded = build_conditioning(params, source, node_encoders(
        positive=comfy_conditioning(embeds, mask, pooled, padding=3), negative=comfy_conditioning(*negative),
        clip_vision_output=SimpleNamespace(last_hidden_state=image_embeds)))
    for name, tensor in goan.tensors().items():
        assert torch.equal(getattr(native, name), tensor), name
    # the CONDITIONING's texts are unknown to goan: it records native conditioning, not the widget texts
    assert (recorded.prompt, recorded.negative_prompt, recorded.prompt_source) == ("", "", "native")


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


class FakeComfyCLIP:
    """comfy.sd.CLIP's two calls CLIPTextEncode makes, over the tiny encoders: user tokens only, like hunyuan_video."""

    def __init__(self, text):
        self.text, self.calls = text, []

    def tokenize(self, text):
        self.calls.append(text)
        return {"text": text}

    def encode_from_tokens_scheduled(self, tokens):
        from goan_pack.goan_core.models.encoders import encode_prompt

        embeds, mask, pooled = encode_prompt(self.text.models, tokens["text"], torch.device("cpu"), torch.float32)
        return [[embeds[:, mask[0]], {"pooled_output": pooled}]]


class FakeClipVision:
    """comfy.clip_vision.ClipVisionModel.encode_image over the tiny SigLIP; keeps every image it is given."""

    def __init__(self, image_encoder):
        self.image_encoder, self.seen = image_encoder, []

    def encode_image(self, image, crop=True):
        from goan_pack.goan_core.models.encoders import encode_image_embeds

        self.seen.append((image.clone(), crop))
        picture = (image[0] * 255).round().to(torch.uint8).numpy()
        hidden = encode_image_embeds(self.image_encoder.models, picture, torch.device("cpu"), torch.float32)
        return SimpleNamespace(last_hidden_state=hidden)


def test_sampler_encodes_its_own_prompt_and_the_bucketed_crop_with_comfyuis_models(host, loaded, image, picture):
    """clip and clip_vision: goan encodes the sampler's prompt and exactly the crop the job uses (as FramePack
    does), so the run equals one on goan's own encoders and the resume file records the real prompt."""
    from goan_pack.goan_core.media import nearest_bucket, resize_and_center_crop

    _, _, text, image_encoder = loaded
    clip, vision = FakeComfyCLIP(text), FakeClipVision(image_encoder)
    reference, _, _ = run_sampler(loaded, image, seconds=0.3, steps=2, autosave_every=0)
    job, _, _ = run_sampler(loaded, image, text_encoders=None, image_encoder=None, clip=clip, clip_vision=vision,
                            seconds=0.3, steps=2, autosave_every=0)
    height, width = nearest_bucket(*picture.shape[:2], JOB["resolution"])
    (seen, crop), = vision.seen
    assert crop is False and seen.shape == (1, height, width, 3)
    assert torch.equal(seen[0], torch.from_numpy(resize_and_center_crop(picture, width, height)).float() / 255)
    assert clip.calls == [JOB["prompt"]]
    assert torch.equal(job.state.history_latents, reference.state.history_latents)
    assert (job.state.params.prompt, job.state.params.prompt_source) == (JOB["prompt"], "text")


def test_native_conditioning_is_recorded_as_such_and_resumes_without_encoders(host, loaded, image, encoded):
    """CONDITIONING carries no text: the file records native conditioning (no prompt), keeps the embeddings, and
    continues from them alone; without them goan refuses to encode a text it never saw."""
    from goan_pack.goan_core.errors import InputError
    from goan_pack.goan_core.jobs import Encoders, continue_job
    from goan_pack.goan_core.resumefile import read_resume_file
    from goan_pack.nodes.sampler import node_encoders

    transformer, vae, text, image_encoder = loaded
    (embeds, mask, pooled), _, image_embeds = encoded
    finished, _, _ = run_sampler(loaded, image, text_encoders=None, image_encoder=None,
                                 prompt="a widget text that did not make the video",
                                 positive=comfy_conditioning(embeds, mask, pooled),
                                 clip_vision_output=SimpleNamespace(last_hidden_state=image_embeds), seconds=0.3,
                                 steps=2, autosave_every=1)
    saved = read_resume_file(finished.path)
    params = saved.state.params
    assert (params.prompt, params.negative_prompt, params.prompt_source) == ("", "", "native")
    assert torch.equal(saved.state.conditioning.prompt_embeds, embeds)
    job, _ = continue_job(saved.state, saved.source_image, Encoders(vae=vae), identity=transformer.identity(),
                          additional_seconds=0.0)
    assert torch.equal(job.state.conditioning.prompt_embeds, embeds)
    bare = saved.state.snapshot()
    bare.conditioning = None
    with pytest.raises(InputError, match="native conditioning"):
        continue_job(bare, saved.source_image, node_encoders(text_encoders=text, image_encoder=image_encoder,
                                                             goan_vae=vae), identity=transformer.identity())


def test_a_native_jobs_prompt_is_never_silently_branched(host, loaded, image, encoded, caplog):
    """Asked for another prompt (the CLI's --prompt), a natively conditioned job refuses with the reason; the
    sampler's prompt widgets, unused in such workflows, are left out with a warning, and the job goes on."""
    from goan_pack.goan_core.errors import InputError
    from goan_pack.goan_core.jobs import branch_changes
    from goan_pack.goan_core.resumefile import read_resume_file

    (embeds, mask, pooled), _, image_embeds = encoded
    native = dict(text_encoders=None, image_encoder=None, positive=comfy_conditioning(embeds, mask, pooled),
                  clip_vision_output=SimpleNamespace(last_hidden_state=image_embeds))
    pause_when(host, 1)
    paused, _, _ = run_sampler(loaded, image, seconds=0.3, steps=3, autosave_every=0, **native)
    assert paused.status == "paused"
    state = read_resume_file(paused.path).state
    for name in ("prompt", "negative_prompt"):
        with pytest.raises(InputError, match=f"conditioned natively .* its {name.replace('_', ' ')} is its saved"):
            branch_changes(state, {name: "a new text"})
    assert branch_changes(state, {"prompt": "", "seed": 5}) == {"seed": [state.params.seed, 5]}
    with caplog.at_level("WARNING"):
        resumed, _, _ = run_sampler(loaded, None, resume_state=paused, prompt="a leftover widget text", seconds=0.0,
                                    steps=3, autosave_every=0, **native)
    assert resumed.status == "finished" and resumed.state.job_id == state.job_id  # the same job, not a branch
    assert "not the prompt widget text" in caplog.text


def test_only_the_first_connected_source_of_each_piece_is_evaluated(pack):
    from goan_pack.nodes import NODE_CLASS_MAPPINGS as N

    sampler = N["GoanSegmentSampler"]()
    linked = dict.fromkeys(("image", "clip", "text_encoders", "clip_vision", "image_encoder"))
    assert sampler.check_lazy_status(cfg=1.0, **linked) == ["image", "clip", "clip_vision"]
    assert sampler.check_lazy_status(cfg=1.0, positive=None, **linked) == ["image", "positive", "clip_vision"]
    assert sampler.check_lazy_status(cfg=2.0, positive=None, negative=None, **linked) == [
        "image", "positive", "negative", "clip_vision"]


def test_positive_conditioning_with_a_text_encoded_negative_is_refused(host, loaded, image, encoded):
    from goan_pack.goan_core.errors import InputError

    (embeds, mask, pooled), _, _ = encoded
    _, _, text, _ = loaded
    with pytest.raises(InputError, match="both come from CONDITIONING inputs or both from text encoders"):
        run_sampler(loaded, image, positive=comfy_conditioning(embeds, mask, pooled), clip=FakeComfyCLIP(text),
                    cfg=2.0, seconds=0.3, steps=1, autosave_every=0)


def test_native_jobs_keep_their_embeddings_even_when_told_not_to(host, loaded, picture, encoded, tmp_path):
    from goan_pack.goan_core.jobs import RunSettings, create_job, run_job
    from goan_pack.goan_core.params import JobParams
    from goan_pack.goan_core.resumefile import read_resume_file
    from goan_pack.nodes.sampler import node_encoders

    transformer, vae, _, _ = loaded
    (embeds, mask, pooled), _, image_embeds = encoded
    encoders = node_encoders(goan_vae=vae, positive=comfy_conditioning(embeds, mask, pooled),
                             clip_vision_output=SimpleNamespace(last_hidden_state=image_embeds))
    params = JobParams(prompt="ignored", seed=1, seconds=0.3, lws=2, steps=2, resolution=64)
    job = create_job(params, picture, encoders, identity=transformer.identity())
    result = run_job(job, transformer, RunSettings(tmp_path, include_embeddings=False, pause_at=(0, 1)))
    assert read_resume_file(result.resume_file).state.conditioning is not None
