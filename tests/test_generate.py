"""Sampling and generation: the KV-cached generate loop against a from-scratch greedy
decode that re-runs the full sequence every step, on both backends; MLX's pipelined
decoder against an unpipelined loop; each backend's top-p against the numpy reference."""
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
from shared.engine.sampling import nucleus_probs, sample_next


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
    out = io.StringIO()
    generate(lambda ids: next(steps), ByteTokenizer(), "국회는 ", max_tokens=50, max_length=100,
             out=out)
    assert out.getvalue() == "국회는 효력을 발휘\n"


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_cached_generation_equals_full_recompute(tmp_path, tiny_lm_spec, backend):
    models = {"mlx": (mm, mgen), "torch": (tm, tgen)}
    models[backend][0].save_model(models[backend][0].build_model(tiny_lm_spec, seed=3), tmp_path / "ckpt")
    start, spec = models[backend][1].load(tmp_path / "ckpt")
    stats = generate(start(0.0, 1.0, 0), CharTokenizer(), "hello", max_tokens=15, max_length=64,
                     out=io.StringIO())
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


def test_greedy_mlx_equals_greedy_torch(tmp_path, tiny_lm_spec):
    """One checkpoint, both CLIs' decoders, greedy: the same token ids."""
    mm.save_model(mm.build_model(tiny_lm_spec, seed=5), tmp_path / "ckpt")
    ids = {}
    for name, gen in (("mlx", mgen), ("torch", tgen)):
        start, spec = gen.load(tmp_path / "ckpt")
        ids[name] = generate(start(0.0, 1.0, 0), CharTokenizer(), "greedy", max_tokens=40,
                             max_length=64, out=io.StringIO())["ids"]
    assert ids["mlx"] == ids["torch"] and len(ids["mlx"]) > 20


def unpipelined_greedy(model, prompt, n):
    """The plain loop: a forward pass, its argmax read back, the next forward pass."""
    cache, ids, out = model.make_cache(), mx.array(prompt), []
    for _ in range(n):
        out.append(mx.argmax(model(ids, cache)[0, -1]).item())
        ids = mx.array([[out[-1]]])
    return out


def test_pipelined_mlx_step_returns_the_unpipelined_tokens(tiny_lm_spec):
    model = mm.build_model(tiny_lm_spec, seed=3)
    model.eval()
    prompt = np.array([[1, 5, 9, 12, 40]], np.int32)

    def run(step, n, feed=lambda i, token: token):
        tokens = [step(prompt)]
        for i in range(n - 1):
            tokens.append(step(np.array([[feed(i, tokens[-1])]], np.int32)))
        return tokens
    reference = unpipelined_greedy(model, prompt, 30)
    assert run(mgen.decoder(model), 30) == reference
    assert run(mgen.decoder(model, pipeline=False), 30) == reference
    # Sampling: the same key chain whether or not the next step is queued.
    sampled = [run(mgen.decoder(model, 1.0, 0.9, seed, pipeline=p), 30) for p in (True, False)
               for seed in (0, 1)]
    assert sampled[0] == sampled[2] and sampled[1] == sampled[3] and sampled[0] != sampled[1]
    # Fed other tokens than it returned, the pipelined decoder drops what it queued.
    other = lambda i, token: (token + 7) % tiny_lm_spec.vocab_size if i % 3 == 0 else token
    assert run(mgen.decoder(model), 30, other) == run(mgen.decoder(model, pipeline=False), 30, other)


def fixed_logits():
    """Logits whose nucleus boundaries (top_p 0.8) are clear of float32 rounding."""
    logits = np.random.default_rng(7).normal(0, 2, 64)
    ranked = np.sort(np.exp(logits / 0.7) / np.exp(logits / 0.7).sum())[::-1]
    assert np.min(np.abs(np.cumsum(ranked) - 0.8)) > 1e-3
    return logits.astype(np.float32)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_top_p_draws_only_from_the_numpy_nucleus(backend):
    logits = fixed_logits()
    reference = nucleus_probs(logits, 0.7, 0.8)
    nucleus = set(np.flatnonzero(reference))
    assert 2 < len(nucleus) < 64
    if backend == "mlx":
        def draws(top_p, n):   # n rows at once, over a few keys of the chain of each of 5 seeds
            out = []
            for seed in range(5):
                pick = mgen.token_picker(0.7, top_p, seed)
                for _ in range(4):
                    out += np.array(pick(mx.array(np.tile(logits, (n // 20, 1))))).tolist()
            return np.array(out)
    else:
        def draws(top_p, n):
            out = []
            for seed in range(5):
                g = torch.Generator().manual_seed(seed)
                out += [tgen.pick_token(torch.from_numpy(logits), 0.7, top_p, g) for _ in range(n // 5)]
            return np.array(out)
    drawn = draws(0.8, 4000)
    assert set(drawn.tolist()) <= nucleus
    frequencies = np.bincount(drawn, minlength=64) / len(drawn)
    assert np.max(np.abs(frequencies - reference)) < 0.04    # and renormalised on it
    assert set(draws(1e-6, 400).tolist()) == {int(np.argmax(logits))}


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
    """The real MLX model of a run without checkpoints/best; its step answers EOS after
    three tokens (or never: an EOS becomes token 3, which the pipelined decoder, having
    queued the EOS, must then be fed instead)."""
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
            start, spec = mgen.load(ckpt)

            def scripted_start(temperature, top_p, seed):
                step, calls = start(temperature, top_p, seed), []

                def scripted(ids):
                    token = step(ids)
                    calls.append(token)
                    if eos_after is not None and len(calls) > eos_after:
                        return 2
                    return 3 if token == 2 else token
                return scripted
            return scripted_start, spec
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
