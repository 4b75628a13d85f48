"""Property tests (Hypothesis) at the pipeline boundary: any prompt, any sampling arguments, one of two outcomes.

Either a valid batch, uint8 (B, S, S, 3), or a clear refusal: a ValueError (ConfigError is one) or TypeError with a
one-line message, or the sampler's FloatingPointError when extreme but finite settings (guidance 1e308) overflow the
logits. Never another exception type, never a hang (a SIGALRM guard fails the example after 60 s). Prompts cover
arbitrary unicode, control and zero-width characters, NUL and very long text; numbers cover nan, inf, negatives,
huge values and wrong types. A tiny random `ci` pipeline (4x4 grid, 16 px) is built once, no training.
"""
import contextlib
import math
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from minimuse.cli import main
from minimuse.pipeline import load_pipeline

S, L = 16, 16  # the ci preset: 16 px images, a 4x4 token grid
PROPS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pipe(ckpt):
    return load_pipeline(ckpt)


@contextlib.contextmanager
def no_hang(seconds=60):
    def fail(*_):
        raise AssertionError(f"pipeline call took more than {seconds} s")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def call(pipe, prompts, **kwargs):
    """The image batch, or the refusal (an exception of an allowed type with a one-line message)."""
    try:
        with no_hang():
            images = pipe(prompts, **kwargs)
    except (ValueError, TypeError, FloatingPointError) as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        if isinstance(e, FloatingPointError):
            assert "non-finite" in msg
        return e
    B = 1 if isinstance(prompts, str) else len(prompts)
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape == (B, S, S, 3)
    return images


# Characters the MiniLM tokenizer drops, mixed with real words: many draws encode to nothing, many do not.
INVISIBLE = ["", " ", "\t", "\n", "\r", "\x00", "\x07", "\x1b", "\x7f", "\u200b", "\u200c", "\u200d", "\u2060",
             "\ufeff", "\u00ad", "\u3000", "\u2028", "\u0301"]
WORDS = ["a", "red", "circle", "two", "blue", "squares", "é", "三", "🙂", "left of"]
prompt_text = st.one_of(
    st.text(max_size=40),                                                         # any unicode but lone surrogates
    st.lists(st.sampled_from(INVISIBLE + WORDS), max_size=12).map("".join),
    st.lists(st.sampled_from(INVISIBLE), max_size=12).map("".join),               # only what the tokenizer drops
    st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn"]), max_size=20),
    st.text(min_size=300, max_size=3000),                                         # far past text.max_length
)


@PROPS
@given(prompt=prompt_text)
def test_any_prompt_draws_or_is_refused_as_empty_exactly_when_it_encodes_to_nothing(pipe, prompt):
    out = call(pipe, prompt, num_steps=2)
    empty = pipe.text_encoder.content_token_count([prompt]) == [0]
    if empty:  # it would encode exactly like "": refused, by name
        assert isinstance(out, ValueError) and "empty prompt" in str(out)
    else:
        assert isinstance(out, np.ndarray), out


@PROPS
@given(prompts=st.one_of(
    st.lists(prompt_text, max_size=4),
    st.lists(st.one_of(st.text(max_size=10), st.none(), st.integers(), st.binary(max_size=4)), max_size=4),
    st.none(), st.integers(), st.floats(), st.binary(max_size=8), st.tuples(st.text(max_size=8))))
def test_any_prompts_value_draws_or_is_refused_by_type(pipe, prompts):
    out = call(pipe, prompts, num_steps=2)
    is_list = isinstance(prompts, (list, tuple))
    if not isinstance(prompts, str) and not (is_list and all(isinstance(p, str) for p in prompts)):
        assert isinstance(out, TypeError) and "prompts must be a string or a list of strings" in str(out)
    elif is_list and not prompts:
        assert isinstance(out, ValueError) and "no prompts" in str(out)
    elif any(n == 0 for n in pipe.text_encoder.content_token_count(list(prompts))):
        assert isinstance(out, ValueError) and "empty prompt" in str(out)
    else:
        assert isinstance(out, np.ndarray) and len(out) == len(prompts)


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1e-300, 1e300, -0.0, 1e-45]),
                   st.integers(-3, 10), st.none(), st.text(max_size=3), st.booleans())
ints = st.one_of(st.integers(-3, 2 * L), st.integers(min_value=2 ** 31, max_value=2 ** 70), st.integers(max_value=-2 ** 40),
                 st.none(), st.floats(allow_nan=True), st.booleans(), st.text(max_size=2))
seeds = st.one_of(st.integers(0, 2 ** 63 - 1), st.integers(), st.floats(allow_nan=True), st.booleans(), st.text(max_size=2))


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@PROPS
@given(num_steps=ints, guidance_scale=floats, temperature=floats, choice_temperature=floats, top_k=ints, seed=seeds,
       sampler=st.sampled_from([None, "confidence", "halton", "random", "greedy", ""]))
def test_any_sampling_arguments_draw_or_are_refused(pipe, num_steps, guidance_scale, temperature, choice_temperature,
                                                    top_k, seed, sampler):
    kw = dict(num_steps=num_steps, guidance_scale=guidance_scale, temperature=temperature,
              choice_temperature=choice_temperature, top_k=top_k, seed=seed, sampler=sampler)
    out = call(pipe, "a red circle", **kw)
    # What must be refused: a wrong type, a value out of range, more steps than tokens; the rest must draw
    # (or overflow to non-finite logits, which the sampler reports instead of drawing noise).
    valid = (_is_int(seed) and 0 <= seed < 2 ** 63
             and (num_steps is None or _is_int(num_steps) and 1 <= num_steps <= L)
             and (top_k is None or _is_int(top_k) and top_k >= 0)
             and all(v is None or _is_num(v) and v >= 0 for v in (guidance_scale, temperature, choice_temperature))
             and sampler in (None, "confidence", "halton", "random"))
    if valid:
        assert isinstance(out, (np.ndarray, FloatingPointError)), out
    else:
        assert isinstance(out, (ValueError, TypeError)), out


@settings(max_examples=25, deadline=None)
@given(steps=st.one_of(st.integers(-2, 20), st.sampled_from(["x", "1e3", "99999"])),
       guidance=st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from(["nan", "-inf", "2"])),
       enlarge=st.integers(-1, 40))
def test_generate_cli_writes_a_png_or_one_line_and_nothing(ckpt, steps, guidance, enlarge):
    import io
    from contextlib import redirect_stderr
    with tempfile.TemporaryDirectory() as d:
        out, err = Path(d) / "o.png", io.StringIO()
        argv = ["generate", "a red circle", "--checkpoint", str(ckpt), "--out", str(out), f"--steps={steps}",
                f"--guidance={guidance}", f"--enlarge={enlarge}"]
        with redirect_stderr(err), no_hang():
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
        if code == 0:
            assert np.asarray(Image.open(out)).shape == (S * enlarge, S * enlarge, 3)
        else:
            lines = err.getvalue().strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("minimuse: error: "), err.getvalue()
            assert list(Path(d).iterdir()) == []


finite = st.one_of(st.floats(0, 1e6), st.sampled_from([0.0, 1e-300, 1e-45, 1e30, 1e300, 1.7e308]))


@PROPS
@given(num_steps=st.integers(1, L), guidance_scale=finite, temperature=finite, choice_temperature=finite,
       top_k=st.one_of(st.integers(0, 40), st.just(2 ** 62)), seed=st.integers(0, 2 ** 63 - 1),
       sampler=st.sampled_from(["confidence", "halton", "random"]), schedule=st.sampled_from(["cosine", "linear", "exp"]),
       guidance_schedule=st.sampled_from(["constant", "linear"]))
def test_any_valid_sampling_arguments_draw(pipe, **kw):
    """In range, however extreme: an image, the same one for the same seed, or a named overflow, never a refusal."""
    out = call(pipe, ["a red circle", "two blue squares"], **kw)
    assert isinstance(out, (np.ndarray, FloatingPointError)), out
    if isinstance(out, np.ndarray):
        assert np.array_equal(out, pipe(["a red circle", "two blue squares"], **kw))
