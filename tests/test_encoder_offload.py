"""The text encoders, SigLIP and the VAE under the memory budget (models/encoder_offload.py), on the CPU.

A CountingAccelerator stands in for the device: its copies are CPU clones and its free memory is what a
test says, so streamed encoder layers run the real math (fp32: outputs torch.equal to the whole model)
while its ledger proves the peak stays within the weight budget (free - preservation; the preserved
memory holds the activations, only a reserve above it is taken out of the budget).
"""

import logging

import copy
import dataclasses

import numpy as np
import pytest
import torch

from goan_core.errors import InputError
from goan_core.jobs import goan_encoders
from goan_core.models import VAE, CountingAccelerator, ImageEncoder, TextEncoders, storage_bytes
from goan_core.models.encoder_offload import (CLIP_BLOCKS, LLAMA_BLOCKS, SIGLIP_BLOCKS, decode_bytes,
                                              encoder_activation_factor, placed_vae, short_of_memory,
                                              vae_activation_bytes)
from goan_core.models.encoders import (PROMPT_TOKENS, decode_latents, encode_image_embeds, encode_prompt,
                                       encode_start_latent, template_crop_start)
from goan_core.models.offload import GIB, plan_swap
from goan_core.models.tiny import TINY_LLAMA_CONFIG
from transformers import LlamaConfig, LlamaModel

CPU, F32 = torch.device("cpu"), torch.float32
PRESERVE = 6.0  # GB kept free: the fake device's free bytes are this plus what each test allows
PROMPT = "a dog runs on the beach"


def image(size=64):
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x * 255 // size, y * 255 // size, (x ^ y) % 256], axis=-1).astype(np.uint8)


def weights(model):
    return {name: t.data_ptr() for name, t in list(model.named_parameters()) + list(model.named_buffers())}


def hooks(model):
    """The forward hooks on every module (transformers 5 installs its own output-capturing ones for good)."""
    return {name: (tuple(m._forward_pre_hooks), tuple(m._forward_hooks)) for name, m in model.named_modules()}


def assert_back_on_cpu(model, before, hooks_before, accelerator):
    assert all(t.device.type == "cpu" for t in list(model.parameters()) + list(model.buffers()))
    assert weights(model) == before  # the very original tensors, not copies
    assert accelerator.resident_bytes == 0
    assert hooks(model) == hooks_before  # the swapper's hooks are gone


class Scripted(CountingAccelerator):
    """A fake device whose free memory is given per placement in turn (encode_prompt: Llama, then CLIP);
    `ledgers()` gives each placement's (peak, uploaded) bytes."""

    def __init__(self, *frees: int):
        super().__init__(0)
        self._frees, self._ledgers, self._open = list(frees), [], False

    def _close(self):
        if self._open:
            self._ledgers.append((self.peak_bytes, self.uploaded_bytes))
        self.peak_bytes = self.uploaded_bytes = 0
        self._open = False

    def free_bytes(self) -> int:
        self._close()
        self._open = True
        return self._frees.pop(0)

    def ledgers(self):
        self._close()
        return self._ledgers


# name -> (ModelSet attribute, block lists, its place among the placements of one encode call)
ENCODERS = {
    "llama": ("text_encoder", LLAMA_BLOCKS, 0),
    "clip": ("text_encoder_2", CLIP_BLOCKS, 1),
    "siglip": ("image_encoder", SIGLIP_BLOCKS, 0),
}
PLENTY = 40 * GIB


def encoder_plan(models, which, free=None):
    attr, containers, _ = ENCODERS[which]
    model = getattr(models, attr)
    if which == "llama":
        tokens, held = PROMPT_TOKENS + template_crop_start(models.tokenizer), model.config.num_hidden_layers + 1
    elif which == "clip":
        tokens, held = 77, 0
    else:
        tokens, held = (model.config.image_size // model.config.patch_size) ** 2, 0
    return plan_swap(model, free, PRESERVE, compute_dtype=F32, tokens=tokens, containers=containers,
                     what=which, activation_factor=encoder_activation_factor(model, held))


def free_for(models, which, slots=1, extra_blocks=0):
    """Free bytes fitting the encoder's non-block modules, `slots` slots and `extra_blocks` blocks beside the memory
    its activations use (the preservation, or the reserve when larger)."""
    full = encoder_plan(models, which)
    sizes = list(full.block_bytes.values())
    return (max(full.preservation_bytes, full.reserve_bytes) + full.fixed_bytes
            + sum(sorted(sizes, reverse=True)[:slots]) + sum(sizes[:extra_blocks]))


def assert_within(plan, free, peak):
    assert not plan.fallback and plan.budget == free - int(PRESERVE * GIB)
    assert peak == plan.peak_weight_bytes <= plan.weight_budget
    assert plan.device_bytes() <= free


def fake_for(which, free):
    """A Scripted device giving `which` `free` bytes and the other text encoder plenty."""
    return Scripted(free) if which == "siglip" else Scripted(*[free if i == ENCODERS[which][2] else PLENTY
                                                              for i in range(2)])


def encode(models, which, accelerator=None):
    budget = dict(gpu_memory_preservation=PRESERVE, accelerator=accelerator)
    if which == "siglip":
        return (encode_image_embeds(models, image(), CPU, F32, **budget),)
    embeds, mask, pooled = encode_prompt(models, PROMPT, CPU, F32, **budget)
    return (embeds, mask) if which == "llama" else (pooled,)


# -- encoders: streamed vs whole ---------------------------------------------------------------------


def test_the_block_lists_are_found(tiny_models):
    """transformers 5 has CLIP's and SigLIP's layers at encoder.layers, 4 under text_model / vision_model."""
    counts = {which: len(encoder_plan(tiny_models, which).block_bytes) for which in ENCODERS}
    assert counts == {"llama": 3, "clip": 2, "siglip": 2}


@pytest.mark.parametrize("which", list(ENCODERS))
def test_streamed_encoder_is_identical_and_within_budget(tiny_models, which):
    model = getattr(tiny_models, ENCODERS[which][0])
    reference = encode(tiny_models, which)
    before, hooks_before = weights(model), hooks(model)
    free = free_for(tiny_models, which, slots=1)
    plan = encoder_plan(tiny_models, which, free)
    assert plan.resident == () and len(plan.streamed) >= 2 and not plan.prefetch  # one slot: all layers stream
    fake = fake_for(which, free)
    streamed = encode(tiny_models, which, fake)
    assert all(torch.equal(a, b) for a, b in zip(streamed, reference))
    peak, uploaded = fake.ledgers()[ENCODERS[which][2]]
    assert peak == plan.peak_weight_bytes < storage_bytes(model)
    assert_within(plan, free, peak)
    assert uploaded == storage_bytes(model)  # one pass: each layer came in once
    assert_back_on_cpu(model, before, hooks_before, fake)


def test_llama_keeps_what_fits_resident_and_prefetches(tiny_models):
    """A 5-layer tiny Llama: layer 0 stays resident, layers 1-4 stream through two slots with prefetch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        llama = LlamaModel(LlamaConfig(**{**TINY_LLAMA_CONFIG, "num_hidden_layers": 5})).eval()
    models = dataclasses.replace(tiny_models, text_encoder=llama)
    reference = encode(models, "llama")
    before, hooks_before = weights(llama), hooks(llama)
    free = free_for(models, "llama", slots=2, extra_blocks=1)
    plan = encoder_plan(models, "llama", free)
    assert plan.resident == ("layers.0",) and len(plan.streamed) == 4 and plan.prefetch
    fake = fake_for("llama", free)
    assert all(torch.equal(a, b) for a, b in zip(encode(models, "llama", fake), reference))
    peak, uploaded = fake.ledgers()[0]
    assert_within(plan, free, peak)
    assert uploaded == storage_bytes(llama)
    assert_back_on_cpu(llama, before, hooks_before, fake)


@pytest.mark.parametrize("which", list(ENCODERS))
def test_an_encoder_that_fits_is_placed_whole(tiny_models, which):
    model = getattr(tiny_models, ENCODERS[which][0])
    assert encoder_plan(tiny_models, which, PLENTY).streamed == ()
    fake = fake_for(which, PLENTY)
    assert all(torch.equal(a, b) for a, b in zip(encode(tiny_models, which, fake), encode(tiny_models, which)))
    assert fake.ledgers()[ENCODERS[which][2]] == (storage_bytes(model),) * 2  # moved once, whole
    assert fake.resident_bytes == 0


def test_an_exception_inside_a_streamed_layer_puts_everything_back(tiny_models):
    model = tiny_models.text_encoder
    encode(tiny_models, "llama")  # transformers installs its own hooks on the first call
    before, hooks_before = weights(model), hooks(model)
    fake = fake_for("llama", free_for(tiny_models, "llama", slots=1))

    def boom(module, args, output):  # runs before the swapper's own post-hook: the layer's copies are live
        raise RuntimeError("CUDA out of memory (simulated)")

    handle = model.layers[1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            encode(tiny_models, "llama", fake)
    finally:
        handle.remove()
    assert fake.ledgers()[0][0] > 0
    assert_back_on_cpu(model, before, hooks_before, fake)


def test_an_encoder_short_of_the_preservation_streams_through_one_slot_with_a_warning(tiny_models, caplog):
    model = tiny_models.text_encoder
    reference = encode(tiny_models, "llama")
    full = encoder_plan(tiny_models, "llama")
    least = full.fixed_bytes + max(full.block_bytes.values())
    fake = fake_for("llama", least)  # room for the least goan can do, nothing of the preservation
    with caplog.at_level(logging.WARNING, logger="goan"):
        assert all(torch.equal(a, b) for a, b in zip(encode(tiny_models, "llama", fake), reference))
    assert fake.ledgers()[0][0] == least
    assert any("Llama" in r.getMessage() and "less than the asked-for 6 GB" in r.getMessage() for r in caplog.records)
    assert fake.resident_bytes == 0 and model.layers[0].self_attn.q_proj.weight.device.type == "cpu"


def test_an_encoder_too_big_for_the_device_is_an_input_error(tiny_models):
    full = encoder_plan(tiny_models, "llama")
    fake = CountingAccelerator(full.fixed_bytes + max(full.block_bytes.values()) - 1)
    with pytest.raises(InputError, match="gpu_memory_preservation.*Llama"):
        encode(tiny_models, "llama", fake)
    assert fake.resident_bytes == 0 and fake.uploaded_bytes == 0  # refused before anything moved


def test_the_handles_carry_the_budget(tiny_models):
    fake = fake_for("llama", free_for(tiny_models, "llama", slots=1))
    encoders = goan_encoders(tiny_models, CPU, F32, gpu_memory_preservation=PRESERVE, accelerator=fake)
    for handle in (encoders.prompt, encoders.image, encoders.vae):
        assert handle.gpu_memory_preservation == PRESERVE and handle.accelerator is fake
    text = TextEncoders(tiny_models, CPU, F32, gpu_memory_preservation=PRESERVE, accelerator=fake)
    reference = encode_prompt(tiny_models, PROMPT, CPU, F32)
    assert all(torch.equal(a, b) for a, b in zip(text.encode_prompt(PROMPT), reference))
    assert 0 < fake.ledgers()[0][0] < storage_bytes(tiny_models.text_encoder)  # the Llama streamed
    siglip = ImageEncoder(tiny_models, CPU, F32, gpu_memory_preservation=PRESERVE, accelerator=CountingAccelerator(
        free_for(tiny_models, "siglip")))
    assert torch.equal(siglip.encode_image(image()), encode_image_embeds(tiny_models, image(), CPU, F32))
    assert goan_encoders(tiny_models, CPU, F32).vae.accelerator is None  # default: the real device


def test_the_cli_passes_gpu_memory_preservation_to_the_encoders(tiny_models_root, monkeypatch, tmp_path):
    from goan_core.cli.commands import load_runtime
    from goan_core.cli.parser import build_parser

    monkeypatch.setenv("GOAN_TINY_DIR", str(tiny_models_root))
    args = build_parser().parse_args(["generate", "--tiny", "--image", "x.png", "--prompt", "p", "--out",
                                      str(tmp_path / "o.mp4"), "--gpu-memory-preservation", "3.5"])
    encoders = load_runtime(args, need_text=True, need_image=True).encoders
    assert {e.gpu_memory_preservation for e in (encoders.prompt, encoders.image, encoders.vae)} == {3.5}


# -- the VAE: tiled and sliced only when short ---------------------------------------------------------

TILE, STRIDE = 64, 48  # pixels: small enough that the tiny VAE really tiles a 128x128 decode


@pytest.fixture(scope="module")
def small_tiles(tiny_models):
    """The tiny VAE with diffusers' tile size set small (tiling itself stays off until a call is short)."""
    vae = copy.deepcopy(tiny_models.vae)
    vae.tile_sample_min_height = vae.tile_sample_min_width = TILE
    vae.tile_sample_stride_height = vae.tile_sample_stride_width = STRIDE
    return vae


def latents(seed=0, size=16, frames=3):
    return torch.randn(1, 16, frames, size, size, generator=torch.Generator().manual_seed(seed))


def vae_free(vae, activation_bytes, short):
    """Free bytes one short of (or exactly) the VAE's weights + its activations, which may use the preserved memory."""
    return storage_bytes(vae) + max(int(PRESERVE * GIB), activation_bytes) - (1 if short else 0)


def spy(module):
    """Record the spatial size of each call's input."""
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    return seen, handle


@pytest.mark.parametrize("short", [False, True])
def test_decode_tiles_and_slices_only_when_short(small_tiles, short):
    vae, z = small_tiles, latents()
    need = decode_bytes(vae, tuple(z.shape), F32)
    fake = CountingAccelerator(vae_free(vae, need, short))
    flags = []
    seen, handle = spy(vae.decoder)
    flag = vae.decoder.register_forward_pre_hook(lambda m, a: flags.append((vae.use_tiling, vae.use_slicing)))
    try:
        pixels = decode_latents(vae, z, CPU, F32, gpu_memory_preservation=PRESERVE, accelerator=fake)
    finally:
        handle.remove()
        flag.remove()
    assert pixels.shape == (1, 3, 9, 128, 128)
    assert set(flags) == {(short, short)}
    latent_tile = TILE // 8
    assert all(max(shape) <= latent_tile for shape in seen) if short else seen == [(16, 16)]
    assert (vae.use_tiling, vae.use_slicing) == (False, False)  # restored
    assert fake.resident_bytes == 0 and fake.peak_bytes == storage_bytes(vae)
    untiled = decode_latents(vae, z, CPU, F32)
    assert torch.equal(pixels, untiled) != short  # tiling really changed the computation


def test_tiled_decode_is_diffusers_tiling_with_the_right_shape_and_seamless(small_tiles):
    """(b) Exactly diffusers' tiled+sliced decode; no seams on a spatially uniform latent (atol 1e-3).

    Tiled decoding is not bit-identical to untiled: each tile's GroupNorm statistics and mid-block attention
    see only the tile. The tiny VAE's random weights amplify that to O(1) differences on random latents, so
    closeness on natural content needs the real VAE; here a latent constant over h and w (each tile sees the
    same statistics) must decode the same tiled and untiled, which checks the tiles' placement and blending.
    """
    vae = small_tiles
    uniform = torch.randn(1, 16, 3, 1, 1, generator=torch.Generator().manual_seed(1)).expand(1, 16, 3, 16, 16)
    for z, atol in ((latents(), None), (uniform.contiguous(), 1e-3)):
        fake = CountingAccelerator(vae_free(vae, decode_bytes(vae, tuple(z.shape), F32), short=True))
        tiled = decode_latents(vae, z, CPU, F32, gpu_memory_preservation=PRESERVE, accelerator=fake)
        mirror = copy.deepcopy(vae)
        mirror.enable_tiling()
        mirror.enable_slicing()
        with torch.no_grad():
            expected = mirror.decode(z / vae.config.scaling_factor).sample
        assert torch.equal(tiled, expected)
        untiled = decode_latents(vae, z, CPU, F32)
        assert tiled.shape == untiled.shape and torch.isfinite(tiled).all()
        if atol is not None:
            assert torch.allclose(tiled, untiled, atol=atol, rtol=0)


def test_render_frames_through_a_short_handle_keeps_the_vae_placed_once(small_tiles):
    vae = small_tiles
    z = latents(frames=2)
    need = decode_bytes(vae, tuple(z.shape), F32)
    fake = CountingAccelerator(vae_free(vae, need, short=True))
    handle = VAE(vae, CPU, F32, gpu_memory_preservation=PRESERVE, accelerator=fake)
    seen, hook = spy(vae.decoder)
    try:
        with handle.loaded():
            first, second = handle.decode(z), handle.decode(z)
    finally:
        hook.remove()
    assert torch.equal(first, second) and fake.uploaded_bytes == storage_bytes(vae)  # nested: placed once
    assert all(max(shape) <= TILE // 8 for shape in seen) and fake.resident_bytes == 0


@pytest.mark.parametrize("short", [False, True])
def test_encode_tiles_only_when_short(small_tiles, short):
    vae, picture = small_tiles, image(128)
    need = vae_activation_bytes(vae, 1, 128, 128, F32)
    fake = CountingAccelerator(vae_free(vae, need, short))
    seen, handle = spy(vae.encoder)
    try:
        latent = encode_start_latent(vae, picture, CPU, F32, gpu_memory_preservation=PRESERVE, accelerator=fake)
    finally:
        handle.remove()
    assert latent.shape == (1, 16, 1, 16, 16)
    assert all(max(shape) <= TILE for shape in seen) if short else seen == [(128, 128)]
    assert (vae.use_tiling, vae.use_slicing) == (False, False) and fake.resident_bytes == 0


def test_default_path_never_tiles(tiny_models):
    """No accelerator on the CPU (the resume-exactness tests' path): nothing moves and nothing tiles."""
    vae = tiny_models.vae
    flags = []
    hook = vae.decoder.register_forward_pre_hook(lambda m, a: flags.append(vae.use_tiling or vae.use_slicing))
    try:
        VAE(vae, CPU, F32).decode(latents(size=8))
    finally:
        hook.remove()
    assert flags == [False]


def test_the_vae_activations_use_the_preserved_memory(small_tiles):
    """Activations smaller than the preservation: untiled with exactly the weights beside the preservation."""
    vae, z = small_tiles, latents()
    need = decode_bytes(vae, tuple(z.shape), F32)
    assert need < int(PRESERVE * GIB)
    for short in (False, True):
        fake = CountingAccelerator(vae_free(vae, need, short))
        seen, handle = spy(vae.decoder)
        try:
            decode_latents(vae, z, CPU, F32, gpu_memory_preservation=PRESERVE, accelerator=fake)
        finally:
            handle.remove()
        assert (seen == [(16, 16)]) != short
    big = int(PRESERVE * GIB) + 10 * GIB  # activations beyond the preservation come out of the weight budget
    fake = CountingAccelerator(vae_free(vae, big, short=False))
    with placed_vae(vae, CPU, F32, PRESERVE, fake) as placement:
        assert not short_of_memory(placement, big - placement.plan.reserve_bytes)
        assert short_of_memory(placement, big - placement.plan.reserve_bytes + 1)


def test_a_vae_short_of_the_preservation_is_placed_and_tiles(small_tiles, caplog):
    vae = small_tiles
    fake = CountingAccelerator(storage_bytes(vae) + GIB)  # its weights fit, 6 GB of preservation do not
    seen, handle = spy(vae.decoder)
    try:
        with caplog.at_level(logging.WARNING, logger="goan"):
            decode_latents(vae, latents(), CPU, F32, gpu_memory_preservation=PRESERVE, accelerator=fake)
    finally:
        handle.remove()
    assert all(max(shape) <= TILE // 8 for shape in seen)  # the fallback always tiles
    assert any("the VAE" in r.getMessage() and "less than the asked-for" in r.getMessage() for r in caplog.records)
    assert fake.resident_bytes == 0 and fake.peak_bytes == storage_bytes(vae)


def test_a_vae_that_does_not_fit_is_an_input_error(tiny_models):
    fake = CountingAccelerator(storage_bytes(tiny_models.vae) - 1)
    with pytest.raises(InputError, match="gpu_memory_preservation.*the VAE"):
        VAE(tiny_models.vae, CPU, F32, gpu_memory_preservation=PRESERVE, accelerator=fake).decode(latents(size=8))
    assert fake.resident_bytes == 0
