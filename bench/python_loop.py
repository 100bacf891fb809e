"""The baseline synthd's engine is measured against: a plain Python loop over
onnxruntime + numpy running the same model, sampler (DDIM, eta 0, diffusers
"leading" spacing), steps and batch as `synthd bench`, on the same synthetic
slices (a textured disc at the model's size, a square mask).

    python bench/python_loop.py --model fixtures/models/tiny/tiny-cond.onnx --steps 25 --batch 8 --slices 32

Prints the same JSON keys as `synthd bench` on its last line.
"""

import argparse
import json
import math
import pathlib
import time
import tomllib

import numpy as np
import onnxruntime as ort


def alphas_cumprod(cfg):
    t = cfg.get("num_train_timesteps", 1000)
    schedule = cfg.get("beta_schedule", "linear")
    if schedule == "linear":
        betas = np.linspace(cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02), t, dtype=np.float32)
    elif schedule == "scaled_linear":
        betas = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, t, dtype=np.float32) ** 2
    else:
        f = lambda x: math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - f((i + 1) / t) / f(i / t), 0.999) for i in range(t)], dtype=np.float32)
    return np.cumprod(1.0 - betas.astype(np.float64)), t


def slices(count, h, w):
    r, c = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for z in range(count):
        disc = ((r / h - 0.5) ** 2 + (c / w - 0.5) ** 2) < 0.16
        out.append(np.where(disc, 500.0 + 100.0 * np.sin(r * 0.3 + z), 0.0).astype(np.float32))
    mask = np.zeros((h, w), np.float32)
    mask[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 1.0
    return out, mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="measured runs; the fastest is reported")
    args = ap.parse_args()
    model = pathlib.Path(args.model)
    manifest = tomllib.loads(model.with_suffix(".toml").read_text())
    h, w = manifest["geometry"]["height"], manifest["geometry"]["width"]
    lo_hi = manifest["intensity"]["range"]
    abar, train = alphas_cumprod(manifest["scheduler"])
    clip = manifest["scheduler"].get("clip_sample", True)
    clip_range = manifest["scheduler"].get("clip_sample_range", 1.0)
    cond_names = manifest["inputs"]["cond"]
    int_t = manifest["inputs"]["timestep_dtype"] == "int64"

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    ratio = train // args.steps
    timesteps = [i * ratio for i in reversed(range(args.steps))]

    def run(count):
        images, mask = slices(count, h, w)
        rng = np.random.default_rng(1)
        ort_seconds = 0.0
        outputs = []
        for start in range(0, count, args.batch):
            batch = np.stack(images[start : start + args.batch])[:, None]
            n = batch.shape[0]
            nz = batch[batch != 0]
            lo, hi = np.percentile(nz, [manifest["intensity"]["lower_percentile"], manifest["intensity"]["upper_percentile"]])
            known = lo_hi[0] + (np.clip(batch, lo, hi) - lo) * (lo_hi[1] - lo_hi[0]) / (hi - lo)
            m = np.broadcast_to(mask, (n, 1, h, w))
            feeds = {}
            if cond_names:
                feeds["cond"] = np.concatenate([known * (1 - m), m], axis=1).astype(np.float32)
            x = rng.standard_normal((n, 1, h, w)).astype(np.float32)
            for i, t in enumerate(timesteps):
                feeds["sample"] = x
                feeds["timestep"] = np.full((n,), t, np.int64 if int_t else np.float32)
                began = time.perf_counter()
                eps = session.run(None, feeds)[0]
                ort_seconds += time.perf_counter() - began
                a_t = abar[t]
                a_prev = abar[t - ratio] if t - ratio >= 0 else 1.0
                x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
                if clip:
                    x0 = np.clip(x0, -clip_range, clip_range)
                x = (np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps).astype(np.float32)
            real = lo + (np.clip(x, lo_hi[0], lo_hi[1]) - lo_hi[0]) * (hi - lo) / (lo_hi[1] - lo_hi[0])
            outputs.append(np.where(m > 0, real, batch))
        return ort_seconds

    run(args.batch)  # warm-up, as synthd bench does
    total, ort_seconds = float("inf"), 0.0
    for _ in range(max(args.repeat, 1)):
        began = time.perf_counter()
        measured_ort = run(args.slices)
        elapsed = time.perf_counter() - began
        if elapsed < total:
            total, ort_seconds = elapsed, measured_ort
    summary = dict(
        ort_seconds=ort_seconds,
        total_seconds=total,
        overhead_ratio=total / ort_seconds,
        slices_per_second=args.slices / total,
        provider="cpu",
        steps=args.steps,
        batch=args.batch,
        slices=args.slices,
        repeat=max(args.repeat, 1),
        onnxruntime=ort.__version__,
    )
    print(f"python loop: {args.slices} slices in {total:.4f} s, session.run {ort_seconds:.4f} s")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
