"""Sampling speed of minimuse beside two public Muse/MaskGIT implementations, in one process, interleaved.

What is timed: one call that turns an all-[MASK] 8x8 grid into token ids, for a batch of 16 prompts, in 12 steps with
classifier-free guidance (a conditional and an unconditional forward pass per step), K=256 codes, width 256 (4 heads
of 64), depth 6, 16 text tokens of 384 d given as precomputed random embeddings. Text encoding and the VQ decode are
not timed in any of them. All three are random-initialised with fixed seeds, in eval() and inference_mode, with
torch.set_num_threads(--threads). After one warm-up call each, every round times one call of each implementation in
a freshly shuffled order, so drift in the machine (other load, clocks) falls on all three alike.

1. minimuse: `sampler.sample` on `MaskedTransformer` of the laptop preset at width=256, depth=6. Its unconditional
   text is 2 tokens long, as the encoding of "" ([CLS][SEP]) is; the sampler runs it in the prompts' forward pass of
   2B rows.
2. muse-maskgit-pytorch (lucidrains, PyPI): its own `MaskGit.generate` on `MaskGitTransformer(dim=256, depth=6,
   heads=4, dim_head=64, ff_mult=4)`. Stand-ins, no hub access: the T5 dimension is registered as 384 so
   `text_embed_proj` is Linear(384, 256), `transformer.encode_text` returns the precomputed embeddings, and the VAE
   slot holds a stub that reports the 8x8 grid and returns the ids instead of decoding. Its null pass takes no
   text of its own: it is the same 16 tokens fully masked, so cross-attention sees only its learned null key/value.
   cond_scale=3 (its default), cosine schedule, top-k 0.9 filter, attention as shipped (flash=True, which on CPU
   runs memory_efficient_attention_pytorch's FlashAttentionFunction), and again with flash=False, its other
   path (einsum attention), so that minimuse is compared with the faster of the two. Its parameter count includes a
   self-conditioning FeedForward that is built but unused (self_cond=False); the JSON gives that count as params_unused.
3. diffusers aMUSEd: the deprecated `AmusedPipeline` itself, with no VQ-VAE, tokenizer or CLIP (so
   output_type="latent" and precomputed prompt_embeds / encoder_hidden_states), around a random `UVit2DModel`
   (hidden 256, 6 layers, 4 heads of 64, GEGLU inner 682 = minimuse's 4x MLP in parameters, one ConvNeXt+attention
   block on each side, no down/upsampling, sample_size 8) and `AmusedScheduler`. Guidance doubles the batch with a
   null prompt, which must have the prompt's length (the pipeline concatenates them), so 16 tokens. UVit2D also
   carries ConvNeXt res blocks, norms modulated by the pooled text, 1x1-conv embed/head and a micro-conditioning MLP
   that minimuse has not: parameter counts differ, and all three are reported.
Guidance weights agree: the conditional logits get weight 3 in every formula (minimuse's w = 2).

--precision bf16 runs each whole call under torch.autocast("cpu", bfloat16) (as minimuse's pipe(precision="bf16"));
an implementation that crashes so is retried with bf16 weights and inputs, and one that crashes again is reported
as an error. The warm-up call of each is checked: (B, 64) ids in [0, 256), no mask id left, and, counted by a hook,
exactly two passes of B per step (or one of 2B). --check runs only those checks.

Install (`make peers` does this):
    python3 -m venv benchmarks/.venv && benchmarks/.venv/bin/pip install -c constraints.txt -e . -r benchmarks/requirements-peers.txt
Run (on an idle machine):
    benchmarks/.venv/bin/python benchmarks/peers.py --precision both --out docs/results/peers.json
"""
import argparse
import copy
import os
import platform
import random
import statistics
import sys
import time
from datetime import datetime
from importlib.metadata import version
from typing import Callable, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is random-initialised: nothing may be downloaded
os.environ.setdefault("TQDM_DISABLE", "1")    # MaskGit.generate wraps its loop in tqdm
import torch

from minimuse.checkpoint import atomic_write_json
from minimuse.inputs import check_outputs

STEPS, GRID, K, WIDTH, DEPTH, HEADS, T, E = 12, 8, 256, 256, 6, 4, 16, 384
COND_WEIGHT = 3.0  # weight of the conditional logits: l_u + 3 (l_c - l_u) in all three


class Impl(NamedTuple):
    name: str
    model: torch.nn.Module  # what bf16 weights would cast; submodules below are named as in model.get_submodule
    counted: str            # whose parameters are reported ("" = model)
    unused: str | None      # built but never called while sampling
    hook: str               # called once per forward pass; probe(args, kwargs) -> (rows, "both" | "cond" | "null" | "?")
    probe: Callable
    make: Callable          # (model, dtype) -> fn(seed) -> ids


def halves_differ(x):  # a batch of 2B rows holding the conditional and the unconditional pass
    n = x.shape[0] // 2
    return "both" if x.shape[0] % 2 == 0 and not torch.equal(x[:n], x[n:]) else "?"


def minimuse_impl(x):
    from minimuse.config import SampleConfig
    from minimuse.presets import get_config
    from minimuse.sampler import sample
    from minimuse.transformer import MaskedTransformer
    torch.manual_seed(0)
    model = MaskedTransformer.from_config(get_config("laptop", width=WIDTH, depth=DEPTH)).eval()

    def make(m, dtype):
        text, null = x["text"].to(dtype), x["null_text"][:, :2].to(dtype)  # "" is 2 tokens: [CLS][SEP]
        mask = torch.ones(text.shape[:2], dtype=torch.bool)
        settings = SampleConfig(num_steps=STEPS, guidance_scale=COND_WEIGHT - 1)
        return lambda s: sample(m, (text, mask), settings, uncond=(null, None), generator=torch.Generator().manual_seed(s))

    def probe(a, kw):  # ctx: one TextContext of 2B rows, or a (cond, uncond) pair of them, one per half of the batch
        ks = [c.kv[0][0] for c in ((kw["ctx"],) if hasattr(kw["ctx"], "kv") else kw["ctx"])]  # layer 0's text keys
        pair = len(ks) == 2 and (ks[0].shape != ks[1].shape or not torch.equal(ks[0], ks[1]))
        return a[0].shape[0], halves_differ(ks[0]) if len(ks) == 1 else "both" if pair else "?"
    return Impl("minimuse", model, "", None, "", probe, make)


def maskgit_impl(x, flash=True):
    from muse_maskgit_pytorch import MaskGit, MaskGitTransformer, VQGanVAE, t5
    from transformers import T5Config
    t5.T5_CONFIGS["precomputed-384"] = {"config": T5Config(d_model=E)}  # get_encoded_dim reads this, not the hub

    class NoDecode(torch.nn.Module):  # the VAE slot: generate() asks it for the grid, then to decode (we keep ids)
        get_encoded_fmap_size, decode_from_ids = (lambda self, image_size: GRID), (lambda self, ids: ids)
    torch.manual_seed(0)
    net = MaskGitTransformer(num_tokens=K, seq_len=GRID * GRID, dim=WIDTH, depth=DEPTH, heads=HEADS, dim_head=WIDTH // HEADS,
                             ff_mult=4, t5_name="precomputed-384", flash=flash)
    # MaskGit's constructor asserts on a real VQGanVAE's codebook size; a tiny random one (32 px -> 8x8), then the stub
    mg = MaskGit(image_size=32, transformer=net, vae=VQGanVAE(dim=16, codebook_size=K, layers=2, use_vgg_and_gan=False))
    mg.vae = mg.cond_vae = NoDecode()
    mg.eval()

    def make(m, dtype):
        text = x["text"].to(dtype)
        m.transformer.encode_text = lambda texts: text  # an instance attribute (a partial of t5_encode_text) upstream

        def fn(s):
            torch.manual_seed(s)  # generate() draws from the global RNG
            return m.generate([""] * text.shape[0], timesteps=STEPS, cond_scale=COND_WEIGHT)
        return fn

    def probe(a, kw):
        cm = kw["context_mask"]  # (B, T): all True for the conditional pass, all False for the null one
        return cm.shape[0], "cond" if bool(cm.all()) else "null" if not bool(cm.any()) else "?"
    return Impl("muse-maskgit-pytorch" + ("" if flash else " (flash=False)"), mg, "transformer", "transformer.self_cond_to_init_embed",
                "transformer.transformer_blocks", probe, make)


def amused_impl(x):
    from diffusers import AmusedScheduler, UVit2DModel
    from diffusers.pipelines.deprecated.amused.pipeline_amused import AmusedPipeline
    from diffusers.utils import logging
    logging.set_verbosity_error()  # the deprecation notice, once per pipeline
    torch.manual_seed(0)
    model = UVit2DModel(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=682,
                        codebook_size=K, vocab_size=K + 1, encoder_hidden_size=E, cond_embed_dim=E, in_channels=WIDTH,
                        block_out_channels=WIDTH, block_num_heads=HEADS, num_res_blocks=1, downsample=False,
                        upsample=False, sample_size=GRID).eval()

    def make(m, dtype):
        pipe = AmusedPipeline(vqvae=None, tokenizer=None, text_encoder=None, transformer=m,
                              scheduler=AmusedScheduler(mask_token_id=K))  # no vqvae: vae_scale_factor 8, 64 px
        pipe.set_progress_bar_config(disable=True)
        B = x["text"].shape[0]
        kw = dict(prompt_embeds=x["pooled"].to(dtype), encoder_hidden_states=x["text"].to(dtype),
                  negative_prompt_embeds=x["null_pooled"].expand(B, -1).to(dtype),
                  negative_encoder_hidden_states=x["null_text"].expand(B, -1, -1).to(dtype))
        return lambda s: pipe(**kw, num_inference_steps=STEPS, guidance_scale=COND_WEIGHT, output_type="latent",
                              generator=torch.Generator().manual_seed(s)).images
    return Impl("diffusers aMUSEd (UVit2D)", model, "", None, "",
                lambda a, kw: (a[0].shape[0], halves_differ(kw["encoder_hidden_states"])), make)


class CheckFailed(Exception):
    pass


def checked_call(im, model, fn, B):
    """One call with a hook counting forward passes: the warm-up of every run, and all of --check."""
    calls = []
    h = model.get_submodule(im.hook).register_forward_pre_hook(lambda m, a, kw: calls.append(im.probe(a, kw)), with_kwargs=True)
    try:
        ids = fn(0).reshape(B, -1)
    finally:
        h.remove()
    if ids.shape != (B, GRID * GRID) or ids.dtype != torch.long or int(ids.min()) < 0 or int(ids.max()) >= K:
        raise CheckFailed(f"ids {tuple(ids.shape)} {ids.dtype} in [{int(ids.min())}, {int(ids.max())}], want (B, 64) in [0, {K})")
    kinds = [k for _, k in calls]
    if sum(r for r, _ in calls) != 2 * B * STEPS or kinds not in (["both"] * STEPS, ["cond", "null"] * STEPS):
        raise CheckFailed(f"{len(calls)} forward passes of {sorted({r for r, _ in calls})} rows, kinds {sorted(set(kinds))}; "
                          f"want {STEPS} of 2B = {2 * B} rows (cond + uncond) or {2 * STEPS} of {B}, cond then null")
    return f"{len(calls)} passes of {calls[0][0]} rows"


def prepare(im, precision, B):
    """The timed function for one precision, after its checked warm-up; or (None, error). bf16: autocast, else weights."""
    tries = [("fp32", torch.float32, False)] if precision == "fp32" else [("autocast", torch.float32, True),
                                                                          ("bf16 weights", torch.bfloat16, False)]
    errors = []
    for mode, dtype, autocast in tries:
        try:
            model = im.model if dtype == torch.float32 else copy.deepcopy(im.model).to(dtype)
            inner = im.make(model, dtype)

            def fn(s, inner=inner, autocast=autocast):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    return inner(s)
            return fn, mode, checked_call(im, model, fn, B)
        except CheckFailed:
            raise
        except Exception as e:  # noqa: BLE001 -- a peer crashing at bf16 is a result, recorded as such
            errors.append(f"{mode}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
    return None, "; ".join(errors), None


def run(impls, precision, args):
    res, fns = {}, {}
    for im in impls:
        counted = im.model.get_submodule(im.counted)
        res[im.name] = {"params": sum(p.numel() for p in counted.parameters()),
                        "params_unused": sum(p.numel() for p in im.model.get_submodule(im.unused).parameters()) if im.unused else 0}
        try:
            fn, mode, note = prepare(im, precision, args.batch)
        except CheckFailed as e:
            fn, mode, note = None, f"CheckFailed: {e}", None
        if fn is None:
            res[im.name]["error"] = mode
        else:
            fns[im.name] = fn
            res[im.name].update(mode=mode, check=note)
        print(f"[{precision}] {im.name}: {res[im.name].get('error') or f'{mode}, {note}'}", file=sys.stderr)
    if args.check:
        return res
    times, rng = {n: [] for n in fns}, random.Random(args.seed)
    for r in range(args.reps):
        order = list(fns)
        rng.shuffle(order)
        for n in order:
            t0 = time.perf_counter()
            try:
                fns[n](r + 1)
            except Exception as e:  # noqa: BLE001 -- as in prepare(): recorded, and the others go on
                res[n]["error"] = f"round {r}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
                del fns[n]
                continue
            times[n].append(1000 * (time.perf_counter() - t0) / args.batch)  # ms per image
    ref = times.get("minimuse") if "minimuse" in fns else None
    for n in fns:
        ms, out = times[n], res[n]
        out.update(n=len(ms), median_ms_per_image=round(statistics.median(ms), 3), min_ms_per_image=round(min(ms), 3),
                   max_ms_per_image=round(max(ms), 3), ms_per_image=[round(t, 3) for t in ms])
        if ref and n != "minimuse":  # speed-up of minimuse: peer / minimuse, with the range of the per-round ratios
            per_round = [p / m for p, m in zip(ms, ref)]
            out["speedup_of_minimuse"] = {"ratio_of_medians": round(statistics.median(ms) / statistics.median(ref), 4),
                                          "min": round(min(per_round), 4), "max": round(max(per_round), 4),
                                          "per_round": [round(q, 4) for q in per_round]}
    return res


def table(res, precision, quick):
    lines = [f"\n### {precision}" + (" (--quick smoke run: not a measurement)" if quick else "") + "\n",
             "| implementation | parameters | run as | median ms/image | range ms/image | minimuse speed-up (range) |",
             "|---|---:|---|---:|---:|---:|"]
    for n, r in res.items():
        params = f"{r['params'] / 1e6:.2f}M" + (f" ({r['params_unused'] / 1e6:.2f}M unused)" if r["params_unused"] else "")
        if "error" in r:
            lines.append(f"| {n} | {params} | **failed**: {r['error']} | | | |")
        elif "median_ms_per_image" not in r:
            lines.append(f"| {n} | {params} | {r['mode']} | checked: {r['check']} | | |")
        else:
            s = r.get("speedup_of_minimuse")
            sp = f"{s['ratio_of_medians']:.2f}x ({s['min']:.2f}-{s['max']:.2f})" if s else "reference" if n == "minimuse" else "n/a"
            lines.append(f"| {n} | {params} | {r['mode']} | {r['median_ms_per_image']:.2f} | "
                         f"{r['min_ms_per_image']:.2f}-{r['max_ms_per_image']:.2f} | {sp} |")
    return "\n".join(lines)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="fp32")
    ap.add_argument("--reps", type=int, default=7, help="timed rounds (at least 7 unless --quick)")
    ap.add_argument("--batch", type=int, default=16, help="prompts per call (16 is the protocol; smaller with --quick)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seed of the per-round shuffles")
    ap.add_argument("--quick", action="store_true", help="smoke test: allow --reps < 7 and --batch != 16")
    ap.add_argument("--check", action="store_true", help="only the checked warm-up calls, no timing; exit 1 on failure")
    ap.add_argument("--out", help="write the JSON here (atomically)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = ap.parse_args()
    if args.out:  # refused before an hour of timing, not after
        check_outputs([args.out], args.overwrite)
    if not args.quick and (args.reps < 7 or args.batch != 16):  # fewer rounds give no range worth reporting
        ap.error("the protocol is --batch 16 with --reps >= 7; pass --quick for a smoke test")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)  # the same random "text" for all three
    B = args.batch
    x = {"text": torch.randn(B, T, E, generator=g), "pooled": torch.randn(B, E, generator=g),
         "null_text": torch.randn(1, T, E, generator=g), "null_pooled": torch.randn(1, E, generator=g)}
    impls = [minimuse_impl(x), maskgit_impl(x), maskgit_impl(x, flash=False), amused_impl(x)]
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    results = {}
    for p in precisions:
        results[p] = run(impls, p, args)
        print(table(results[p], p, args.quick))
    out = {"date": datetime.now().isoformat(), "command": " ".join([sys.executable] + sys.argv), "cpu": cpu_name(),
           "threads": torch.get_num_threads(), "versions": {k: version(k) for k in ("torch", "minimuse", "muse-maskgit-pytorch", "diffusers")},
           "settings": {"batch": B, "steps": STEPS, "grid": [GRID, GRID], "codebook_size": K, "width": WIDTH, "depth": DEPTH,
                        "heads": HEADS, "text_tokens": T, "text_dim": E, "cond_weight": COND_WEIGHT,
                        "minimuse_uncond_tokens": 2, "reps": 0 if args.check else args.reps, "shuffle_seed": args.seed,
                        "quick": args.quick, "check_only": args.check, "precisions": precisions},
           "results": results}
    if args.out:
        atomic_write_json(args.out, out)
    if args.check and any("error" in r and (p == "fp32" or r["error"].startswith("CheckFailed"))
                          for p, res in results.items() for r in res.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
