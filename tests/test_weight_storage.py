"""fp8 stays fp8: matmul weights stored as the file holds them (or as --weight-dtype says), cast per layer at use.

Every result is `torch.equal` to the old path: the same file loaded with every tensor upcast to the
compute dtype (`upcast_reference`, the code goan had before, kept here as the reference).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import HunyuanVideoFramepackTransformer3DModel
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from goan_core.errors import InputError
from goan_core.models import (WEIGHT_DTYPE_CHOICES, Transformer, configure_precision, identity_mismatch,
                              load_model_set, load_transformer_file, storage_bytes, weight_storage_name,
                              write_transformer_file)
from goan_core.models import single_file
from goan_core.models.precision import Fp32Conv3d
from goan_core.models.storage import CastConv3d, CastLinear, matmul_weight_names, resolve_weight_dtype
from goan_core.params import JobParams
from goan_core.sampling import Engine

from job_helpers import new_job_state
from test_cli import cli_env, fast, run_main  # noqa: F401  (fixture)
from test_models import transformer_inputs
from test_precision import legacy_conv3d  # noqa: F401  (fixture)

CPU, F32, BF16, FP8 = torch.device("cpu"), torch.float32, torch.bfloat16, torch.float8_e4m3fn
COMPUTE = [F32, BF16]


def upcast_reference(path, dtype):
    """goan's loader before fp8 storage: every tensor upcast to `dtype`, then load_state_dict(assign=True)."""
    model = load_transformer_file(path, F32)  # only for its config
    with torch.device("meta"):
        reference = HunyuanVideoFramepackTransformer3DModel.from_config(model.config)
    reference.load_state_dict({k: t.to(dtype) for k, t in load_file(str(path)).items()}, strict=True, assign=True)
    return reference.eval()


def inputs(dtype):
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in transformer_inputs().items()}


def forward(model, dtype):
    with torch.no_grad():
        return model(**inputs(dtype), return_dict=False)[0]


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weight_files")
    model = tiny_models.transformer
    return {dtype: write_transformer_file(model, folder / f"{str(dtype)[6:]}.safetensors", dtype)
            for dtype in (F32, BF16, FP8)}


def linear_and_conv(model):
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv3d))]


# -- (a) what is stored how --------------------------------------------------------------------------


@pytest.mark.parametrize("compute", COMPUTE)
def test_fp8_file_keeps_its_matmul_weights_fp8(files, compute):
    model = load_transformer_file(files[FP8], compute)  # weight_dtype auto
    layers = linear_and_conv(model)
    assert layers and all(m.weight.dtype == FP8 for m in layers)
    assert all(type(m) in (CastLinear, CastConv3d) for m in layers)
    others = [t for name, t in model.named_parameters() if name not in matmul_weight_names(model)]
    assert others and {t.dtype for t in others} == {compute}  # biases, norms: the compute dtype as before
    assert weight_storage_name(model) == "float8_e4m3fn"
    file_bytes = files[FP8].stat().st_size
    assert storage_bytes(model) < storage_bytes(upcast_reference(files[FP8], compute))
    assert storage_bytes(model) <= file_bytes * (1.05 if compute == BF16 else 1.2)


@pytest.mark.parametrize("file_dtype", [F32, BF16])
def test_auto_on_other_files_loads_as_before(files, file_dtype):
    model = load_transformer_file(files[file_dtype], F32)
    assert {p.dtype for p in model.parameters()} == {F32}
    assert not any(isinstance(m, (CastLinear, CastConv3d)) for m in model.modules())
    assert torch.equal(forward(model, F32), forward(upcast_reference(files[file_dtype], F32), F32))


# -- (b) forward equality ----------------------------------------------------------------------------


@pytest.mark.parametrize("compute", COMPUTE)
def test_fp8_forward_equals_the_upcast_path(files, compute):
    stored = load_transformer_file(files[FP8], compute)
    reference = upcast_reference(files[FP8], compute)
    out = forward(stored, compute)
    assert out.dtype == compute and torch.isfinite(out.float()).all()
    assert torch.equal(out, forward(reference, compute))


def test_moves_and_dtype_conversions_keep_fp8(files):
    model = load_transformer_file(files[FP8], F32)
    model.to("cpu")
    model.to(BF16)
    assert all(m.weight.dtype == FP8 for m in linear_and_conv(model))
    assert torch.equal(forward(model, BF16), forward(upcast_reference(files[FP8], BF16), BF16))


def test_conv_fp32_fallback_on_top_of_fp8(files, legacy_conv3d):  # noqa: F811
    model = load_transformer_file(files[FP8], BF16)
    assert configure_precision(model, "force", CPU, BF16)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all(type(m) is Fp32Conv3d and m.weight.dtype == F32 for m in convs)
    assert all(m.weight.dtype == FP8 for m in model.modules() if isinstance(m, nn.Linear))
    reference = upcast_reference(files[FP8], BF16)
    configure_precision(reference, "force", CPU, BF16)
    assert torch.equal(forward(model, BF16), forward(reference, BF16))


# -- (c) a whole tiny job ----------------------------------------------------------------------------


def demo_image(h=64, w=72):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("compute", COMPUTE)
def test_engine_sections_with_fp8_storage_equal_the_upcast_path(tiny_models, files, compute):
    params = JobParams(prompt="a red fox runs through snow", seconds=0.8, lws=3, steps=3, mode="backward",
                       resolution=64, seed=7)
    results = []
    for model in (load_transformer_file(files[FP8], compute), upcast_reference(files[FP8], compute)):
        state, _ = new_job_state(tiny_models, params, demo_image(), job_id="same")
        engine = Engine(model, CPU, compute)
        for _ in range(params.steps + 1):  # a whole section and the first step of the next
            engine.step(state)
        results.append(state)
    stored, reference = results
    assert stored.section == reference.section == 1
    assert torch.equal(stored.history_latents, reference.history_latents)
    assert torch.isfinite(stored.history_latents).all()
    assert torch.equal(stored.sampler.x, reference.sampler.x)


# -- (d) explicit weight dtypes ----------------------------------------------------------------------


def test_bf16_weights_from_an_fp8_file_upcast(files):
    model = load_transformer_file(files[FP8], F32, "bf16")
    assert {m.weight.dtype for m in linear_and_conv(model)} == {BF16}
    assert weight_storage_name(model) == "bfloat16"
    assert torch.equal(forward(model, F32), forward(upcast_reference(files[FP8], F32), F32))
    fp32 = load_transformer_file(files[FP8], F32, "fp32")
    assert {p.dtype for p in fp32.parameters()} == {F32}
    assert not any(isinstance(m, (CastLinear, CastConv3d)) for m in fp32.modules())


@pytest.mark.parametrize("compute", COMPUTE)
def test_fp8_weights_from_a_bf16_file_equal_the_fp8_rounded_file(files, tmp_path, compute):
    model = load_transformer_file(files[BF16], compute, "fp8_e4m3fn")
    assert {m.weight.dtype for m in linear_and_conv(model)} == {FP8}
    rounded = write_transformer_file(load_transformer_file(files[BF16], F32), tmp_path / "rounded.safetensors", FP8)
    assert torch.equal(forward(model, compute), forward(upcast_reference(rounded, compute), compute))


def test_fp8_weights_from_an_fp32_file_are_the_fp8_file_bytes(files):
    model = load_transformer_file(files[F32], F32, "fp8_e4m3fn")
    fp8_file = load_file(str(files[FP8]))
    state = model.state_dict()
    for name in matmul_weight_names(model):
        assert state[name].dtype == FP8
        assert torch.equal(state[name].view(torch.uint8), fp8_file[name].view(torch.uint8)), name


def test_weight_dtype_names():
    from goan_core.cli.parser import WEIGHT_DTYPE_CHOICES as CLI_CHOICES

    assert WEIGHT_DTYPE_CHOICES == CLI_CHOICES == ("auto", "fp8_e4m3fn", "bf16", "fp16", "fp32")
    assert resolve_weight_dtype("auto") is None and resolve_weight_dtype("float8_e4m3fn") == FP8
    assert resolve_weight_dtype("fp16") == torch.float16
    with pytest.raises(InputError, match="unknown weight dtype"):
        resolve_weight_dtype("int4")


def test_transformer_folder_takes_a_weight_dtype(tiny_models_root, files):
    models = load_model_set(tiny_models_root, need_text=False, need_image=False, weight_dtype="fp8_e4m3fn")
    # The folder is fp32: its matmul weights rounded to fp8 are the fp8 file's (whose 1-d tensors are bf16).
    assert {m.weight.dtype for m in linear_and_conv(models.transformer)} == {FP8}
    for name in matmul_weight_names(models.transformer):
        assert torch.equal(models.transformer.state_dict()[name].float(), load_file(str(files[FP8]))[name].float())


# -- identity ----------------------------------------------------------------------------------------


def test_identity_records_the_weight_dtype(files):
    fp8 = Transformer(load_transformer_file(files[FP8], F32), CPU, F32).identity()
    upcast = Transformer(load_transformer_file(files[FP8], F32, "fp32"), CPU, F32).identity()
    assert fp8["weight_dtype"] == "float8_e4m3fn" and upcast["weight_dtype"] == "float32"
    assert "weight_dtype" in identity_mismatch(fp8, upcast)
    assert identity_mismatch(fp8, dict(fp8)) is None


# -- (e) the CLI -------------------------------------------------------------------------------------


def test_cli_generates_with_fp8_weights(cli_env, files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "fp8.mp4"
    code, stdout, stderr = run_main(fast(cli_env, out, "--transformer", str(files[FP8]), "--weight-dtype", "auto"),
                                    capsys)
    assert code == 0, stderr
    assert out.is_file() and f"wrote {out}" in stdout


def test_cli_refuses_an_unknown_weight_dtype(cli_env, tmp_path, capsys):  # noqa: F811
    code, _, stderr = run_main(fast(cli_env, tmp_path / "x.mp4", "--weight-dtype", "int4"), capsys)
    assert code == 2 and "--weight-dtype" in stderr


# -- (f) loading reads each tensor once and keeps fp8 tensors as read --------------------------------


def test_single_file_load_reads_each_tensor_once_without_copies(files, monkeypatch):
    reads, returned = {}, {}
    real_open = single_file.safe_open

    class Counting:
        def __init__(self, *args, **kwargs):
            self.inner = real_open(*args, **kwargs)

        def __enter__(self):
            self.handle = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def get_tensor(self, key):
            reads[key] = reads.get(key, 0) + 1
            tensor = self.handle.get_tensor(key)
            returned[key] = (tensor.data_ptr(), tensor.dtype)
            return tensor

    monkeypatch.setattr(single_file, "safe_open", Counting)
    model = load_transformer_file(files[FP8], BF16)
    state = model.state_dict()
    assert reads.keys() == state.keys() and set(reads.values()) == {1}
    for key, tensor in state.items():  # what the file holds in the wanted dtype is installed as read
        pointer, dtype = returned[key]
        if dtype == tensor.dtype:
            assert tensor.data_ptr() == pointer, key


def test_cast_linear_is_f_linear_on_the_cast_weight():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    layer.weight.data = layer.weight.data.to(FP8)
    layer.__class__ = CastLinear
    x = torch.randn(2, 8)
    assert torch.equal(layer(x), F.linear(x, layer.weight.float(), layer.bias))


# -- the node ------------------------------------------------------------------------------------------


def test_loader_node_weight_dtype_widget(pack, host):
    from goan_pack.nodes import NODE_CLASS_MAPPINGS as M

    required = M["GoanTransformerLoader"].INPUT_TYPES()["required"]
    # weight_dtype was appended after conv_fp32, then fp32_output after it (tests/test_model_dtypes.py)
    assert list(required)[-2:] == ["weight_dtype", "fp32_output"] and required["weight_dtype"][1]["default"] == "auto"
    (transformer,) = M["GoanTransformerLoader"]().execute("[diffusers] goan_tiny", "float32", "off", "fp8_e4m3fn")
    assert transformer.identity()["weight_dtype"] == "float8_e4m3fn"
    out = forward(transformer.model, F32)
    assert out.dtype == F32 and torch.isfinite(out).all()


from nodes_helpers import comfy_models, host, pack  # noqa: E402,F401  (fixtures)
