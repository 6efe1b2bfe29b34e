"""Model loading: the tiny set on disk, single-file transformers, config inference, errors, devices."""

import hashlib
import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, LlamaModel, SiglipVisionModel

from goan_core.models.devices import resolve_device, resolve_dtype
from goan_core.errors import InputError, ModelFolderError
from goan_core.models import IMAGE_PARTS, TEXT_PARTS, load_model_set, load_transformer_file, model_identity, is_on
from goan_core.models.identity import public_config
from goan_core.models.single_file import CONFIG_METADATA_KEY, infer_transformer_config
from goan_core.models.tiny import (
    FRAMEPACK_I2V_HY_CONFIG,
    TINY_TRANSFORMER_CONFIG,
    TINY_TRANSFORMER_FILE,
    build_tiny_models,
    write_tiny_models,
    write_transformer_file,
)


def transformer_inputs(seed: int = 0) -> dict:
    """One small FramePack call: 1 noisy latent frame at 8x8 with 1x/2x/4x clean context."""
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, 16, 1, 8, 8, generator=g),
        "timestep": torch.tensor([700.0]),
        "encoder_hidden_states": torch.randn(1, 6, 32, generator=g),
        "encoder_attention_mask": torch.ones(1, 6, dtype=torch.bool),
        "pooled_projections": torch.randn(1, 16, generator=g),
        "image_embeds": torch.randn(1, 16, 24, generator=g),
        "indices_latents": torch.tensor([19]),
        "guidance": torch.tensor([10000.0]),
        "latents_clean": torch.randn(1, 16, 2, 8, 8, generator=g),
        "indices_latents_clean": torch.tensor([0, 20]),
        "latents_history_2x": torch.randn(1, 16, 2, 8, 8, generator=g),
        "indices_latents_history_2x": torch.tensor([21, 22]),
        "latents_history_4x": torch.randn(1, 16, 16, 8, 8, generator=g),
        "indices_latents_history_4x": torch.arange(23, 39),
    }


def run(transformer) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**transformer_inputs(), return_dict=False)[0]


def file_hashes(root) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def copy_root(root, tmp_path):
    return shutil.copytree(root, tmp_path / "models")


# -- the tiny set ----------------------------------------------------------------------------------


def test_tiny_set_loads_through_the_real_loaders(tiny_models):
    assert isinstance(tiny_models.transformer, HunyuanVideoFramepackTransformer3DModel)
    assert isinstance(tiny_models.vae, AutoencoderKLHunyuanVideo)
    assert isinstance(tiny_models.text_encoder, LlamaModel)
    assert isinstance(tiny_models.text_encoder_2, CLIPTextModel)
    assert isinstance(tiny_models.image_encoder, SiglipVisionModel)
    assert tiny_models.tokenizer is not None and tiny_models.tokenizer_2 is not None
    assert tiny_models.feature_extractor is not None
    assert 200_000 < sum(p.numel() for p in tiny_models.transformer.parameters()) < 300_000
    assert not tiny_models.transformer.training
    for key, value in TINY_TRANSFORMER_CONFIG.items():
        assert tiny_models.transformer.config[key] == (list(value) if isinstance(value, tuple) else value)


def test_loaded_weights_equal_the_built_ones(tiny_models):
    built = build_tiny_models(seed=0)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "image_encoder"):
        expected, loaded = getattr(built, name).state_dict(), getattr(tiny_models, name).state_dict()
        assert expected.keys() == loaded.keys()
        assert all(torch.equal(expected[k], loaded[k]) for k in expected), name


def test_builds_are_identical_and_seeded():
    first, second, other = build_tiny_models(0), build_tiny_models(0), build_tiny_models(1)
    a, b, c = (m.transformer.state_dict() for m in (first, second, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_build_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    build_tiny_models(0)
    assert torch.equal(before, torch.get_rng_state())


def test_writing_twice_gives_identical_bytes(tiny_models_root, tmp_path):
    again = write_tiny_models(tmp_path / "again")
    assert file_hashes(again) == file_hashes(tiny_models_root)
    expected = {"transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                "image_encoder", "feature_extractor"}
    assert expected <= {p.name for p in again.iterdir() if p.is_dir()}
    assert (again / TINY_TRANSFORMER_FILE).is_file()
    assert list((again / "transformer").glob("*.safetensors"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
def test_transformer_file_is_deterministic(tiny_models, tmp_path, dtype):
    one = write_transformer_file(tiny_models.transformer, tmp_path / "one.safetensors", dtype)
    two = write_transformer_file(tiny_models.transformer, tmp_path / "two.safetensors", dtype)
    assert one.read_bytes() == two.read_bytes()


def test_complete_root_is_not_rewritten(tiny_models_root):
    stamps = {p: p.stat().st_mtime_ns for p in tiny_models_root.rglob("*") if p.is_file()}
    assert write_tiny_models(tiny_models_root) == tiny_models_root
    assert stamps == {p: p.stat().st_mtime_ns for p in tiny_models_root.rglob("*") if p.is_file()}


def test_stale_or_damaged_root_is_rewritten(tiny_models_root, tmp_path):
    root = copy_root(tiny_models_root, tmp_path)
    marker = next(root.glob(".goan_tiny*"))
    marker.write_text(json.dumps({"version": 0}))
    shutil.rmtree(root / "vae")
    write_tiny_models(root)
    assert file_hashes(root) == file_hashes(tiny_models_root)


def test_unsupported_file_dtype_is_refused(tiny_models, tmp_path):
    with pytest.raises(InputError, match="float16"):
        write_transformer_file(tiny_models.transformer, tmp_path / "x.safetensors", torch.float16)


# -- single-file transformers ----------------------------------------------------------------------


def test_fp32_file_is_bit_identical_to_the_folder(tiny_models, tiny_models_root):
    from_file = load_transformer_file(tiny_models_root / TINY_TRANSFORMER_FILE, torch.float32)
    folder, single = tiny_models.transformer.state_dict(), from_file.state_dict()
    assert folder.keys() == single.keys()
    assert all(torch.equal(folder[k], single[k]) for k in folder)
    assert torch.equal(run(from_file), run(tiny_models.transformer))
    assert model_identity(from_file) == model_identity(tiny_models.transformer)


def test_model_set_takes_the_transformer_file(tiny_models_root):
    models = load_model_set(
        tiny_models_root,
        transformer_file=tiny_models_root / TINY_TRANSFORMER_FILE,
        need_text=False,
        need_image=False,
    )
    assert models.transformer is not None and models.vae is not None
    assert models.text_encoder is None and models.image_encoder is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_quantised_files_match_a_model_upcast_from_the_same_weights(tiny_models, tmp_path, dtype):
    path = write_transformer_file(tiny_models.transformer, tmp_path / "t.safetensors", dtype)
    stored = load_file(str(path))
    matrices = {t.dtype for t in stored.values() if t.ndim >= 2}
    assert matrices == {dtype}
    reference = HunyuanVideoFramepackTransformer3DModel.from_config(tiny_models.transformer.config).eval()
    reference.load_state_dict({k: t.float() for k, t in stored.items()})
    loaded = load_transformer_file(path, torch.float32, weight_dtype="fp32")  # auto keeps fp8: test_weight_storage.py
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.equal(run(loaded), run(reference))
    assert not torch.equal(run(loaded), run(tiny_models.transformer))  # the quantisation is real


def test_file_loads_in_the_requested_dtype(tiny_models_root):
    model = load_transformer_file(tiny_models_root / TINY_TRANSFORMER_FILE, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def strip_metadata(source, target):
    save_file(load_file(str(source)), str(target))
    with safe_open(str(target), framework="pt") as f:
        assert CONFIG_METADATA_KEY not in (f.metadata() or {})
    return target


def test_config_is_inferred_from_shapes_without_metadata(tiny_models, tiny_models_root, tmp_path):
    path = strip_metadata(tiny_models_root / TINY_TRANSFORMER_FILE, tmp_path / "bare.safetensors")
    model = load_transformer_file(path, torch.float32)
    assert model_identity(model) == model_identity(tiny_models.transformer)
    assert torch.equal(run(model), run(tiny_models.transformer))


def test_real_framepack_config_is_inferred_from_shapes():
    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel(**FRAMEPACK_I2V_HY_CONFIG)
    shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    inferred = infer_transformer_config(shapes, "FramePackI2V_HY.safetensors")
    with torch.device("meta"):
        rebuilt = HunyuanVideoFramepackTransformer3DModel.from_config(inferred)
    assert model_identity(rebuilt) == model_identity(model)


def test_unknown_head_size_without_metadata_is_a_clear_error(tmp_path):
    config = dict(TINY_TRANSFORMER_CONFIG, num_attention_heads=4, attention_head_dim=8,
                  rope_axes_dim=(2, 2, 4))
    model = HunyuanVideoFramepackTransformer3DModel(**config)
    path = tmp_path / "odd.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(ModelFolderError, match="odd.safetensors.*head size 8"):
        load_transformer_file(path)
    # With goan's metadata the same weights load.
    write_transformer_file(model, path, torch.float32)
    assert load_transformer_file(path).config.attention_head_dim == 8


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\x80\x04\x95pickle", b"\xff" * 64])
def test_non_safetensors_file_is_refused(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFolderError, match="model.safetensors.*safetensors"):
        load_transformer_file(path)


def test_missing_transformer_file(tmp_path):
    with pytest.raises(ModelFolderError, match="nope.safetensors.*not found"):
        load_transformer_file(tmp_path / "nope.safetensors")


def test_missing_and_unexpected_tensors_are_named(tiny_models_root, tmp_path):
    source = tiny_models_root / TINY_TRANSFORMER_FILE
    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(source))
    del tensors["proj_out.bias"]
    tensors["extra.weight"] = torch.zeros(2)
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ModelFolderError, match="broken.safetensors") as error:
        load_transformer_file(path)
    assert "proj_out.bias" in str(error.value) and "extra.weight" in str(error.value)


def test_wrong_shapes_are_named(tiny_models_root, tmp_path):
    tensors = load_file(str(tiny_models_root / TINY_TRANSFORMER_FILE))
    tensors["proj_out.bias"] = torch.zeros(3)
    path = tmp_path / "shapes.safetensors"
    save_file(tensors, str(path), metadata={CONFIG_METADATA_KEY: json.dumps(TINY_TRANSFORMER_CONFIG)})
    with pytest.raises(ModelFolderError, match="shapes.safetensors.*wrong shapes: proj_out.bias"):
        load_transformer_file(path)


def test_a_file_that_is_not_a_transformer_is_refused(tiny_models_root, tmp_path):
    vae_weights = tiny_models_root / "vae" / "diffusion_pytorch_model.safetensors"
    path = strip_metadata(vae_weights, tmp_path / "vae.safetensors")
    with pytest.raises(ModelFolderError, match="vae.safetensors.*x_embedder"):
        load_transformer_file(path)


def test_bad_metadata_config_is_refused(tiny_models_root, tmp_path):
    tensors = load_file(str(tiny_models_root / TINY_TRANSFORMER_FILE))
    for text, message in (("{not json", "not valid JSON"), ('{"frobnicate": 1}', "frobnicate")):
        path = tmp_path / "meta.safetensors"
        save_file(tensors, str(path), metadata={CONFIG_METADATA_KEY: text})
        with pytest.raises(ModelFolderError, match=f"meta.safetensors.*{message}"):
            load_transformer_file(path)


# -- models folder errors --------------------------------------------------------------------------


def test_missing_pieces_are_all_listed(tiny_models_root, tmp_path):
    root = copy_root(tiny_models_root, tmp_path)
    shutil.rmtree(root / "text_encoder_2")
    (root / "tokenizer" / "tokenizer.json").unlink()
    (root / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelFolderError) as error:
        load_model_set(root)
    message = str(error.value)
    assert str(root) in message
    for piece in ("text_encoder_2/", "tokenizer/tokenizer.json", "vae/*.safetensors"):
        assert piece in message
    assert "image_encoder/" not in message.split("missing")[1].split(";")[0]
    assert "flux_redux_bfl" in message  # says which layout is expected


def test_only_needed_parts_are_required(tiny_models_root, tmp_path):
    root = copy_root(tiny_models_root, tmp_path)
    for name in TEXT_PARTS + IMAGE_PARTS:
        shutil.rmtree(root / name)
    models = load_model_set(root, need_text=False, need_image=False)
    assert models.transformer is not None and models.tokenizer is None


def test_missing_transformer_folder_suggests_the_file(tiny_models_root, tmp_path):
    root = copy_root(tiny_models_root, tmp_path)
    shutil.rmtree(root / "transformer")
    with pytest.raises(ModelFolderError, match=r"transformer/.*single transformer \.safetensors"):
        load_model_set(root)
    assert load_model_set(root, transformer_file=root / TINY_TRANSFORMER_FILE).transformer is not None


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_root_that_is_not_a_folder(tmp_path, kind):
    root = tmp_path / "models"
    if kind == "file":
        root.write_text("hello")
    with pytest.raises(ModelFolderError, match="models.*not a folder"):
        load_model_set(root)


def test_wrong_model_class_in_a_folder(tiny_models_root, tmp_path):
    root = copy_root(tiny_models_root, tmp_path)
    shutil.rmtree(root / "text_encoder")
    shutil.copytree(root / "image_encoder", root / "text_encoder")
    with pytest.raises(ModelFolderError, match=r"text_encoder.*siglip_vision_model.*Llama"):
        load_model_set(root)


def test_wrong_diffusers_class_in_a_folder(tiny_models_root, tmp_path):
    root = copy_root(tiny_models_root, tmp_path)
    shutil.rmtree(root / "vae")
    shutil.copytree(root / "transformer", root / "vae")
    with pytest.raises(ModelFolderError, match=r"vae.*HunyuanVideoFramepackTransformer3DModel.*VAE"):
        load_model_set(root)


def test_wrong_image_processor_is_refused(tiny_models_root, tmp_path):
    root = copy_root(tiny_models_root, tmp_path)
    config_path = root / "feature_extractor" / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, image_processor_type="CLIPImageProcessor")))
    with pytest.raises(ModelFolderError, match="feature_extractor.*CLIPImageProcessor.*SiglipImageProcessor"):
        load_model_set(root)


def test_weights_that_do_not_fit_are_refused(tiny_models_root, tmp_path):
    root = copy_root(tiny_models_root, tmp_path)
    weights = root / "text_encoder_2" / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors[sorted(tensors)[0]]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(ModelFolderError, match="text_encoder_2.*missing or wrongly shaped"):
        load_model_set(root)


def test_unreadable_config_is_named(tiny_models_root, tmp_path):
    root = copy_root(tiny_models_root, tmp_path)
    (root / "vae" / "config.json").write_text("{broken")
    with pytest.raises(ModelFolderError, match=r"vae/config.json.*cannot read"):
        load_model_set(root)


# -- devices and identity --------------------------------------------------------------------------


def test_is_on_matches_the_device_and_an_index_less_device_matches_any_index():
    with torch.device("meta"):
        module = torch.nn.Linear(2, 2)
    assert is_on(module, "meta") and not is_on(module, "cpu")


def test_model_identity_tells_models_apart(tiny_models):
    identity = model_identity(tiny_models.transformer)
    assert identity["transformer_class"] == "HunyuanVideoFramepackTransformer3DModel"
    assert len(identity["config_sha256"]) == 64
    with torch.device("meta"):
        big = HunyuanVideoFramepackTransformer3DModel(**FRAMEPACK_I2V_HY_CONFIG)
    assert model_identity(big)["config_sha256"] != identity["config_sha256"]
    assert all(not key.startswith("_") for key in public_config(tiny_models.transformer))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected and resolve_device("auto").type == expected
    with pytest.raises(InputError, match="banana"):
        resolve_device("banana")
    with pytest.raises(InputError, match="cuda:99.*not available"):
        resolve_device("cuda:99")


def test_resolve_dtype():
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    assert resolve_dtype("float32", "cuda") == torch.float32
    with pytest.raises(InputError, match="int8"):
        resolve_dtype("int8", "cpu")


def _accelerator_error(message, code=None):
    error = torch.AcceleratorError(message)
    if code is not None:
        error.error_code = code
    return error


@pytest.mark.parametrize("error, oom", [
    (torch.OutOfMemoryError("CUDA out of memory"), True),
    (_accelerator_error("CUDA error: out of memory", 2), True),
    (_accelerator_error("CUDA error: out of memory"), True),
    (_accelerator_error("CUDA error: an illegal memory access was encountered", 700), False),
    (RuntimeError("out of memory"), False),  # not a device error: goan does not guess from a message alone
])
def test_out_of_memory_errors_are_recognised_and_pass_through_the_loader(tiny_models_root, monkeypatch, error, oom):
    from goan_core.models import is_out_of_memory
    from goan_core.models.loading import PARTS, load_part

    assert is_out_of_memory(error) is oom

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(PARTS["image_encoder"].loader, "from_pretrained", fail)
    with pytest.raises(type(error) if oom else ModelFolderError):
        load_part(tiny_models_root / "image_encoder", "image_encoder", torch.float32)
