"""The usual single files (VAE, Llama, CLIP-L, SigLIP) in their real naming and dtypes: each loads and
computes torch.equal to the same weights loaded from the diffusers/transformers folder format."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from goan_core.errors import ModelFolderError
from goan_core.models import ModelFiles, load_model_set, load_part
from goan_core.models.encoder_files import load_clip_file, load_llama_file, load_siglip_file
from goan_core.models.encoders import encode_image_embeds, encode_prompt
from goan_core.models.tiny import TINY_VAE_CONFIG, build_tiny_models
from goan_core.models.tiny_files import (SCALED_FP8, comfy_vae_name, scaled_fp8, write_llama_file,
                                         write_prefixed_file, write_usual_files, write_vae_file)
from goan_core.models.usual_files import USUAL_FILES
from goan_core.models.vae_file import comfy_to_diffusers, load_vae_file

CPU, F32 = torch.device("cpu"), torch.float32
COMFYUI_VAE_NAMES = Path(__file__).parent / "data" / "comfyui_hunyuan_vae_names.txt"


def rounded(model, dtype):
    """`model` with every weight rounded through `dtype` (so a file in `dtype` holds exactly its values), fp32."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype).float())
    return model


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_models(seed=3)


def saved_folder(model, folder: Path) -> Path:
    model.save_pretrained(str(folder))
    return folder


# -- the VAE ----------------------------------------------------------------------------------------


def test_comfyui_vae_naming_is_comfyuis_own():
    """The writer's ComfyUI names are exactly those of ComfyUI's own VAE model (listed from ComfyUI 0.3.64 at
    a small size), and the reader maps every one onto diffusers' AutoencoderKLHunyuanVideo of that size."""
    listed = {}
    for line in COMFYUI_VAE_NAMES.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split()
            listed[name] = tuple(int(n) for n in shape.split("x"))
    with torch.device("meta"):
        vae = AutoencoderKLHunyuanVideo(latent_channels=16, block_out_channels=(32, 32, 64, 64), norm_num_groups=32,
                                        layers_per_block=1)
    written = {}
    for key, t in vae.state_dict().items():
        name = comfy_vae_name(key, 4)
        written[name] = tuple(t.shape) + ((1, 1, 1) if ".attn_1." in name and t.ndim == 2 else ())
        assert comfy_to_diffusers(name, 4) == key
    assert written == listed


@pytest.mark.parametrize("naming", ["comfyui", "original"])
def test_vae_file_computes_like_the_folder(tiny, tmp_path, naming):
    vae = rounded(tiny.vae, torch.bfloat16)
    folder = load_part(saved_folder(vae, tmp_path / "vae"), "vae", F32)
    path = write_vae_file(vae, tmp_path / "hunyuan_video_vae_bf16.safetensors", naming=naming)
    with safe_open(str(path), "pt") as f:
        names = set(f.keys())
        assert {f.get_slice(k).get_dtype() for k in names} == {"BF16"}
    marker = "decoder.mid.block_1.conv1.conv.weight" if naming == "comfyui" else "decoder.mid_block.resnets.0.conv1.conv.weight"
    assert marker in names
    single = load_vae_file(path, F32)
    assert single.config.block_out_channels == tuple(TINY_VAE_CONFIG["block_out_channels"])
    assert single.config.norm_num_groups == TINY_VAE_CONFIG["norm_num_groups"]
    pixels = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    latents = torch.randn(1, 16, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(single.encode(pixels).latent_dist.mode(), folder.encode(pixels).latent_dist.mode())
        assert torch.equal(single.decode(latents).sample, folder.decode(latents).sample)


# -- the text encoders ------------------------------------------------------------------------------


def dequantized(llama):
    """The Llama with each projection replaced by what its scaled fp8 form holds (fp8 * scale)."""
    with torch.no_grad():
        for key, t in llama.state_dict().items():
            if key.endswith("_proj.weight"):
                weight, scale = scaled_fp8(t)
                t.copy_(weight.float() * scale)
            elif t.is_floating_point():
                t.copy_(t.half().float())
    return llama


@pytest.mark.parametrize("variant", ["fp16", SCALED_FP8])
def test_llama_file_encodes_like_the_folder(tiny, tmp_path, variant):
    models = build_tiny_models(seed=3)
    llama = dequantized(models.text_encoder) if variant == SCALED_FP8 else rounded(models.text_encoder, torch.float16)
    path = write_llama_file(llama, tmp_path / f"llava_llama3_{variant}.safetensors",
                            dtype=SCALED_FP8 if variant == SCALED_FP8 else torch.float16)
    with safe_open(str(path), "pt") as f:
        assert "model.embed_tokens.weight" in f.keys() and "model.norm.weight" in f.keys()
        if variant == SCALED_FP8:
            assert f.get_slice("model.layers.0.self_attn.q_proj.weight").get_dtype() == "F8_E4M3"
            assert "model.layers.0.self_attn.q_proj.scale_weight" in f.keys() and "scaled_fp8" in f.keys()
    models.text_encoder = load_part(saved_folder(llama, tmp_path / "text_encoder"), "text_encoder", F32)
    single = load_llama_file(path, F32)
    assert single.config.num_hidden_layers == models.text_encoder.config.num_hidden_layers
    from_folder = encode_prompt(models, "a cat walks in the rain", CPU, F32)
    models.text_encoder = single
    from_file = encode_prompt(models, "a cat walks in the rain", CPU, F32)
    for a, b in zip(from_file, from_folder):
        assert torch.equal(a, b)


def test_clip_file_pools_like_the_folder(tmp_path):
    models = build_tiny_models(seed=3)
    clip = rounded(models.text_encoder_2, torch.float16)
    path = write_prefixed_file(clip, tmp_path / "clip_l.safetensors", "text_model.")
    with safe_open(str(path), "pt") as f:
        assert "text_model.embeddings.token_embedding.weight" in f.keys()
    models.text_encoder_2 = load_part(saved_folder(clip, tmp_path / "text_encoder_2"), "text_encoder_2", F32)
    from_folder = encode_prompt(models, "a red boat", CPU, F32)
    models.text_encoder_2 = load_clip_file(path, F32)
    assert torch.equal(encode_prompt(models, "a red boat", CPU, F32)[2], from_folder[2])


def test_siglip_file_sees_like_the_folder(tmp_path):
    models = build_tiny_models(seed=3)
    siglip = rounded(models.image_encoder, torch.float16)
    path = write_prefixed_file(siglip, tmp_path / "sigclip_vision_patch14_384.safetensors", "vision_model.")
    models.image_encoder = load_part(saved_folder(siglip, tmp_path / "image_encoder"), "image_encoder", F32)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    from_folder = encode_image_embeds(models, image, CPU, F32)
    models.image_encoder = load_siglip_file(path, F32)
    assert models.image_encoder.config.image_size == 32
    assert torch.equal(encode_image_embeds(models, image, CPU, F32), from_folder)


# -- the whole set from the usual files -------------------------------------------------------------


@pytest.fixture(scope="module")
def usual(tmp_path_factory):
    return write_usual_files(tmp_path_factory.mktemp("comfyui_models"))


def test_usual_files_have_the_real_names(usual):
    assert {part: (p.parent.name, p.name) for part, p in usual.items()} == {
        f.part: (f.folder, f.name) for f in USUAL_FILES}
    with safe_open(str(usual["transformer"]), "pt") as f:
        assert f.metadata() is None  # like kijai's file: the config is inferred from the shapes
        assert f.get_slice("x_embedder.proj.weight").get_dtype() == "F8_E4M3"


def test_model_set_from_the_usual_files_needs_no_folder_but_the_tokenizers(usual, tiny_models_root, tiny_models):
    files = ModelFiles(vae=usual["vae"], text_encoder=usual["text_encoder"], text_encoder_2=usual["text_encoder_2"],
                       image_encoder=usual["image_encoder"], tokenizer=tiny_models_root / "tokenizer",
                       tokenizer_2=tiny_models_root / "tokenizer_2")
    models = load_model_set(None, transformer_file=usual["transformer"], files=files, dtype=F32)
    assert models.transformer.config.num_layers == 1  # config inferred from the fp8 file's shapes
    assert models.feature_extractor.size == tiny_models.feature_extractor.size
    with torch.no_grad():  # the files hold the seed-0 tiny weights, rounded to their dtypes
        latents = torch.randn(1, 16, 2, 4, 4)
        close = torch.allclose(models.vae.decode(latents).sample, tiny_models.vae.decode(latents).sample, atol=0.05)
    assert close
    embeds = encode_prompt(models, "a cat", CPU, F32)[0]
    assert torch.allclose(embeds, encode_prompt(tiny_models, "a cat", CPU, F32)[0], atol=0.05)


def test_missing_pieces_are_named_with_the_option_that_gives_them(usual, tmp_path):
    files = ModelFiles(vae=usual["vae"], text_encoder=usual["text_encoder"], text_encoder_2=usual["text_encoder_2"],
                       image_encoder=usual["image_encoder"])
    with pytest.raises(ModelFolderError, match=r"tokenizer: give --tokenizer DIR .*tokenizer_2: give --tokenizer-2"):
        load_model_set(None, transformer_file=usual["transformer"], files=files)
    with pytest.raises(ModelFolderError, match=r"vae: give --vae FILE \(hunyuan_video_vae_bf16"):
        load_model_set(None, transformer_file=usual["transformer"], need_text=False, need_image=False)
    empty = tmp_path / "not_a_tokenizer"
    empty.mkdir()
    with pytest.raises(ModelFolderError, match="not_a_tokenizer: not a tokenizer folder"):
        load_model_set(None, transformer_file=usual["transformer"], need_image=False,
                       files=ModelFiles(vae=usual["vae"], text_encoder=usual["text_encoder"],
                                        text_encoder_2=usual["text_encoder_2"], tokenizer=empty, tokenizer_2=empty))
    with pytest.raises(ModelFolderError, match="nowhere.safetensors \\(vae\\): not found"):
        load_model_set(None, transformer_file=usual["transformer"], need_text=False, need_image=False,
                       files=ModelFiles(vae=tmp_path / "nowhere.safetensors"))


@pytest.mark.parametrize("loader, wrong, message", [
    (load_vae_file, "clip_l.safetensors", "not a HunyuanVideo VAE file"),
    (load_llama_file, "hunyuan_video_vae_bf16.safetensors", "not the Llama text encoder"),
    (load_clip_file, "llava_llama3_fp16.safetensors", "not the CLIP-L text encoder"),
    (load_siglip_file, "clip_l.safetensors", "not the SigLIP image encoder"),
])
def test_a_file_of_another_model_is_refused_by_name(usual, loader, wrong, message):
    path = next(p for p in usual.values() if p.name == wrong)
    with pytest.raises(ModelFolderError, match=message) as caught:
        loader(path)
    assert wrong in str(caught.value)


def test_incomplete_and_unknown_files_say_what_is_wrong(usual, tmp_path):
    tensors = load_file(str(usual["vae"]))
    broken = tmp_path / "hunyuan_video_vae_bf16.safetensors"
    save_file({k: v for k, v in tensors.items() if "decoder.up.0." not in k}, str(broken))
    with pytest.raises(ModelFolderError, match="missing tensors: decoder.up_blocks.3"):  # ComfyUI's up.0
        load_vae_file(broken)
    clip = load_file(str(usual["text_encoder_2"]))
    wide = {k: torch.zeros(v.shape[0], 40) if k.endswith("token_embedding.weight") else v for k, v in clip.items()}
    save_file(wide, str(tmp_path / "clip_l.safetensors"))
    with pytest.raises(ModelFolderError, match="width 40 is not a model goan knows"):
        load_clip_file(tmp_path / "clip_l.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ModelFolderError, match="junk.safetensors: not a readable safetensors file"):
        load_llama_file(tmp_path / "junk.safetensors")
    shutil.rmtree(tmp_path)
