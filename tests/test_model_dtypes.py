"""Per-model compute dtypes (issue 10, point 3): each role in its own dtype, the fp32 output head, the identity.

FramePack computes the transformer in bf16 and the VAE and the encoders in fp16 on CUDA; the CPU
stays fp32. The simulated legacy GPU (every bf16 `F.conv3d` raises, as on CUDA below compute
capability 8.0) runs `generate --tiny --dtype bfloat16 --conv-fp32 force` end to end.
"""

import copy
import json

import pytest
import torch
from torch import nn

from goan_core.errors import InputError
from goan_core.jobs import goan_encoders
from goan_core.models import (ModelDtypes, Transformer, apply_fp32_output, configure_precision, fp32_output_applied,
                              load_model_set, load_transformer_file, model_dtypes, resolve_dtype, role_dtype,
                              weight_storage_name, write_transformer_file)
from goan_core.models.precision import Fp32AdaNorm, Fp32Linear, bf16_conv3d_missing
from goan_core.models.storage import CastLinear
from goan_core.models.tiny import TINY_TRANSFORMER_FILE
from goan_core.resumefile import read_resume_file

from test_cli import cli_env, fast, run_main  # noqa: F401  (fixture)
from test_precision import legacy_conv3d, mock_cuda, run, tiny_transformer  # noqa: F401  (fixtures)

CPU, F32, BF16, F16, FP8 = torch.device("cpu"), torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn


# -- resolving the dtypes: one place ------------------------------------------------------------------


def test_defaults_per_role_like_framepack():
    assert model_dtypes(CPU) == ModelDtypes(F32, F32, F32, F32)
    assert model_dtypes("cuda") == ModelDtypes(transformer=BF16, vae=F16, text=F16, image=F16)
    assert model_dtypes("mps") == ModelDtypes.uniform(F32)
    assert resolve_dtype(None, "cuda") == BF16 and role_dtype("vae", "cuda", "auto") == F16


def test_overrides_per_role():
    dtypes = model_dtypes(CPU, transformer="bfloat16", vae="float16", encoder="bf16")
    assert dtypes == ModelDtypes(transformer=BF16, vae=F16, text=BF16, image=BF16)
    assert dtypes.names() == {"transformer": "bfloat16", "vae": "float16", "text": "bfloat16", "image": "bfloat16"}
    with pytest.raises(InputError, match="unknown dtype"):
        model_dtypes(CPU, vae="int8")
    with pytest.raises(ValueError):
        role_dtype("unet", CPU)


def test_legacy_gpu_refuses_a_bf16_vae_and_defaults_to_fp16(mock_cuda):
    mock_cuda(7, 5)
    assert model_dtypes("cuda") == ModelDtypes(transformer=BF16, vae=F16, text=F16, image=F16)
    assert role_dtype("vae", "cuda", "float16") == F16 and role_dtype("text", "cuda", "bfloat16") == BF16
    with pytest.raises(InputError, match=r"RTX 2080.*no bf16 Conv3d.*--vae-dtype"):
        role_dtype("vae", "cuda", "bfloat16")
    mock_cuda(8, 6, "NVIDIA GeForce RTX 3090")
    assert role_dtype("vae", "cuda", "bfloat16") == BF16 and bf16_conv3d_missing("cuda") is None


def test_bf16_conv3d_probe_on_the_cpu(legacy_conv3d):
    assert "no bf16 Conv3d (probe" in bf16_conv3d_missing(CPU)
    with pytest.raises(InputError, match="float16 or auto"):
        role_dtype("vae", CPU, "bfloat16")


# -- loading each part in its role's dtype ------------------------------------------------------------


def test_load_model_set_loads_each_role_in_its_dtype(tiny_models_root):
    dtypes = ModelDtypes(transformer=BF16, vae=F16, text=BF16, image=F16)
    models = load_model_set(tiny_models_root, dtype=dtypes)
    assert models.transformer.dtype == BF16 and models.vae.dtype == F16
    assert models.text_encoder.dtype == models.text_encoder_2.dtype == BF16 and models.image_encoder.dtype == F16
    from_file = load_model_set(tiny_models_root, transformer_file=tiny_models_root / TINY_TRANSFORMER_FILE,
                               dtype=dtypes, need_text=False, need_image=False)
    assert from_file.transformer.dtype == BF16 and from_file.vae.dtype == F16
    encoders = goan_encoders(models, CPU, dtypes)
    assert (encoders.prompt.dtype, encoders.image.dtype, encoders.vae.dtype) == (BF16, F16, F16)
    assert encoders.identity() == {"vae_dtype": "float16", "text_dtype": "bfloat16", "image_dtype": "float16"}
    assert encoders.identity(embeddings=False) == {"vae_dtype": "float16"}


def test_one_dtype_still_means_every_model(tiny_models):
    assert {tiny_models.transformer.dtype, tiny_models.vae.dtype, tiny_models.text_encoder.dtype,
            tiny_models.image_encoder.dtype} == {F32}


# -- the fp32 output head (FramePack's high_quality_fp32_output_for_inference) -------------------------


def test_fp32_output_head_computes_like_framepack():
    """bf16 model: the head gets the same bf16 hidden states and computes norm_out + proj_out in fp32."""
    plain = tiny_transformer().to(BF16)
    head = copy.deepcopy(plain)
    assert apply_fp32_output(head) == ["norm_out", "proj_out"] and apply_fp32_output(head) == []
    assert isinstance(head.norm_out, Fp32AdaNorm) and isinstance(head.proj_out, Fp32Linear)
    assert fp32_output_applied(head) and not fp32_output_applied(plain)
    seen = {}
    plain.norm_out.register_forward_hook(lambda m, args, out: seen.update(inputs=args))
    head.proj_out.register_forward_hook(lambda m, args, out: seen.update(output=out))
    assert run(plain, BF16).dtype == BF16
    result = run(head, BF16)
    assert result.dtype == F32 and torch.isfinite(result).all()
    x, temb = seen["inputs"]
    reference = copy.deepcopy(plain.proj_out).float()(copy.deepcopy(plain.norm_out).float()(x.float(), temb.float()))
    assert torch.equal(seen["output"], reference)


def test_fp32_output_changes_nothing_in_fp32():
    plain = tiny_transformer()
    head = copy.deepcopy(plain)
    apply_fp32_output(head)
    assert torch.equal(run(plain, F32), run(head, F32))


def test_fp32_output_survives_moves_and_loads_and_keeps_keys():
    model = tiny_transformer().to(BF16)
    keys = list(model.state_dict())
    apply_fp32_output(model)
    model.to(BF16).half().to(CPU)
    head = [*model.norm_out.parameters(), *model.proj_out.parameters()]
    assert all(p.dtype == F32 for p in head)
    assert model.transformer_blocks[0].ff.net[2].weight.dtype == F16  # the rest follows as usual
    assert list(model.state_dict()) == keys
    model.load_state_dict({k: v.to(BF16) for k, v in model.state_dict().items()}, assign=True)
    assert all(p.dtype == F32 for p in [*model.norm_out.parameters(), *model.proj_out.parameters()])


def test_fp32_output_composes_with_fp8_storage(tiny_models, tmp_path):
    path = write_transformer_file(tiny_models.transformer, tmp_path / "fp8.safetensors", FP8)
    model = load_transformer_file(path, BF16)
    assert isinstance(model.proj_out, CastLinear) and model.proj_out.weight.dtype == FP8
    fp8_weight = model.proj_out.weight.detach().clone()
    reference = copy.deepcopy(model)
    apply_fp32_output(model)
    assert model.proj_out.weight.dtype == F32 and torch.equal(model.proj_out.weight, fp8_weight.float())
    assert weight_storage_name(model) == weight_storage_name(reference) == "float8_e4m3fn"
    out = run(model, BF16)
    assert out.dtype == F32 and torch.isfinite(out).all()
    configure_precision(model, "force", CPU, BF16)  # composes with the Conv3d fallback too
    assert torch.equal(run(model, BF16), out)


def test_fp32_output_refuses_a_model_without_the_head():
    with pytest.raises(InputError, match="output head"):
        apply_fp32_output(nn.Linear(2, 2))
    assert not fp32_output_applied(nn.Linear(2, 2))


# -- identity ------------------------------------------------------------------------------------------


def test_transformer_identity_records_the_dtype_choices():
    model = tiny_transformer().to(BF16)
    plain = Transformer(model, CPU, BF16).identity()
    assert plain["compute_dtype"] == "bfloat16" and plain["fp32_output"] == "False"
    apply_fp32_output(model)
    assert Transformer(model, CPU, BF16).identity()["fp32_output"] == "True"


def _identity(path):
    return read_resume_file(path).state.model_identity


def test_cli_records_every_dtype_and_a_resume_says_when_the_vae_differs(cli_env, tmp_path, capsys):
    code, stdout, stderr = run_main(fast(cli_env, tmp_path / "a.mp4", "--pause-at", "1:1", "--resume-dir",
                                         str(tmp_path)), capsys)
    assert code == 0, stderr
    resume_file = stdout.split("resume file: ")[1].split()[0]
    identity = _identity(resume_file)
    assert {k: identity[k] for k in ("compute_dtype", "fp32_output", "conv_fp32", "vae_dtype", "text_dtype",
                                     "image_dtype")} == {"compute_dtype": "float32", "fp32_output": "True",
                                                         "conv_fp32": "False", "vae_dtype": "float32",
                                                         "text_dtype": "float32", "image_dtype": "float32"}
    code, _, stderr = run_main(["resume", resume_file, "--tiny", "--out", str(tmp_path / "b.mp4"),
                                "--vae-dtype", "float16", "--no-fp32-output", "--pause-at", "1:2"], capsys)
    assert code == 0, stderr
    assert "vae_dtype: file 'float32', loaded 'float16'" in stderr and "fp32_output: file 'True'" in stderr
    assert "text_dtype" not in stderr  # the embeddings came from the file, made by the original encoders
    newest = max(tmp_path.rglob("*.goan_resume"), key=lambda p: p.stat().st_mtime_ns)
    assert _identity(newest)["vae_dtype"] == "float16" and _identity(newest)["text_dtype"] == "float32"


# -- the simulated legacy GPU (issue 10, "Done when") --------------------------------------------------


def test_simulated_legacy_gpu_runs_bf16_end_to_end(cli_env, tmp_path, capsys, legacy_conv3d):  # noqa: F811
    """Every bf16 F.conv3d raises; the bf16 transformer runs with fp32 patch embeds, the VAE in fp32."""
    out = tmp_path / "legacy.mp4"
    code, stdout, stderr = run_main(fast(cli_env, out, "--dtype", "bfloat16", "--conv-fp32", "force",
                                         "--resume-dir", str(tmp_path)), capsys)
    assert code == 0, stderr
    assert out.is_file() and f"wrote {out}" in stdout
    identity = _identity(next(tmp_path.rglob("*.goan_resume")))
    assert (identity["compute_dtype"], identity["conv_fp32"], identity["vae_dtype"]) == ("bfloat16", "True",
                                                                                        "float32")


def test_simulated_legacy_gpu_refuses_a_bf16_vae_before_loading(cli_env, tmp_path, capsys,
                                                                 legacy_conv3d):  # noqa: F811
    out = tmp_path / "x.mp4"
    code, _, stderr = run_main(fast(cli_env, out, "--dtype", "bfloat16", "--conv-fp32", "force",
                                    "--vae-dtype", "bfloat16"), capsys)
    assert code == 2 and not out.exists()
    assert stderr.count("\n") == 1 and "goan: error: the VAE cannot compute in bfloat16" in stderr
    assert "--vae-dtype" in stderr and "float16" in stderr


def _cpu_fp16_conv3d() -> bool:
    try:
        nn.functional.conv3d(torch.zeros(1, 1, 1, 1, 1, dtype=F16), torch.zeros(1, 1, 1, 1, 1, dtype=F16))
    except (RuntimeError, NotImplementedError):
        return False
    return True


@pytest.mark.skipif(not _cpu_fp16_conv3d(), reason="this torch build has no fp16 Conv3d on the CPU")
def test_simulated_legacy_gpu_with_an_fp16_vae_and_encoders(cli_env, tmp_path, capsys, legacy_conv3d):  # noqa: F811
    """FramePack's CUDA choice (fp16 VAE and encoders, bf16 transformer) on the simulated legacy GPU."""
    out = tmp_path / "fp16.mp4"
    code, stdout, stderr = run_main(fast(cli_env, out, "--dtype", "bfloat16", "--conv-fp32", "force",
                                         "--vae-dtype", "float16", "--encoder-dtype", "float16",
                                         "--resume-dir", str(tmp_path)), capsys)
    assert code == 0, stderr
    assert out.is_file() and f"wrote {out}" in stdout
    identity = _identity(next(tmp_path.rglob("*.goan_resume")))
    assert (identity["vae_dtype"], identity["text_dtype"], identity["image_dtype"]) == ("float16",) * 3


# -- the node loaders ----------------------------------------------------------------------------------


def test_loader_nodes_auto_means_the_role_default(pack, host):
    from goan_pack.nodes import NODE_CLASS_MAPPINGS as M
    from goan_pack.nodes import loaders

    required = M["GoanTransformerLoader"].INPUT_TYPES()["required"]
    assert list(required)[-1] == "fp32_output" and required["fp32_output"][0] == "BOOLEAN"
    assert required["fp32_output"][1]["default"] is True
    (transformer,) = M["GoanTransformerLoader"]().execute("[diffusers] goan_tiny", "bfloat16", "off", "auto")
    assert transformer.identity()["fp32_output"] == "True" and transformer.identity()["compute_dtype"] == "bfloat16"
    (off,) = M["GoanTransformerLoader"]().execute("[diffusers] goan_tiny", "auto", "off", "auto", False)
    assert off.identity()["fp32_output"] == "False"
    assert [loaders._dtype("auto", torch.device("cuda"), role) for role in ("transformer", "vae", "text", "image")] \
        == [BF16, F16, F16, F16]


def test_workflows_carry_the_fp32_output_default():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json")):
        nodes = [n for n in json.loads(path.read_text())["nodes"] if n["type"] == "GoanTransformerLoader"]
        assert all(n["widgets_values"][-1] is True for n in nodes), path


from nodes_helpers import comfy_models, host, pack  # noqa: E402,F401  (fixtures)
