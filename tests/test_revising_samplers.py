"""The samplers that revise committed tokens: remask (ReMDM-style) and critic (Token-Critic), and the critic's data."""
import pytest
import torch

from minimuse.config import SampleConfig
from minimuse.presets import get_config
from minimuse.critic import TokenCritic, critic_batch, critic_loss
from minimuse.sampler import revisions, sample
from minimuse.scheduler import mask_counts
from minimuse.transformer import MaskedTransformer

CFG = get_config("ci")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    gen = MaskedTransformer.from_config(CFG).eval()
    critic = TokenCritic.from_config(get_config("ci", **{"transformer.kind": "critic"})).eval()
    return gen, critic


def _text(B=3):
    g = torch.Generator().manual_seed(1)
    text, mask = torch.randn(B, 5, CFG.text.text_dim, generator=g), torch.ones(B, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return text, mask


def _draw(gen, sampler, steps=6, **kw):
    text, mask = _text()
    critic = kw.pop("critic", None)
    return sample(gen, (text, mask), SampleConfig(num_steps=steps, sampler=sampler, guidance_scale=0.0, **kw),
                  critic=critic, generator=torch.Generator().manual_seed(2), return_history=True)


@pytest.mark.parametrize("sampler", ["remask", "critic"])
def test_count_rule_and_nothing_left_masked(models, sampler):
    gen, critic = models
    L = gen.grid[0] * gen.grid[1]
    ids, hist = _draw(gen, sampler, critic=critic, remask_prob=0.5)
    assert [int(h["mask"].sum()) // 3 for h in hist] == mask_counts(L, 6, "cosine")  # the schedule's count per step
    assert all(int(h["mask"][b].sum()) == int(hist[i]["mask"][0].sum()) for i, h in enumerate(hist) for b in range(3))
    assert not hist[-1]["mask"].any() and int(ids.max()) < gen.codebook_size  # a whole image of real codes
    assert torch.equal(ids, hist[-1]["ids"])


@pytest.mark.parametrize("sampler", ["remask", "critic"])
def test_revising_samplers_do_revise(models, sampler):
    gen, critic = models
    _, hist = _draw(gen, sampler, critic=critic, remask_prob=0.5)
    assert sum(int(h["remasked"].sum()) for h in hist) > 0  # some committed tokens were masked again
    assert max(revisions(hist)) > 0


def test_confidence_decoding_never_revises(models):
    _, hist = _draw(models[0], "confidence")
    assert not any(h["remasked"].any() for h in hist) and revisions(hist) == [0.0] * len(hist)


def test_remask_at_zero_probability_is_confidence_decoding(models):
    a, _ = _draw(models[0], "confidence")
    b, _ = _draw(models[0], "remask", remask_prob=0.0)
    assert torch.equal(a, b)


def test_revisions_counts_masked_again_and_changed_tokens():
    m = lambda *v: torch.tensor(v, dtype=torch.bool).view(1, 1, -1)  # noqa: E731
    i = lambda *v: torch.tensor(v).view(1, 1, -1)  # noqa: E731
    hist = [{"ids": i(5, 9, 9), "mask": m(0, 1, 1)},   # position 0 committed as 5
            {"ids": i(9, 7, 9), "mask": m(1, 0, 1)},   # 0 masked again (1 revision), 1 committed as 7
            {"ids": i(6, 7, 3), "mask": m(0, 0, 0)}]   # 0 now 6, not its first 5 (still 1); 2 committed as 3
    assert revisions(hist) == [0.0, 1.0, 1.0]


def test_critic_sampler_needs_a_critic(models):
    with pytest.raises(ValueError, match="needs a trained critic"):
        _draw(models[0], "critic")


def test_critic_labels_mark_exactly_the_changed_tokens():
    class AlwaysZero(torch.nn.Module):  # a generator certain of code 0 everywhere
        def forward(self, ids, text, text_mask):
            logits = torch.full((*ids.shape, 8), -1e4)
            logits[..., 0] = 1e4
            return logits
    real = torch.tensor([[0, 3, 0, 5, 2, 0]])
    masked = torch.tensor([[True, True, False, False, True, False]])
    inputs, labels = torch.where(masked, 8, real), torch.where(masked, real, -100)
    filled, wrong = critic_batch(AlwaysZero(), inputs, labels, None, None, torch.Generator().manual_seed(0))
    assert torch.equal(filled, torch.tensor([[0, 0, 0, 5, 0, 0]]))       # gaps filled with 0, the rest kept
    assert torch.equal(wrong, torch.tensor([[0., 1., 0., 0., 1., 0.]]))  # wrong only where a gap got a new code
    assert float(critic_loss(torch.full((1, 6), -20.0), torch.zeros(1, 6))) < 1e-8
    assert float(critic_loss(torch.full((1, 6), -20.0), wrong)) > 6.0     # sure it is right where it is wrong


def test_train_critic_resumes_exactly_and_the_pipeline_samples_with_it(tmp_path):
    from minimuse.checkpoint import load_tree, save_tree
    from minimuse.pipeline import load_pipeline
    from minimuse.runs import CRITIC_STATE
    from minimuse.train import train_critic
    from safetensors.torch import load_file
    from tests.tiny import make_tiny_pipeline
    gen = make_tiny_pipeline(tmp_path / "gen")
    over = {"transformer.kind": "critic", "train.steps": 4, "train.batch_size": 8, "data.pool_size": 64,
            "train.ckpt_every": 2, "train.log_every": 1}
    cfg = get_config("ci", **over)
    log = train_critic(cfg, tmp_path / "straight", gen)
    assert all(0.0 <= r["masked_acc"] <= 1.0 for r in log) and len(log) == 4
    train_critic(get_config("ci", **{**over, "train.steps": 2}), tmp_path / "half", gen)
    state = load_tree(tmp_path / "half" / CRITIC_STATE)
    state["config"] = cfg.to_dict()  # as a kill at step 2 of the 4-step run would leave it
    save_tree(tmp_path / "half" / CRITIC_STATE, state)
    train_critic(cfg, tmp_path / "half", gen, resume=True)
    a, b = (load_file(tmp_path / d / "critic" / "model.safetensors") for d in ("straight", "half"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="train-critic"):  # a critic preset through the plain trainer is refused
        from minimuse.train import train_transformer
        train_transformer(cfg, tmp_path / "wrong", tokenizer_dir=gen / "tokenizer")
    (gen / "critic").mkdir()
    for f in ("config.json", "model.safetensors"):
        (gen / "critic" / f).write_bytes((tmp_path / "straight" / "critic" / f).read_bytes())
    pipe = load_pipeline(gen, device="cpu")
    assert isinstance(pipe.critic, TokenCritic)
    ids, hist = pipe.sample_ids(["a red circle"], pipe.settings(sampler="critic", num_steps=4), return_history=True)
    assert ids.shape == (1, *pipe.transformer.grid) and not hist[-1]["mask"].any()


def test_critic_sampler_masks_what_the_critic_distrusts():
    """A critic sure that the tokens at a fixed set of positions are wrong, and the rest right: with no noise on the
    scores, every masked slot after every step lies in that set while it has room (a flipped sign would do the
    opposite)."""
    class Distrust(torch.nn.Module):
        def __init__(self, bad):
            super().__init__()
            self.bad = bad

        def encode_text(self, text, text_mask):
            return None

        def forward(self, ids, ctx=None):
            return torch.where(self.bad, 10.0, -10.0).expand(ids.shape[0], -1)  # (B, L)
    gen = MaskedTransformer.from_config(CFG).eval()
    L = gen.grid[0] * gen.grid[1]
    bad = torch.zeros(L, dtype=torch.bool)
    bad[::3] = True
    _, hist = _draw(gen, "critic", critic=Distrust(bad), choice_temperature=0.0)
    for h in hist:
        m = h["mask"].flatten(1)  # (B, L)
        if int(m[0].sum()) <= int(bad.sum()):
            assert not (m & ~bad).any()


@pytest.mark.parametrize("sampler", ["remask", "critic"])
def test_revising_samplers_keep_the_tokens_outside_an_inpainting_region(models, sampler):
    gen, critic = models
    h, w = gen.grid
    init = torch.randint(0, gen.codebook_size, (3, h, w), generator=torch.Generator().manual_seed(3))
    region = torch.zeros(3, h, w, dtype=torch.bool)
    region[:, 1:3, 1:3] = True
    text, mask = _text()
    s = SampleConfig(num_steps=4, sampler=sampler, remask_prob=1.0, guidance_scale=0.0)
    ids, hist = sample(gen, (text, mask), s, critic=critic, init_ids=init, init_mask=region,
                       generator=torch.Generator().manual_seed(4), return_history=True)
    assert torch.equal(ids[~region], init[~region]) and not hist[-1]["mask"].any()
    assert all(not (hs["mask"] & ~region).any() for hs in hist)


def test_draws_and_held_scores_share_the_top_k_distribution():
    """log_probs is what both the draw and remask's score of a held token read: with top-k 1, a token outside the
    top 1 scores -inf and the top token 0, so a held token the model no longer ranks is the first to be revised."""
    from minimuse.decoding import log_probs
    logits = torch.tensor([[[2.0, 1.0, 0.0]]])
    lp = log_probs(logits, 1.0, 1)
    assert lp[0, 0, 0] == 0 and torch.isinf(lp[0, 0, 1:]).all()
