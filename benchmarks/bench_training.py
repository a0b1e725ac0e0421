"""pyrovae's Pyro VAE against a hand-written PyTorch VAE of the same network and estimator.

Both: Fashion-MNIST (statically binarized once, the same draw for both), 784-400-50 MLP with
softplus, Bernoulli likelihood from logits, one-sample Monte Carlo ELBO (Trace_ELBO's estimator),
batch 256, Adam 1e-3, batches sliced from a permuted in-memory index. Prints, side by side,
seconds per training epoch and held-out ELBO of the hand-written loop, pyrovae eager and (on a
GPU) pyrovae with the step captured as a CUDA graph (``--compile graph``), with their ratios. The
hand-written loop runs twice: with PyTorch's default Adam, and with the fused Adam pyrovae uses
(equal work: the ratio to that one is the cost of the Pyro program and its traces);
then times the importance-sampled log p(x) (K samples on the test images) of
``pyrovae.log_likelihood`` against a vectorized hand-written one; then (``--processes``) launches
``torchrun -m pyrovae train`` with 1 and 2 processes and prints training samples per second
(Gloo on the CPU, NCCL on GPUs).

    python benchmarks/bench_training.py [--epochs 5] [--iwae-k 1000] [--iwae-n 10000]
        [--device cpu|cuda] [--processes 1,2] [--sections training,iwae,processes,compile]

``compile`` times one training step of pyrovae's loss (``elbo.differentiable_loss``) eagerly and under
``torch.compile``, after warm-up, and prints the compile time and graph breaks.

Data: ``--data-dir`` or ``$PYROVAE_DATA_DIR`` (e.g. ../shared/data), else torchvision's download.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import pyrovae
from pyrovae.evaluation.metrics import MAX_ELEMENTS


class HandVAE(nn.Module):
    """The reference: the same layers as pyrovae's MLP VAE, written directly in PyTorch."""

    def __init__(self, d=784, h=400, z=50):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(d, h), nn.Linear(h, z), nn.Linear(h, z)
        self.fc3, self.fc4 = nn.Linear(z, h), nn.Linear(h, d)

    def encode(self, x):
        hid = F.softplus(self.fc1(x.flatten(-3)))
        return self.fc21(hid), F.softplus(self.fc22(hid)) + 1e-5

    def decode(self, z):
        return self.fc4(F.softplus(self.fc3(z)))

    def log_weight(self, x, loc, scale, z):
        """log p(x|z) + log p(z) - log q(z|x) per example (any leading particle dims)."""
        logits = self.decode(z)
        rec = -F.binary_cross_entropy_with_logits(logits, x.flatten(-3).expand_as(logits),
                                                  reduction="none").sum(-1)
        log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_qz = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        return rec + log_pz - log_qz

    def loss(self, x):
        loc, scale = self.encode(x)
        z = loc + scale * torch.randn_like(loc)
        return -self.log_weight(x, loc, scale, z).sum()

    @torch.no_grad()
    def held_out_elbo(self, x, batch=1000):
        """Mean ELBO with the closed-form KL, as pyrovae reports it (one draw for the recon)."""
        total = 0.0
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            loc, scale = self.encode(xb)
            z = loc + scale * torch.randn_like(loc)
            rec = -F.binary_cross_entropy_with_logits(self.decode(z), xb.flatten(1),
                                                      reduction="none").sum(-1)
            kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(-1)
            total += (rec - kl).sum().item()
        return total / len(x)

    @torch.no_grad()
    def log_likelihood(self, x, k, max_elements=MAX_ELEMENTS):
        """Vectorized importance sampling, chunked like pyrovae's, ``(N,)``."""
        per = max(1, max_elements // (784 * k))
        out = torch.empty(len(x), device=x.device)
        for i in range(0, len(x), per):
            xb = x[i:i + per]
            loc, scale = self.encode(xb)
            z = loc + scale * torch.randn(k, *loc.shape, device=x.device)
            out[i:i + per] = torch.logsumexp(self.log_weight(xb, loc, scale, z), 0) - math.log(k)
        return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class HandTrainer:
    """The hand-written training loop, one epoch per call; ``fused``: the Adam kernel pyrovae uses."""

    def __init__(self, data, device, seed, fused=False):
        torch.manual_seed(seed)
        self.vae = HandVAE().to(device)
        self.opt = torch.optim.Adam(self.vae.parameters(), lr=1e-3, fused=fused or None)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.data, self.device = data, device

    def epoch(self) -> float:
        x_all, n = self.data.train_x, len(self.data.train_x)
        perm = torch.randperm(n, generator=self.gen, device=self.device)
        sync(self.device)
        t0 = time.perf_counter()
        for i in range(0, n, 256):
            loss = self.vae.loss(x_all[perm[i:i + 256]])
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - t0


def bench_training(args, data, device) -> tuple[pyrovae.Run, HandVAE]:
    """Hand-written, pyrovae eager and (CUDA) pyrovae graph: seconds per epoch, held-out ELBO."""
    # Epochs alternate (hand-written, then pyrovae resumed from its checkpoint for one more epoch),
    # so that machine noise hits both alike; pyrovae's time is its own `seconds` metric.
    hand = HandTrainer(data, device, args.seed)
    fused = HandTrainer(data, device, args.seed, fused=True)
    config = dict(dataset="fashion-mnist", data=data, binarize="none", likelihood="bernoulli",
                  net="mlp", hidden=[400], z_dim=50, batch_size=256, lr=1e-3, seed=args.seed,
                  device=args.device, estimator=args.estimator, progress=False, figures=False)
    hand_times, fused_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in range(1, args.epochs + 1):
            hand_times.append(hand.epoch())
            fused_times.append(fused.epoch())
            if epoch == 1:
                run = pyrovae.train(run_dir=tmp, epochs=1, **config)
            else:
                run = pyrovae.train(run_dir=tmp, resume=True, epochs=epoch, data=data,
                                    progress=False, figures=False)
    pyro_times = [r["seconds"] for r in run.metrics]
    graph = None
    if device.type == "cuda":  # one continuous run: each resume would capture again
        graph = pyrovae.train(epochs=args.epochs, compile="graph", **config)
    th, tp = statistics.median(hand_times), statistics.median(pyro_times)
    tf = statistics.median(fused_times)
    torch.manual_seed(1)
    elbo_hand = hand.vae.held_out_elbo(data.test_x)
    torch.manual_seed(1)
    elbo_fused = fused.vae.held_out_elbo(data.test_x)
    print("\n| training, one epoch | seconds (median) | ratio to hand-written, default Adam | "
          "ratio to hand-written, fused Adam (equal work) | held-out ELBO (nats) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| hand-written PyTorch, default Adam | {th:.3f} | 1 | {th / tf:.3f} | {elbo_hand:.2f} |")
    print(f"| hand-written PyTorch, fused Adam | {tf:.3f} | {tf / th:.3f} | 1 | {elbo_fused:.2f} |")
    print(f"| pyrovae eager (--estimator {args.estimator}) | {tp:.3f} | {tp / th:.3f} | "
          f"**{tp / tf:.3f}** | {run.metrics[-1]['test_elbo']:.2f} |")
    if graph is not None:
        times = [r["seconds"] for r in graph.metrics]
        tg = statistics.median(times[1:] or times)  # epoch 1 includes warm-up and capture
        print(f"| pyrovae --compile graph | {tg:.3f} | {tg / th:.3f} | **{tg / tf:.3f}** | "
              f"{graph.metrics[-1]['test_elbo']:.2f} |")
        print(f"graph epoch times (the first includes capture): {[round(t, 3) for t in times]}")
    else:
        print("(pyrovae --compile graph needs a CUDA device: not run on", device, ")")
    ratios = [p / h for p, h in zip(pyro_times, fused_times, strict=True)]
    print(f"per-epoch ratios pyrovae eager / hand-written fused: {[round(r, 3) for r in ratios]}, "
          f"median {statistics.median(ratios):.3f}")
    print(f"epoch times: hand default {[round(t, 3) for t in hand_times]}, hand fused "
          f"{[round(t, 3) for t in fused_times]}, pyrovae eager {[round(t, 3) for t in pyro_times]}")
    return run, hand.vae


def bench_compile(args, data, device) -> None:
    """One step of pyrovae's loss and backward, eager against ``torch.compile``: median seconds."""
    import logging

    import torch._dynamo

    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # recompile-limit warnings: counted below
    from pyrovae.infer.beta import KLWeight
    from pyrovae.infer.registry import make_elbo

    vae = pyrovae.VAE((1, 28, 28), z_dim=50, hidden=[400]).to(device)
    elbo = make_elbo(args.estimator, max_plate_nesting=1)
    beta = torch.ones((), device=device)
    model, guide = KLWeight(beta)(vae.model), KLWeight(beta)(vae.guide)
    x = data.train_x[:256]

    def step():
        loss = elbo.differentiable_loss(model, guide, x)
        loss.backward()
        for p in vae.parameters():
            p.grad = None
        return loss

    def timed(fn, n=30):
        for _ in range(3):
            fn()
        times = []
        for _ in range(n):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    import pyro

    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        eager = timed(step)
        torch._dynamo.reset()
        compiled = torch.compile(step)
        t0 = time.perf_counter()
        compiled()
        first = time.perf_counter() - t0
        explain = torch._dynamo.explain(step)()
        fast = timed(compiled)
    print(f"\n| one step (loss + backward, batch 256, {args.estimator}) | seconds (median of 30) | ratio |")
    print("| --- | --- | --- |")
    print(f"| pyrovae eager | {eager * 1e3:.2f} ms | 1 |")
    print(f"| pyrovae under torch.compile | {fast * 1e3:.2f} ms | {fast / eager:.3f} |")
    print(f"torch.compile: first call {first:.1f} s, {explain.graph_count} graphs, "
          f"{explain.graph_break_count} graph breaks")
    reasons = sorted({str(b.reason).splitlines()[0][:100] for b in explain.break_reasons})
    for reason in reasons[:8]:
        print(f"  break: {reason}")


def bench_iwae(args, data, device, run, hand) -> None:
    x = data.test_x[: args.iwae_n]
    run.vae.eval()
    sync(device)
    t0 = time.perf_counter()
    lp_hand = hand.log_likelihood(x, args.iwae_k).mean().item()
    sync(device)
    t1 = time.perf_counter()
    lp_pyro = pyrovae.log_likelihood(run.vae, x, args.iwae_k).mean().item()
    sync(device)
    t2 = time.perf_counter()
    print(f"\n| log p(x), K={args.iwae_k}, {len(x)} images | seconds | log p(x) (nats) |")
    print("| --- | --- | --- |")
    print(f"| hand-written, vectorized | {t1 - t0:.1f} | {lp_hand:.2f} |")
    print(f"| pyrovae.log_likelihood | {t2 - t1:.1f} | {lp_pyro:.2f} |")
    print(f"| ratio pyrovae / hand-written | **{(t2 - t1) / (t1 - t0):.3f}** | |")


def bench_processes(args) -> None:
    """``torchrun --nproc-per-node N -m pyrovae train`` for each N: training samples per second.

    Every run uses all the machine's cores, N processes of ``cores // N`` threads each; on the
    CPU one single-threaded process is added for scale.
    """
    cores = os.cpu_count() or 1
    print(f"\n| data-parallel training ({args.device}), batch {args.dp_batch_size}, {args.epochs} "
          "epochs | threads per "
          "process | seconds per epoch (median of epochs 2+) | samples / s | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    base = None
    repo = Path(__file__).resolve().parents[1]
    runs = [(n, max(1, cores // n) if args.device == "cpu" else 1) for n in args.processes]
    if args.device == "cpu" and cores > 1 and 1 in args.processes:
        runs.insert(1, (1, 1))  # for scale: one process on one core
    for nproc, threads in runs:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={nproc}", "-m", "pyrovae", "train", "--no-progress",
                   "--dataset", "fashion-mnist", "--binarize", "static", "--epochs", str(args.epochs),
                   "--batch-size", str(args.dp_batch_size), "--device", args.device, "--seed", str(args.seed),
                   "--estimator", args.estimator, "--out", tmp]
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            rows = [json.loads(line) for line in open(Path(tmp) / "metrics.jsonl")]
        seconds = statistics.median([r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]])
        rate = 60000 / seconds
        base = base or rate
        print(f"| {nproc} process{'es' if nproc > 1 else ''} | {threads} | {seconds:.2f} | "
              f"{rate:,.0f} | {rate / base:.2f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--iwae-k", type=int, default=1000)
    p.add_argument("--iwae-n", type=int, default=10000, help="test images for log p(x)")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--estimator", default="trace",
                   help="pyrovae's objective (the reference is always the one-sample ELBO)")
    p.add_argument("--processes", type=lambda s: [int(n) for n in s.split(",")], default=[1, 2],
                   help="process counts for the data-parallel section (default 1,2)")
    p.add_argument("--dp-batch-size", type=int, default=256,
                   help="global batch of the data-parallel section (default 256)")
    p.add_argument("--sections", default="training,iwae,processes,compile",
                   help="comma-separated: training, iwae, processes, compile")
    args = p.parse_args()
    sections = set(args.sections.split(","))
    device = torch.device(args.device)
    args.data_dir = args.data_dir or os.environ.get("PYROVAE_DATA_DIR")

    raw = pyrovae.load_dataset("fashion-mnist", args.data_dir)
    gen = torch.Generator().manual_seed(args.seed)
    data = pyrovae.Dataset("fashion-mnist", pyrovae.binarize(raw.train_x, gen),
                           pyrovae.binarize(raw.test_x, gen)).to(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{len(data.train_x)} train / {len(data.test_x)} test images, {args.epochs} epochs each")
    if sections & {"training", "iwae"}:
        run, hand = bench_training(args, data, device)
        if "iwae" in sections and args.iwae_k > 0:
            bench_iwae(args, data, device, run, hand)
    if "compile" in sections:
        bench_compile(args, data, device)
    if "processes" in sections:
        bench_processes(args)


if __name__ == "__main__":
    main()
