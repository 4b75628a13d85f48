import dataclasses, json, sys, time
from minimuse.pipeline import load_pipeline
from minimuse.eval import eval_upscale
run = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 256
pipe = load_pipeline(run)
base = pipe.config
res = []
for temp, gs, steps, ct in [(1.0, 0.0, 8, 1.0), (0.5, 0.0, 8, 1.0), (0.0, 0.0, 8, 1.0), (0.0, 0.0, 8, 0.0), (0.0, 1.0, 8, 1.0), (0.0, 0.0, 16, 1.0), (1.0, 2.0, 8, 1.0)]:
    pipe.config = dataclasses.replace(base, sample=dataclasses.replace(base.sample, temperature=temp, choice_temperature=ct),
                                      superres=dataclasses.replace(base.superres, sample=dataclasses.replace(  # the stage's settings (moved since)
                                          base.superres.sample, guidance_scale=gs, num_steps=steps)))
    t = time.time()
    r = eval_upscale(pipe, n)
    r.update(temperature=temp, guidance=gs, steps=steps, choice_temperature=ct, seconds=round(time.time() - t, 1))
    print(json.dumps(r), flush=True); res.append(r)
pipe.config = dataclasses.replace(base, sample=dataclasses.replace(base.sample, temperature=0.0))
r = eval_upscale(pipe, n, shuffle_lowres=True); r["temperature"] = 0.0; print("shuffled", json.dumps(r), flush=True)
