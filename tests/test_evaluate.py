"""The evaluate command: museval's BSS Eval v4 and MDX uSDR for separators, and perplexity
counted as Hugging Face's guide counts it for LMs. Every number is checked against an
independent computation: museval called directly (plus numpy's nanmedian), a float64
numpy formula, and the guide's own loop run with transformers' LlamaForCausalLM."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")         # nothing here may touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

import mlx_models.evaluate as mlx_evaluate  # noqa: E402
import torch_models.evaluate as torch_evaluate  # noqa: E402
from shared.cli.evaluate import main  # noqa: E402
from shared.eval.bss_eval import score_track, summarize, table  # noqa: E402
from shared.eval.perplexity import perplexity, sliding_windows  # noqa: E402

try:
    import museval                           # the eval extra, in dev; needs ffmpeg to import
except (ImportError, RuntimeError):
    museval = None
needs_museval = pytest.mark.skipif(museval is None, reason="museval (pip install -e '.[eval]') "
                                                             "and ffmpeg are not installed")

BACKENDS = {"mlx": mlx_evaluate, "torch": torch_evaluate}


def run_main(backend: str, argv: list[str]) -> tuple[int, str, str]:
    module = BACKENDS[backend]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(backend, module.build, module.RUNNERS, argv)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ separation scores
def museval_reference(references, estimates, rate):
    """museval's own per-frame metrics, frames stored as museval's TrackStore stores them
    (an infinite frame is nan), its four arrays (stems, frames)."""
    sdr_, isr, sir, sar = museval.evaluate(references.transpose(0, 2, 1), estimates.transpose(0, 2, 1),
                                           win=rate, hop=rate)
    return {name: np.where(np.isinf(v), np.nan, v)
            for name, v in {"SDR": sdr_, "ISR": isr, "SIR": sir, "SAR": sar}.items()}


@needs_museval
def test_summary_equals_museval_and_the_mdx_formula():
    # Two mono stems keep BSS Eval's solve small (its cost grows with (stems x channels)^3;
    # the end-to-end test below checks four stereo stems against museval too).
    rate, stems = 2000, ("vocals", "drums")
    rng = np.random.default_rng(0)
    tracks, truth = [], []
    for t, (seconds, noise) in enumerate([(3.5, 0.3), (3.0, 0.1), (4.0, 0.6)]):
        length = int(seconds * rate)
        refs = rng.standard_normal((2, 1, length))
        refs[1] *= 0.5
        if t == 0:
            refs[0, :, rate:2 * rate] = 0.0          # a silent frame: museval scores it nan
        ests = refs + noise * rng.standard_normal(refs.shape) + 0.2 * refs[::-1]   # leakage
        refs, ests = refs.astype(np.float32), ests.astype(np.float32)
        tracks.append(score_track(f"track {t}", refs, ests, rate, stems))
        truth.append((refs, ests))
    summary = summarize(tracks)

    per_track = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t, (refs, ests) in enumerate(truth):
            frames = museval_reference(refs.astype(np.float64), ests.astype(np.float64), rate)
            per_track[t] = {m: np.nanmedian(v, axis=1) for m, v in frames.items()}
    for s, stem in enumerate(stems):
        for metric in ("SDR", "SIR", "ISR", "SAR"):
            medians = [per_track[t][metric][s] for t in range(3)]
            assert summary["stems"][stem][metric] == pytest.approx(np.median(medians), abs=2e-5)
            for t in range(3):
                assert summary["tracks"][f"track {t}"][stem][metric] == pytest.approx(medians[t], abs=2e-5)
        # uSDR: the MDX challenge's SDR per track and stem in float64, mean over tracks.
        usdr = []
        for refs, ests in truth:
            s64, e64 = refs[s].astype(np.float64), ests[s].astype(np.float64)
            usdr.append(10 * np.log10((np.sum(s64 ** 2) + 1e-7) / (np.sum((s64 - e64) ** 2) + 1e-7)))
        assert summary["stems"][stem]["uSDR"] == pytest.approx(np.mean(usdr), abs=1e-9)
    assert tracks[0].store.scores["targets"][0]["frames"][1]["metrics"]["SDR"] != \
        tracks[0].store.scores["targets"][0]["frames"][1]["metrics"]["SDR"]      # nan, stored
    lines = table(summary).splitlines()
    assert lines[0].split() == ["stem", "uSDR", "SDR", "SIR", "ISR", "SAR"]
    assert [line.split()[0] for line in lines[1:]] == ["vocals", "drums", "mean"]


@needs_museval
def test_a_silent_stem_is_left_out_and_the_others_scored_as_museval_would():
    rate, stems = 2000, ("vocals", "drums", "bass")
    rng = np.random.default_rng(1)
    refs = rng.standard_normal((3, 1, 5000))
    refs[2] = 0.0                                    # no bass in this track
    ests = refs + 0.3 * rng.standard_normal(refs.shape) + 0.2 * refs[[1, 0, 0]]
    track = score_track("t", refs, ests, rate, stems)
    assert track.left_out == {"bass": "silent reference"}
    frames = museval_reference(refs[:2], ests[:2], rate)      # museval on the scorable stems
    summary = summarize([track])["stems"]
    for s, stem in enumerate(stems[:2]):
        for metric, values in frames.items():
            assert summary[stem][metric] == pytest.approx(np.nanmedian(values[s]), abs=2e-5)
    assert all(np.isnan(summary["bass"][m]) for m in ("SDR", "SIR", "ISR", "SAR"))
    assert len(track.store.scores["targets"][2]["frames"]) == 2       # 5000 samples: 2 whole frames
    assert np.isfinite(summary["bass"]["uSDR"])                       # MDX's eps: defined when silent


# ------------------------------------------------------------------ a tiny separator
def tiny_separator(run: Path, sample_rate: int = 2000, segment_seconds: float = 0.5) -> Path:
    """An untrained TF-Locoformer saved as RUN/checkpoints/best, with the data settings a
    trained run's config carries."""
    from mlx_models.models import build_model, save_model
    from shared.specs.tflocoformer import TFLocoformerSpec

    spec = TFLocoformerSpec(n_fft=64, hop=32, emb_dim=8, n_heads=2, n_layers=1,
                            ffn_hidden_dim=[16, 16], norm_groups=4)
    save_model(build_model(spec, seed=0), run / "checkpoints" / "best",
               {"data": {"sample_rate": sample_rate, "segment_seconds": segment_seconds}})
    return run


def tiny_musdb(root: Path, tracks: int = 1, seconds: float = 1.0, rate: int = 2000) -> Path:
    from shared.data.synth_musdb import generate

    generate(root, tracks=tracks + 2, test_tracks=tracks, valid_tracks=1, seconds=seconds,
             sample_rate=rate, seed=0)
    return root


@needs_museval
def test_a_missing_stem_is_named_before_any_work(tmp_path):
    run, data = tiny_separator(tmp_path / "run"), tiny_musdb(tmp_path / "musdb", tracks=2)
    track = sorted((data / "test").iterdir())[1]
    (track / "bass.wav").unlink()
    code, out, err = run_main("torch", ["--checkpoint", str(run), "--data", str(data)])
    assert code == 2 and err.count("\n") == 1, err
    assert f"track '{track.name}'" in err and "missing bass.wav" in err
    assert not (run / "eval").exists()
    code, _, err = run_main("torch", ["--checkpoint", str(run), "--data", str(tmp_path / "nothing")])
    assert code == 2 and "nothing/test not found" in err


def test_museval_missing_names_the_extra_and_ffmpeg(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_museval(name, *args, **kwargs):
        if name == "museval":
            raise ImportError("No module named 'museval'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_museval)
    run, data = tiny_separator(tmp_path / "run"), tiny_musdb(tmp_path / "musdb")
    code, _, err = run_main("mlx", ["--checkpoint", str(run), "--data", str(data)])
    assert code == 2 and err.count("\n") == 1, err
    assert "pip install 'workbench[eval]'" in err and "ffmpeg" in err
    assert not (run / "eval").exists()


@pytest.mark.parametrize("argv,message", [
    ([], "give one of --data DIR"),
    (["--data", "d", "--text", "t"], "give one of --data DIR"),
    (["--text", "t", "--manifest", "m"], "or --manifest FILE"),
    (["--manifest", "nowhere.tsv"], "--manifest nowhere.tsv: no such file"),
    (["--manifest", "m", "--chunk-ms", "5"], "--chunk-ms sizes must be >= 10 ms"),
    (["--data", "d", "--tracks", "0"], "--tracks must be >= 1"),
    (["--data", "d", "--overlap", "0.95"], "--overlap must be within 0..0.9"),
    (["--text", "nowhere.txt"], "--text nowhere.txt: no such file"),
])
def test_options_are_checked_before_any_work(argv, message):
    code, _, err = run_main("torch", ["--checkpoint", "nowhere"] + argv)
    assert code == 2 and message in err, err


def test_a_separator_is_not_scored_on_text_nor_an_lm_on_music(tmp_path, tiny_lm_spec):
    from mlx_models.models import build_model, save_model

    run = tiny_separator(tmp_path / "run")
    text = tmp_path / "t.txt"
    text.write_text("hello\n")
    code, _, err = run_main("mlx", ["--checkpoint", str(run), "--text", str(text)])
    assert code == 2 and "holds a 'tflocoformer' model, not an LM (--text)" in err
    save_model(build_model(tiny_lm_spec), tmp_path / "lm")
    code, _, err = run_main("mlx", ["--checkpoint", str(tmp_path / "lm"), "--data", str(tmp_path)])
    assert code == 2 and "holds a 'lm' model, not a separator (--data)" in err


@pytest.mark.slow
@needs_museval
def test_evaluate_command_end_to_end(tmp_path):
    """Both backends on a one-track folder: the same estimates (one checkpoint), museval's
    JSON that museval's own tools read back to the summary, refusal to overwrite."""
    run, data = tiny_separator(tmp_path / "run"), tiny_musdb(tmp_path / "musdb", tracks=1, seconds=1.5)
    out = subprocess.run([sys.executable, "-m", "torch_models.evaluate", "--checkpoint", str(run),
                          "--data", str(data)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    results = run / "eval" / "best" / "test"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["tracks"] == 1 and summary["split"] == "test"
    assert out.stdout.splitlines()[2].split() == ["stem", "uSDR", "SDR", "SIR", "ISR", "SAR"]
    assert "1/1" in out.stderr and "track" in out.stderr           # the progress bar
    # museval reads the per-track JSON back to the same aggregate.
    store = museval.EvalStore()
    store.add_eval_dir(results)
    aggregated = store.agg_frames_tracks_scores()
    for stem in ("vocals", "drums", "bass", "other"):
        for metric in ("SDR", "SIR", "ISR", "SAR"):
            ours = summary["stems"][stem][metric]                       # null where nan
            assert (np.nan if ours is None else ours) == pytest.approx(float(aggregated[(stem, metric)]),
                                                                       abs=1e-9, nan_ok=True)
    # The track re-scored independently: separated again in-process, museval called directly.
    from shared.audio.chunked import separate
    from shared.data.musdb import MusdbDataset
    track = MusdbDataset(data, "test", 2000, 2).load(0)
    model = mlx_evaluate.build(*_spec_and_weights(run))
    estimate = separate(track["mixture"], mlx_evaluate.RUNNERS["separation"](model), 1000)
    # This short synthetic track has no vocals: museval refuses a silent reference, so the
    # command leaves it out (and says so) and scores the other three together.
    assert np.all(track["sources"][0] == 0) and summary["left_out"] == {track["name"]: {"vocals": "silent reference"}}
    assert "vocals not scored by BSS Eval (silent reference" in out.stderr
    frames = museval_reference(track["sources"][1:].astype(np.float64), estimate[1:].astype(np.float64), 2000)
    for s, stem in enumerate(("drums", "bass", "other")):
        for metric in ("SDR", "SIR", "ISR", "SAR"):
            assert summary["stems"][stem][metric] == pytest.approx(np.nanmedian(frames[metric][s]), abs=1e-3)
    assert summary["stems"]["vocals"]["SDR"] is None            # nan, written as null

    # Results are kept unless --force; with it, mlx replaces them.
    before = (results / "summary.json").read_bytes()
    code, _, err = run_main("mlx", ["--checkpoint", str(run), "--data", str(data)])
    assert code == 2 and "already holds results" in err and "--force" in err
    assert (results / "summary.json").read_bytes() == before
    code, stdout, err = run_main("mlx", ["--checkpoint", str(run), "--data", str(data), "--force"])
    assert code == 0, err
    assert json.loads((results / "summary.json").read_text())["backend"] == "mlx"
    assert sorted(p.name for p in (results / "test").iterdir()) == [f"{track['name']}.json"]


def _spec_and_weights(run: Path):
    from shared.engine.checkpoint import open_checkpoint
    _, spec, _, weights, _ = open_checkpoint(run / "checkpoints" / "best")
    return spec, weights


# ------------------------------------------------------------------ perplexity
def guide_perplexity(model, ids: np.ndarray, max_length: int, stride: int) -> float:
    """The loop of https://huggingface.co/docs/transformers/perplexity, as written there."""
    import torch

    encodings = torch.from_numpy(ids.astype(np.int64))[None]
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            neg_log_likelihood = model(input_ids, labels=target_ids).loss
        num_valid_tokens = (target_ids != -100).sum().item()
        num_loss_tokens = num_valid_tokens - target_ids.size(0)
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return float(torch.exp(nll_sum / n_tokens))


def test_windows_count_what_the_guide_counts():
    # 100 tokens, windows of 32 moved by 12: the first scores 31, the rest 12 each, weighted 11.
    windows = sliding_windows(100, 32, 12)
    assert [(w.begin, w.end) for w in windows] == [(0, 32), (12, 44), (24, 56), (36, 68), (48, 80),
                                                   (60, 92), (72, 100)]
    assert [(w.scored, w.weight) for w in windows] == [(31, 31)] + [(12, 11)] * 5 + [(8, 7)]
    assert [(w.scored, w.weight) for w in sliding_windows(70, 32, 32)] == [(31, 31), (31, 31), (5, 5)]
    with pytest.raises(ValueError, match="stride must be within 1..max_length"):
        sliding_windows(100, 32, 33)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny random LM with a SentencePiece tokenizer, as our checkpoint and exported to
    Hugging Face; held-out text; the token stream evaluate reads from it."""
    import random

    import mlx_models.models as mm
    from shared.data.lm_text import load_tokenizer, read_paragraphs, token_stream, train_tokenizer
    from shared.interop.export_hf import export
    from shared.specs.lm import LMSpec

    root = tmp_path_factory.mktemp("lm")
    rng = random.Random(0)
    words = "the cat sat on a mat while dogs ran far away saying hello world many times".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(300)]
    tokenizer = train_tokenizer(lines, 300, "bpe", root / "tokenizer.model")
    spec = LMSpec(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=64, max_seq_length=48, rope_theta=500.0)
    ckpt = mm.save_model(mm.build_model(spec, seed=3), root / "ckpt")
    (ckpt / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    hf = export(ckpt, root / "hf")
    held_out = root / "held_out.txt"
    held_out.write_text("\n".join(lines[:12]) + "\n", encoding="utf-8")
    ids = token_stream(read_paragraphs([held_out]), load_tokenizer(tokenizer))
    return ckpt, hf, held_out, ids


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_perplexity_equals_the_guides_loop_in_transformers(tiny_lm, backend, tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    ckpt, hf, held_out, ids = tiny_lm
    assert len(ids) > 2 * 48
    reference = transformers.LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    for source, max_length, stride in [(ckpt, 48, 20), (hf, 32, 32)]:
        expected = guide_perplexity(reference, ids, max_length, stride)
        out = tmp_path / f"{source.name}-{stride}"
        code, stdout, err = run_main(backend, ["--checkpoint", str(source), "--text", str(held_out),
                                               "--max-length", str(max_length), "--stride", str(stride),
                                               "--out", str(out)])
        assert code == 0, err
        result = json.loads((out / "perplexity.json").read_text())
        assert result["perplexity"] == pytest.approx(expected, rel=1e-4)
        assert result["stream_tokens"] == len(ids)
        assert stdout.startswith(f"perplexity {result['perplexity']:.4f}")
    # The same figure straight from the shared loop, without the command.
    module = BACKENDS[backend]
    from shared.engine.checkpoint import open_checkpoint
    _, spec, _, weights, _ = open_checkpoint(ckpt)
    direct = perplexity(ids, module.RUNNERS["generation"](module.build(spec, weights)), 48, 20)
    assert direct.perplexity == pytest.approx(guide_perplexity(reference, ids, 48, 20), rel=1e-4)


def test_perplexity_options_name_the_problem(tiny_lm, tmp_path):
    ckpt, hf, held_out, _ = tiny_lm
    code, _, err = run_main("torch", ["--checkpoint", str(ckpt), "--text", str(held_out), "--max-length", "64"])
    assert code == 2 and "--max-length 64 exceeds the model's context (48 tokens" in err
    code, _, err = run_main("torch", ["--checkpoint", str(ckpt), "--text", str(held_out), "--stride", "49"])
    assert code == 2 and "--stride 49 exceeds --max-length 48" in err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "perplexity.json").write_text("{}")
    code, _, err = run_main("torch", ["--checkpoint", str(ckpt), "--text", str(held_out), "--out",
                                      str(tmp_path / "out")])
    assert code == 2 and "already holds results (perplexity.json)" in err
    assert (tmp_path / "out" / "perplexity.json").read_text() == "{}"
