"""What each sampler speed-up pays: time sample() with one of them undone at a time, interleaved.

    python docs/bench_ablation.py --set width=256 --set depth=6 > docs/results/bench_ablation.json
    python docs/bench_ablation.py --checkpoint data/checkpoints/laptop --batch 1 --steps 24 --guidance 1.0 \
        > docs/results/bench_ablation_laptop_b1.json

Random 16-token text and the 2-token unconditional text of the empty prompt; a random-initialised transformer of the
preset (plus --set overrides) or a trained one. Undoing is done from outside, so sampler.py and transformer.py stay the
one fast version. The variants are timed in rounds, each round one call of every variant in a shuffled order, so that
the machine's drift hits all of them alike; the JSON gives each variant's median, range and ratio to the shipped one.
- "MKL GEMMs": transformer.USE_ONEDNN off, so every linear layer is F.linear, torch's default fp32 CPU path;
- "GELU as its own pass": oneDNN GEMMs, but the MLP's GELU applied in a separate pass over (B, L, 4D);
- "unconditional text padded": the "" text expanded to B rows and padded to the prompt's length, one context of 2B;
- "full head": the output head runs at all L positions, not only the still-masked ones;
- "text K/V every step": the text projection and every layer's cross-attention K/V recomputed at each step;
- "per-step work of the previous release": the Gumbel logs at all L x K draws and the entropy at every step;
- "Muse ramp": guidance ramped from 0, so the first step skips the unconditional half (less work, other images);
- "bf16 autocast": the whole call under torch.autocast("cpu", dtype=torch.bfloat16) (other images);
- "torch.compile": inductor on the blocks (`run_blocks`); its first call, compilation included, is reported apart.
Three candidate speed-ups that were tried and not shipped are timed the same way (docs/BENCHMARKS.md):
- "weights prepacked": every linear layer's weight reordered once per call into oneDNN's blocked layout for the
  blocks' row count, 2·B·L (`mkldnn._reorder_linear_weight`, what inductor's freezing does), instead of at every GEMM;
- "residual adds in the GEMM": each block's three `x + out(y)` as oneDNN's linear with a fused binary add;
- "torch.compile, oneDNN linear as an opaque op": inductor on the blocks, with the oneDNN linear wrapped in a
  `torch.library.custom_op` so that inductor keeps it (and fuses the LayerNorms, adds and reshapes around it)
  instead of lowering the layers to aten's matmul, MKL here.
"""
import argparse
import json
import random
import statistics
import time
from contextlib import ExitStack, contextmanager
from unittest import mock

import torch
import torch.nn.functional as F

from minimuse import decoding, sampler, transformer as transformer_mod
from minimuse.peak import count_flops, honest_peak
from minimuse.commands import _config
from minimuse.config import SampleConfig
from minimuse.transformer import MaskedTransformer


class _PaddedUncond(decoding.Guided):
    """Guided as it was: the unconditional text expanded to B rows, padded to the prompt's length, one 2B context."""

    def __init__(self, transformer, text_emb, text_mask, uncond_emb, uncond_mask, weights, cond=None):
        super().__init__(transformer, text_emb, text_mask, None, None, [0.0])
        if any(w != 0 for w in weights):
            B = text_emb.shape[0]
            u = uncond_emb.expand(B, -1, -1)
            um = torch.ones(u.shape[:2], dtype=torch.bool) if uncond_mask is None else uncond_mask.expand(B, -1)
            T = max(text_emb.shape[1], u.shape[1])
            emb = torch.cat([F.pad(text_emb, (0, 0, 0, T - text_emb.shape[1])), F.pad(u, (0, 0, 0, T - u.shape[1]))])
            mask = torch.cat([F.pad(text_mask, (0, T - text_mask.shape[1])), F.pad(um, (0, T - um.shape[1]))])
            self.ctx_both = transformer.encode_text(emb, mask)  # (2B, T, E) in, cond rows first


class _RecomputeText(decoding.Guided):
    """Guided, but paying for the text K/V at every call, as a loop without the cache would."""

    def __init__(self, transformer, text_emb, text_mask, uncond_emb, uncond_mask, weights, cond=None):
        super().__init__(transformer, text_emb, text_mask, uncond_emb, uncond_mask, weights)
        self.raw = (text_emb, text_mask, uncond_emb, uncond_mask)

    def __call__(self, ids, w, head_index=None):
        emb, mask, u, um = self.raw
        self.model.encode_text(emb, mask)
        if w != 0:
            self.model.encode_text(u, torch.ones(u.shape[:2], dtype=torch.bool) if um is None else um)
        return super().__call__(ids, w, head_index)


def _gelu_apart(self, x):
    y = transformer_mod._ONEDNN_LINEAR(x, self.weight, self.bias, "none", [], "")
    return F.gelu(y) if self.act == "gelu" else y


def _old_uniform(shape, generator, device):
    u = torch.rand(shape, generator=generator)
    if len(shape) == 3:
        decoding.gumbel_from(u)  # the logs the previous release took at every position, before gathering
    return u


_orig_sample_tokens = decoding.sample_tokens


def _entropy_always(logits, temperature, top_k, gumbel, entropy=True):
    return _orig_sample_tokens(logits, temperature, top_k, gumbel, True)


_shipped_linear = transformer_mod.Linear.forward
_BINARY = getattr(torch.ops.mkldnn._linear_pointwise, "binary", None) if transformer_mod._ONEDNN_LINEAR else None


def _prepacked_linear(self, x):
    packed = self.__dict__.get("packed")  # set for one call by `prepacked`
    if packed is None or not transformer_mod.onednn_applies(x, self.weight):
        return _shipped_linear(self, x)
    return transformer_mod._ONEDNN_LINEAR(x, packed, self.bias, self.act or "none", [], "none" if self.act else "")


def prepacked(fn, model, rows):
    def run():
        linears = [m for m in model.modules() if isinstance(m, transformer_mod.Linear)]
        for m in linears:
            m.packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows)
        try:
            with mock.patch.object(transformer_mod.Linear, "forward", _prepacked_linear):
                return fn()
        finally:
            for m in linears:
                del m.packed
    return run


def _plus(linear, y, x):  # x + linear(y), the add done in the GEMM's own pass over its output
    if transformer_mod.onednn_applies(y, linear.weight):
        return _BINARY(y, x, linear.weight, linear.bias, "add")
    return x + linear(y)


def _block_fused_adds(self, x, text_slices=None, return_attn=False, self_mask=None, cache=None):
    """transformer.Block.forward (inference, cross-attention, no qk-norm) with the residual adds in the GEMMs."""
    a, c = self.attn, self.cross
    B, L, D = x.shape
    q, k, v = a.qkv(self.ln1(x)).view(B, L, 3, a.H, D // a.H).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, Dh)
    x = _plus(a.out, transformer_mod.attention(q, k, v)[0].transpose(1, 2).reshape(B, L, D), x)
    q = c.q(self.ln2(x)).view(B, L, c.H, D // c.H).transpose(1, 2)  # (B, H, L, Dh)
    ys = [transformer_mod.attention(qs, k, v, m)[0] for qs, (k, v, m) in zip(q.chunk(len(text_slices)), text_slices)]
    x = _plus(c.out, torch.cat(ys).transpose(1, 2).reshape(B, L, D), x)  # (B, H, L, Dh) -> (B, L, D)
    return _plus(self.mlp.out, self.mlp.fc(self.ln3(x)), x), None


@torch.library.custom_op("minimuse_ablation::linear", mutates_args=())
def _opaque_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: str) -> torch.Tensor:
    return transformer_mod._ONEDNN_LINEAR(x, w, b, act, [], "none" if act != "none" else "")


@_opaque_linear.register_fake
def _(x, w, b, act):
    return x.new_empty(*x.shape[:-1], w.shape[0])


def _linear_for_compile(self, x):  # the opaque op inside the compiled blocks only; eager layers stay as shipped
    if torch.compiler.is_compiling() and transformer_mod.onednn_applies(x, self.weight):
        return _opaque_linear(x, self.weight, self.bias, self.act or "none")
    return _shipped_linear(self, x)


def _blocks(model, x, layers, return_attn=False):  # two functions, so that dynamo keeps two compiled graphs
    return type(model).run_blocks(model, x, layers, return_attn)


def _blocks_opaque(model, x, layers, return_attn=False):
    return type(model).run_blocks(model, x, layers, return_attn)


@contextmanager
def patched(*patches):
    with ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def setting(ap: argparse.ArgumentParser):
    """The options and inputs the sampler benchmarks in docs/ share: this script's and bench_aoti.py's.

    Adds the shared options to `ap`, parses, builds the transformer (the preset plus --set overrides, exactly as
    `minimuse bench` reads them, or a trained checkpoint) and random inputs: 16-token prompts and the 2-token "" text.
    Returns (args, model, (text, text_mask, uncond), call); call(schedule, seed) runs sample() once -> its tokens."""
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--checkpoint", help="a trained pipeline directory instead of a random-initialised model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    cfg = _config(args)
    torch.manual_seed(0)
    model = (MaskedTransformer.from_pretrained(f"{args.checkpoint}/transformer") if args.checkpoint
             else MaskedTransformer.from_config(cfg)).eval()
    B, T, E = args.batch, 16, model.text_dim
    text, mask = torch.randn(B, T, E), torch.ones(B, T, dtype=torch.bool)
    uncond = torch.randn(1, 2, E)  # "" is [CLS][SEP]

    def call(schedule="constant", seed=0):
        s = SampleConfig(num_steps=args.steps, guidance_scale=args.guidance, guidance_schedule=schedule)
        return sampler.sample(model, (text, mask), s, uncond=(uncond, None), generator=torch.Generator().manual_seed(seed))
    return args, model, (text, mask, uncond), call


def header(args, model, peak) -> dict:
    """The setting a result was measured at, first in every JSON these scripts print."""
    return {"model": {"width": model.cfg.width, "depth": model.cfg.depth, "params": model.num_params(),
                      "checkpoint": args.checkpoint},
            "batch": args.batch, "steps": args.steps, "guidance": args.guidance, "threads": torch.get_num_threads(),
            "rounds": args.rounds, "fp32_peak": peak}


def interleaved(variants: dict, rounds: int) -> dict:
    """Seconds per call of every variant, timed in rounds: each round calls every variant once, in a shuffled order, so
    that the machine's drift hits all of them alike."""
    times = {name: [] for name in variants}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            t = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variant")
    args, model, _, call = setting(ap)
    B = args.batch

    def under(*patches, fn=call):
        def run():
            with patched(*patches):
                return fn()
        return run

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return call()

    variants = {
        "all speed-ups (shipped, fp32)": call,
        "MKL GEMMs (torch's default fp32 path)": under(mock.patch.object(transformer_mod, "USE_ONEDNN", False)),
        "GELU as its own pass": under(mock.patch.object(transformer_mod.Linear, "forward", _gelu_apart)),
        "unconditional text padded to the prompt's, 2B rows": under(mock.patch.object(sampler, "Guided", _PaddedUncond)),
        "full head": under(mock.patch.object(sampler, "_head_positions", lambda m, same: None)),
        "text K/V every step": under(mock.patch.object(sampler, "Guided", _RecomputeText)),
        "per-step work of the previous release": under(mock.patch.object(sampler, "uniform", _old_uniform),
                                                       mock.patch.object(decoding, "uniform", _old_uniform),
                                                       mock.patch.object(sampler, "sample_tokens", _entropy_always)),
        "Muse ramp (step 0 skips the unconditional pass)": lambda: call("linear"),
        "bf16 autocast": bf16,
    }
    reference = call()
    same = {name: bool(torch.equal(fn(), reference)) for name, fn in variants.items()}  # also the warm-up
    rows = 2 * B * model.grid[0] * model.grid[1]  # the blocks' GEMM rows: cond and uncond halves
    variants["tried: weights prepacked once per call"] = prepacked(call, model, rows)
    if model.cfg.qk_norm or _BINARY is None:  # _block_fused_adds writes out Block.forward without q/k norms
        raise SystemExit("the residual-add variant needs oneDNN's binary linear and a model without qk_norm")
    variants["tried: residual adds in the GEMM"] = under(mock.patch.object(transformer_mod.Block, "forward",
                                                                           _block_fused_adds))
    same.update({name: bool(torch.equal(variants[name](), reference)) for name in list(variants)[-2:]})
    compile_s = {}
    if not args.no_compile:
        for name, linear, blocks in (("torch.compile (inductor, blocks)", _shipped_linear, _blocks),
                                     ("tried: torch.compile, oneDNN linear as an opaque op", _linear_for_compile,
                                      _blocks_opaque)):
            compiled = torch.compile(blocks, dynamic=False)  # traced at its first call, under `linear`

            def with_compile(compiled=compiled, linear=linear):
                # forward calls self.run_blocks: the instance attribute shadows the method
                model.run_blocks = lambda x, layers, attn=False: compiled(model, x, layers, attn)
                try:
                    with mock.patch.object(transformer_mod.Linear, "forward", linear):
                        return call()
                finally:
                    del model.run_blocks
            t = time.perf_counter()
            same[name] = bool(torch.equal(with_compile(), reference))
            compile_s[name] = round(time.perf_counter() - t, 2)
            variants[name] = with_compile

    times = {name: [1000 * s / B for s in ts] for name, ts in interleaved(variants, args.rounds).items()}  # ms/image
    base = statistics.median(times["all speed-ups (shipped, fp32)"])
    flops = count_flops(call)
    peak = honest_peak(model, 2 * B * model.grid[0] * model.grid[1])
    out = {**header(args, model, peak),
           "shipped": {"gflop_per_image": round(flops / B / 1e9, 4),
                       "achieved_gflops": round(flops / B / base / 1e6, 1),
                       "fraction_of_peak": round(flops / B / base / 1e6 / peak["gflops"], 3)},
           "torch_compile_first_call_s": compile_s, "variants": {}}
    for name, ts in times.items():
        med = statistics.median(ts)
        out["variants"][name] = {"ms_per_image": round(med, 2), "min": round(min(ts), 2), "max": round(max(ts), 2),
                                 "vs_shipped": round(med / base, 3), "same_tokens_as_shipped": same[name]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
