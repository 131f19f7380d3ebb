"""Checkpoints move between backends bit for bit, in fp32 and bf16."""

import ml_dtypes
import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_map

import mlx_models.models as mm
import torch_models.models as tm
from shared.engine.checkpoint import load_checkpoint
from shared.errors import CheckpointError
from tests.helpers import bits, round_trip_mlx_torch_mlx


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mlx_torch_mlx_round_trip_is_bit_identical(tmp_path, tiny_lm_spec, dtype):
    model = mm.build_model(tiny_lm_spec, seed=3)
    if dtype == "bfloat16":
        model.update(tree_map(lambda p: p.astype(mx.bfloat16), model.parameters()))
    original, _, torch_model, _ = round_trip_mlx_torch_mlx(model, tmp_path)
    assert all(v.dtype == np.dtype(getattr(ml_dtypes, dtype, dtype)) for v in original.values())
    expected_torch = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    assert all(p.dtype == expected_torch for p in torch_model.parameters())


def test_torch_checkpoint_loads_in_mlx_with_same_logits(tmp_path, tiny_lm_spec):
    torch_model = tm.build_model(tiny_lm_spec, seed=4)
    tm.save_model(torch_model, tmp_path / "ckpt")
    mlx_model, config = mm.load_model(tmp_path / "ckpt")
    assert config["family"] == "lm" and config["model"]["hidden_size"] == 64
    x = np.arange(12, dtype=np.int32).reshape(1, 12)
    a = np.array(mlx_model(mx.array(x)))
    b = torch_model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_mismatched_checkpoint_lists_every_problem(tmp_path, tiny_lm_spec):
    mm.save_model(mm.build_model(tiny_lm_spec), tmp_path / "ckpt")
    # Pretend the config changed after training (seed 004's warning): wider MLP, one
    # more layer. Loading must say exactly which parameters disagree.
    import yaml
    cfg_path = tmp_path / "ckpt" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["model"]["intermediate_size"] = 128
    cfg["model"]["num_layers"] = 3
    cfg_path.write_text(yaml.safe_dump(cfg))
    (tmp_path / "ckpt" / "manifest.json").unlink()  # else its hash check names the edit first
    for backend in (mm, tm):
        with pytest.raises(CheckpointError) as err:
            backend.load_model(tmp_path / "ckpt")
        msg = str(err.value)
        assert "missing: layers.2.attention.q_proj.weight" in msg
        assert "shape: layers.0.mlp.gate_proj.weight: checkpoint" in msg
        assert "(96, 64), model expects (128, 64)" in msg


def test_unexpected_and_missing_names_are_reported(tmp_path, tiny_lm_spec):
    from shared.engine.checkpoint import check_weights
    from shared.specs.lm import lm_init_weights, lm_manifest
    weights = lm_init_weights(tiny_lm_spec)
    weights["layers.0.attention.q_bias"] = np.zeros(4, np.float32)
    del weights["norm.weight"]
    with pytest.raises(CheckpointError) as err:
        check_weights(weights, lm_manifest(tiny_lm_spec))
    assert "missing: norm.weight" in str(err.value)
    assert "unexpected: layers.0.attention.q_bias" in str(err.value)


def test_bad_checkpoint_directories(tmp_path, tiny_lm_spec):
    with pytest.raises(CheckpointError, match="does not exist"):
        mm.load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        tm.load_model(tmp_path / "empty")
    mm.save_model(mm.build_model(tiny_lm_spec), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="differs from the file that was saved"):
        mm.load_model(tmp_path / "ckpt")     # the manifest's hash check comes first
    (tmp_path / "ckpt" / "manifest.json").unlink()     # as an older version saved it
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        mm.load_model(tmp_path / "ckpt")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, tiny_lm_spec):
    from shared.engine.checkpoint import save_checkpoint
    model = mm.build_model(tiny_lm_spec, seed=5)
    mm.save_model(model, tmp_path / "ckpt")
    before = bits(load_checkpoint(tmp_path / "ckpt")[0])
    with pytest.raises(Exception):
        save_checkpoint(tmp_path / "ckpt", {"w": np.zeros(3, dtype=object)}, {"family": "lm"})
    assert bits(load_checkpoint(tmp_path / "ckpt")[0]) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left


def test_a_checkpoint_directory_gets_the_usual_mode(tmp_path, tiny_lm_spec):
    """Built in a temporary directory (mode 0700), it is renamed with the umask's mode."""
    import os
    umask = os.umask(0o022)
    try:
        mm.save_model(mm.build_model(tiny_lm_spec, seed=5), tmp_path / "ckpt")
    finally:
        os.umask(umask)
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o755


def test_our_safetensors_files_read_back_with_the_safetensors_library(tmp_path):
    from shared.engine.checkpoint import load_safetensors, save_safetensors
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32),
               "b": np.arange(7, dtype=np.int64), "c": rng.standard_normal(4).astype(np.float16),
               "d": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
               "scalar": np.array(7, np.int64)}
    save_safetensors(tmp_path / "x.safetensors", tensors, metadata={"format": "pt"})
    ours = load_safetensors(tmp_path / "x.safetensors")
    assert bits(ours) == bits(tensors)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in tensors.items()}
    # Read back through the library's torch reader, a path independent of the numpy one ours uses.
    from safetensors import safe_open
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        for name, array in tensors.items():
            t = f.get_tensor(name)
            if name == "d":
                assert t.dtype == torch.bfloat16
                assert np.array_equal(t.view(torch.uint16).numpy(), array.view(np.uint16))
            else:
                assert np.array_equal(t.numpy(), array)


def test_every_bf16_and_special_f32_bit_pattern_round_trips(tmp_path):
    """All 65536 bf16 bit patterns (NaN payloads, signalling NaNs, subnormals, -0, inf)
    and special float32 values survive save/load bit for bit: checked against the raw
    bits of the arrays we wrote and, independently, against torch's bf16/f32 tensors
    read from the same file by safetensors.torch."""
    from safetensors.torch import load_file as torch_load_file

    from shared.engine.checkpoint import load_safetensors, save_safetensors
    bf16_bits = np.arange(2 ** 16, dtype=np.uint16).reshape(256, 256)
    f32_bits = np.array([0, 0x80000000, 0x00000001, 0x807FFFFF, 0x7F800000, 0xFF800000,
                         0x7FC00000, 0x7FA00001, 0xFFFFFFFF, 0x3F800000, 0x3F800001],
                        dtype=np.uint32)
    f32_bits = np.concatenate([f32_bits, np.random.default_rng(1).integers(
        0, 2 ** 32, size=1000, dtype=np.uint32)])
    tensors = {"bf16": bf16_bits.view(ml_dtypes.bfloat16), "f32": f32_bits.view(np.float32)}
    path = tmp_path / "bits.safetensors"
    save_safetensors(path, tensors)

    loaded = load_safetensors(path)
    assert loaded["bf16"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert loaded["f32"].dtype == np.float32
    assert loaded["bf16"].shape == (256, 256) and loaded["f32"].shape == f32_bits.shape
    assert np.array_equal(loaded["bf16"].view(np.uint16), bf16_bits)
    assert np.array_equal(loaded["f32"].view(np.uint32), f32_bits)

    ref = torch_load_file(str(path))
    assert ref["bf16"].dtype == torch.bfloat16 and ref["f32"].dtype == torch.float32
    assert np.array_equal(ref["bf16"].view(torch.int16).numpy().view(np.uint16), bf16_bits)
    assert np.array_equal(ref["f32"].view(torch.int32).numpy().view(np.uint32), f32_bits)


def test_inference_loaders_name_the_family_they_need(tmp_path, tiny_lm_spec):
    """A CLI given another family's checkpoint says which family it got and which it runs."""
    import mlx_models.separate
    import mlx_models.stream
    import torch_models.generate
    import torch_models.separate
    mm.save_model(mm.build_model(tiny_lm_spec, seed=6), tmp_path / "lm")
    for load in (mlx_models.separate.load, torch_models.separate.load):
        with pytest.raises(CheckpointError, match="holds a 'lm' model, not a separator"):
            load(tmp_path / "lm")
    with pytest.raises(CheckpointError, match="holds a 'lm' model, not EchoStream"):
        mlx_models.stream.load(tmp_path / "lm")
    assert torch_models.generate.load(tmp_path / "lm")[1] == tiny_lm_spec
