"""Sampling and generation: the KV-cached generate loop against a from-scratch greedy
decode that re-runs the full sequence every step, on both backends."""
import io

import mlx.core as mx
import numpy as np
import pytest
import torch

import mlx_models.generate as mgen
import mlx_models.models as mm
import torch_models.generate as tgen
import torch_models.models as tm
from shared.cli.generate import generate, resolve_checkpoint
from shared.engine.sampling import sample_next


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, -1.0, 2.9])
    assert sample_next(logits, 0.0, 1.0, np.random.default_rng(0)) == 1


def test_top_p_samples_only_the_nucleus_with_renormalised_frequencies():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs)
    rng = np.random.default_rng(0)
    draws = np.array([sample_next(logits, 1.0, 0.75, rng) for _ in range(4000)])
    # The nucleus for p=0.75 is {0, 1}: the smallest set whose mass (0.8) reaches 0.75.
    assert set(np.unique(draws)) == {0, 1}
    assert abs(np.mean(draws == 0) - 0.5 / 0.8) < 0.03


def test_temperature_sharpens():
    logits = np.log(np.array([0.6, 0.4]))
    rng = np.random.default_rng(1)
    cold = np.mean([sample_next(logits, 0.25, 1.0, rng) == 0 for _ in range(2000)])
    expected = 0.6 ** 4 / (0.6 ** 4 + 0.4 ** 4)   # p^(1/T), renormalised
    assert abs(cold - expected) < 0.03


class CharTokenizer:
    """A stand-in tokenizer: one id per character code (the plumbing, not SentencePiece)."""
    def bos_id(self): return 1
    def eos_id(self): return 2
    def encode(self, text): return [3 + (ord(c) % 90) for c in text]
    def decode(self, ids): return "".join(chr(ord("a") + (i % 26)) for i in ids)


@pytest.mark.parametrize("option,value,message", [
    ("--temperature", "nan", "--temperature must be >= 0"),
    ("--top-p", "7", "--top-p must be within (0, 1]"),
    ("--max-tokens", "-1", "--max-tokens must be >= 0"),
])
def test_bad_generation_options_are_one_line(capsys, option, value, message):
    from shared.cli.generate import main
    assert main("mlx", None, ["--checkpoint", "nowhere", option, value]) == 2
    assert message in capsys.readouterr().err


class ByteTokenizer:
    """One id per UTF-8 byte, decoded as SentencePiece decodes byte-fallback pieces: an
    incomplete character comes out as U+FFFD."""
    def bos_id(self): return 256
    def eos_id(self): return 257
    def encode(self, text): return list(text.encode())
    def decode(self, ids): return bytes(i for i in ids if i < 256).decode(errors="replace")


def test_streamed_text_is_the_decoded_text_when_characters_span_tokens():
    """Korean syllables are three bytes: printing after every token must not leave a
    replacement character behind, nor drop the syllable once its last byte arrives."""
    script = list("효력을 발휘".encode()) + [257]
    steps = iter(script)

    def next_logits(ids):
        logits = np.zeros(258)
        logits[next(steps)] = 1.0
        return logits
    out = io.StringIO()
    generate(next_logits, ByteTokenizer(), "국회는 ", max_tokens=50, max_length=100,
             temperature=0.0, top_p=1.0, seed=0, out=out)
    assert out.getvalue() == "국회는 효력을 발휘\n"


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_cached_generation_equals_full_recompute(tmp_path, tiny_lm_spec, backend):
    models = {"mlx": (mm, mgen), "torch": (tm, tgen)}
    models[backend][0].save_model(models[backend][0].build_model(tiny_lm_spec, seed=3), tmp_path / "ckpt")
    next_logits, spec = models[backend][1].load(tmp_path / "ckpt")
    stats = generate(next_logits, CharTokenizer(), "hello", max_tokens=15, max_length=64,
                     temperature=0.0, top_p=1.0, seed=0, out=io.StringIO())
    # Reference: the other backend, no cache, the whole sequence every step.
    other = tm if backend == "mlx" else mm
    model, _ = other.load_model(tmp_path / "ckpt")
    ids = [1] + CharTokenizer().encode("hello")
    for _ in range(15):
        if other is tm:
            with torch.no_grad():
                logits = model(torch.tensor([ids]))[0, -1].numpy()
        else:
            logits = np.array(model(mx.array([ids]))[0, -1])
        token = int(np.argmax(logits))
        if token == 2:
            break
        ids.append(token)
    assert stats["ids"] == ids


def test_resolve_checkpoint(tmp_path, tiny_lm_spec):
    from shared.errors import CheckpointError
    mm.save_model(mm.build_model(tiny_lm_spec), tmp_path / "run" / "checkpoints" / "step_00000010")
    assert resolve_checkpoint(tmp_path / "run").name == "step_00000010"
    mm.save_model(mm.build_model(tiny_lm_spec), tmp_path / "run" / "checkpoints" / "best")
    assert resolve_checkpoint(tmp_path / "run").name == "best"
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resolve_checkpoint(tmp_path)


def sentencepiece_model() -> bytes:
    import sentencepiece as spm
    lines = ["the cat sat on a mat", "hello world", "dogs ran far away"] * 30
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=40,
                                   hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   minloglevel=2)
    return out.getvalue()


def test_generate_says_why_it_stopped_and_which_checkpoint_it_used(tmp_path, tiny_lm_spec, capsys):
    """The real MLX model of a run without checkpoints/best; its EOS logit is forced up
    after three tokens (or down, to run into the context)."""
    import dataclasses

    import sentencepiece as spm
    from shared.cli.generate import main
    tokenizer = sentencepiece_model()
    vocab = spm.SentencePieceProcessor(model_proto=tokenizer).get_piece_size()
    spec = dataclasses.replace(tiny_lm_spec, vocab_size=vocab)
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_00000004"
    mm.save_model(mm.build_model(spec, seed=3), step)
    (step / "tokenizer.model").write_bytes(tokenizer)

    def loader(eos_after):
        def load(ckpt):
            next_logits, spec = mgen.load(ckpt)
            calls = []

            def scripted(ids):
                logits = next_logits(ids)
                calls.append(1)
                logits[2] = 1e9 if eos_after is not None and len(calls) > eos_after else -1e9
                return logits
            return scripted, spec
        return load

    argv = ["--checkpoint", str(run), "--temperature", "0"]
    assert main("mlx", loader(3), argv + ["--max-tokens", "10"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{run} has no checkpoints/best; using its newest checkpoint, {step}"
    assert err[1] == "(stopped at end-of-sequence after 3 tokens)"
    assert err[2].startswith("[mlx] prompt 1 tokens") and len(err) == 3

    assert main("mlx", loader(3), argv + ["--max-tokens", "3"]) == 0    # --max-tokens: no note
    assert "stopped" not in capsys.readouterr().err
    assert main("mlx", loader(None), argv + ["--max-tokens", "100"]) == 0
    assert "(stopped after 63 tokens: the model's context of 64 tokens is full)" in capsys.readouterr().err

    mm.save_model(mm.build_model(spec, seed=3), run / "checkpoints" / "best")
    (run / "checkpoints" / "best" / "tokenizer.model").write_bytes(tokenizer)
    assert main("mlx", loader(3), argv) == 0
    assert "newest" not in capsys.readouterr().err
