"""Benchmark arr_coc.bandits against MABWiser and OBP (zr-obp) on the same data in the same run.

    python scripts/bench_bandits.py                # full run (a few minutes on 2 CPU cores)
    python scripts/bench_bandits.py --quick        # smoke run
    python scripts/bench_bandits.py --device cuda  # also time the torch policies on a GPU

Two parts:

1. **Reward.** Online simulation, batch of 32 decisions per round (select for the batch, reveal rewards, update), on
   OBP's ``SyntheticBanditDataset`` (binary rewards, logistic reward function) and on supervised-to-bandit
   conversions of scikit-learn's bundled datasets (digits, wine, breast_cancer: arm = class, reward = 1 when the arm is
   the label). Matched exploration settings: LinUCB alpha=1, lambda=1; LinTS v=1, lambda=1; epsilon-greedy eps=0.1;
   Beta(1,1) Thompson sampling. OBP updates its parameters every 32 rows (``batch_size=32``), MABWiser ``partial_fit``s
   each batch, ours ``update``s each batch. Every library sees the same contexts and the same reward draws
   (rewards are drawn from the per-row expected rewards with a fixed uniform per row and arm).
2. **Throughput.** Decisions per second of ``select`` (ours), ``predict`` (MABWiser) and ``select_action`` (OBP,
   per row, it has no batched call) at batch 1 and batch 4096, best of several repeats, CPU threads pinned to
   ``--threads`` for torch and the NumPy BLAS alike. Ours includes propensity computation; the others return actions
   only.

Tables go to stdout and to ``results/bandits/bench_bandits.md``; plots to ``results/bandits/*.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings


def _pin_threads(n: int) -> None:
    # must happen before numpy / torch import their BLAS
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rows and seeds")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rows", type=int, default=6000, help="decisions per simulated stream")
    p.add_argument("--batch", type=int, default=32, help="decisions per round in the reward simulation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="extra device for the throughput table (cpu always runs)")
    p.add_argument("--out", default="results/bandits")
    args = p.parse_args(argv)
    # checked before anything runs: 0 threads would reach the BLAS env vars, a negative batch simulated nothing
    # (reward 0, regret 0) and 0 failed in range(), 0 rows failed on an empty regret curve, and 0 seeds only in the
    # plots, after the whole throughput run
    for flag in ("seeds", "rows", "batch", "threads"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    return args


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    _pin_threads(ARGS.threads)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore")

from arr_coc.bandits import EpsilonGreedy, LinTS, LinUCB, ThompsonSampling  # noqa: E402

POLICIES = ("LinUCB", "LinTS", "EpsilonGreedy", "ThompsonSampling")


# ---------------------------------------------------------------------------------------------------- data
def _datasets(rows: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (contexts (T, d) float64, expected rewards (T, A) in [0, 1])."""
    from obp.dataset import SyntheticBanditDataset, logistic_reward_function
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine

    out = {}
    ds = SyntheticBanditDataset(n_actions=10, dim_context=10, reward_type="binary",
                                reward_function=logistic_reward_function, random_state=seed)
    fb = ds.obtain_batch_bandit_feedback(n_rounds=rows)
    out["obp_synthetic"] = (fb["context"].astype(np.float64), fb["expected_reward"].astype(np.float64))
    rng = np.random.default_rng(seed)
    for name, loader in (("digits", load_digits), ("wine", load_wine), ("breast_cancer", load_breast_cancer)):
        x, y = loader(return_X_y=True)
        x = (x - x.mean(0)) / (x.std(0) + 1e-8)
        idx = rng.integers(0, x.shape[0], rows)  # a stream sampled with replacement
        n_cls = int(y.max()) + 1
        out[name] = (x[idx].astype(np.float64), np.eye(n_cls)[y[idx]])
    return out


# ---------------------------------------------------------------------------------------------------- adapters
class _Ours:
    name = "arr_coc"

    def __init__(self, policy: str, n_arms: int, dim: int, seed: int, device: str = "cpu") -> None:
        kw = {"device": device, "dtype": torch.float64}
        self.p = {"LinUCB": lambda: LinUCB(n_arms, dim, alpha=1.0, lam=1.0, **kw),
                  "LinTS": lambda: LinTS(n_arms, dim, v=1.0, lam=1.0, **kw),
                  "EpsilonGreedy": lambda: EpsilonGreedy(n_arms, 0.1, **kw),
                  "ThompsonSampling": lambda: ThompsonSampling(n_arms, "beta", **kw)}[policy]()
        self.g = torch.Generator(device=device).manual_seed(seed)
        self.device = device

    def select(self, x: np.ndarray) -> np.ndarray:
        a, _ = self.p.select(torch.from_numpy(x).to(self.device), generator=self.g)
        return a.cpu().numpy()

    def update(self, x: np.ndarray, a: np.ndarray, r: np.ndarray) -> None:
        dev = self.device
        self.p.update(torch.from_numpy(x).to(dev), torch.from_numpy(a).to(dev), torch.from_numpy(r).to(dev))


class _Mab:
    name = "MABWiser"

    def __init__(self, policy: str, n_arms: int, dim: int, seed: int) -> None:
        from mabwiser.mab import MAB, LearningPolicy

        lp = {"LinUCB": lambda: LearningPolicy.LinUCB(alpha=1.0, l2_lambda=1.0),
              "LinTS": lambda: LearningPolicy.LinTS(alpha=1.0, l2_lambda=1.0),
              "EpsilonGreedy": lambda: LearningPolicy.EpsilonGreedy(epsilon=0.1),
              "ThompsonSampling": lambda: LearningPolicy.ThompsonSampling()}[policy]()
        self.contextual = policy.startswith("Lin")
        self.mab = MAB(list(range(n_arms)), lp, seed=seed)
        self.fitted = False
        self.n_arms = n_arms
        self.rng = np.random.default_rng(seed)

    def select(self, x: np.ndarray) -> np.ndarray:
        if not self.fitted:  # MABWiser cannot predict before fit: play uniformly until the first batch is seen
            return self.rng.integers(0, self.n_arms, x.shape[0])
        out = self.mab.predict(x if self.contextual else np.zeros((x.shape[0], 1)))
        return np.atleast_1d(np.asarray(out, dtype=np.int64))

    def update(self, x: np.ndarray, a: np.ndarray, r: np.ndarray) -> None:
        ctx = x if self.contextual else None
        r = r if self.contextual else r.astype(int)
        if self.fitted:
            self.mab.partial_fit(a, r, ctx)
        else:
            self.mab.fit(a, r, ctx)
            self.fitted = True


class _Obp:
    name = "OBP"

    def __init__(self, policy: str, n_arms: int, dim: int, seed: int, batch: int = 32) -> None:
        from obp.policy import BernoulliTS, EpsilonGreedy as ObpEps, LinTS as ObpLinTS, LinUCB as ObpLinUCB

        self.contextual = policy.startswith("Lin")
        self.p = {"LinUCB": lambda: ObpLinUCB(dim=dim, n_actions=n_arms, epsilon=1.0, batch_size=batch,
                                              random_state=seed),
                  "LinTS": lambda: ObpLinTS(dim=dim, n_actions=n_arms, batch_size=batch, random_state=seed),
                  "EpsilonGreedy": lambda: ObpEps(n_actions=n_arms, epsilon=0.1, batch_size=batch, random_state=seed),
                  "ThompsonSampling": lambda: BernoulliTS(n_actions=n_arms, batch_size=batch, random_state=seed)
                  }[policy]()

    def select(self, x: np.ndarray) -> np.ndarray:
        if self.contextual:
            return np.array([self.p.select_action(x[i:i + 1])[0] for i in range(x.shape[0])])
        return np.array([self.p.select_action()[0] for _ in range(x.shape[0])])

    def update(self, x: np.ndarray, a: np.ndarray, r: np.ndarray) -> None:
        for i in range(x.shape[0]):
            if self.contextual:
                self.p.update_params(int(a[i]), float(r[i]), x[i:i + 1])
            else:
                self.p.update_params(int(a[i]), float(r[i]))


# ---------------------------------------------------------------------------------------------------- reward
def _simulate(agent, x: np.ndarray, mu: np.ndarray, u: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """Returns (cumulative reward, cumulative-regret curve per row)."""
    t = x.shape[0]
    regret = np.zeros(t)
    total = 0.0
    for s in range(0, t, batch):
        xb = x[s:s + batch]
        a = agent.select(xb)
        r = (u[s:s + batch, :][np.arange(a.shape[0]), a] < mu[s:s + batch][np.arange(a.shape[0]), a]).astype(
            np.float64)
        agent.update(xb, a.astype(np.int64), r)
        total += r.sum()
        regret[s:s + batch] = mu[s:s + batch].max(1) - mu[s:s + batch][np.arange(a.shape[0]), a]
    return total, np.cumsum(regret)


def reward_table(args) -> tuple[list[dict], dict]:
    rows, curves = [], {}
    seeds = 1 if args.quick else args.seeds
    n_rows = 1500 if args.quick else args.rows
    for seed in range(seeds):
        data = _datasets(n_rows, seed)
        for dname, (x, mu) in data.items():
            u = np.random.default_rng(1000 + seed).random(mu.shape)
            for pol in POLICIES:
                for make in (_Ours, _Mab, _Obp):
                    agent = make(pol, mu.shape[1], x.shape[1], seed)
                    t0 = time.perf_counter()
                    total, curve = _simulate(agent, x, mu, u, args.batch)
                    wall = time.perf_counter() - t0
                    rows.append({"dataset": dname, "policy": pol, "lib": make.name, "seed": seed, "reward": total,
                                 "regret": float(curve[-1]), "wall_s": wall, "n": n_rows})
                    curves.setdefault((dname, pol, make.name), []).append(curve)
                    print(f"  seed {seed} {dname:14s} {pol:16s} {make.name:8s} reward {total:8.0f} "
                          f"regret {curve[-1]:8.1f} ({wall:5.1f}s)", flush=True)
    return rows, curves


# ---------------------------------------------------------------------------------------------------- throughput
def _best_rate(fn, n_decisions: int, min_time: float = 0.3, repeats: int = 3) -> float:
    """Decisions per second: best of ``repeats`` timings, each looping ``fn`` for at least ``min_time`` seconds."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = min(best, dt / calls)
    return n_decisions / best


def throughput_table(args) -> list[dict]:
    n_arms, dim = 10, 20
    rng = np.random.default_rng(0)
    warm_x = rng.standard_normal((512, dim))
    warm_a = rng.integers(0, n_arms, 512)
    warm_r = (rng.random(512) < 0.5).astype(np.float64)
    devices = ["cpu"] + ([args.device] if args.device != "cpu" else [])
    out = []
    for pol in POLICIES:
        for batch in (1, 4096):
            x = rng.standard_normal((batch, dim))
            agents = [_Ours(pol, n_arms, dim, 0, dev) for dev in devices] + [_Mab(pol, n_arms, dim, 0),
                                                                                 _Obp(pol, n_arms, dim, 0)]
            for ag in agents:
                ag.update(warm_x, warm_a, warm_r)
                label = ag.name + ("" if not isinstance(ag, _Ours) else f"[{ag.device}]")
                if isinstance(ag, _Ours):
                    xt = torch.from_numpy(x).to(ag.device)

                    def fn(ag=ag, xt=xt):
                        ag.p.select(xt, generator=ag.g)
                        if ag.device != "cpu":
                            torch.cuda.synchronize()
                elif isinstance(ag, _Obp) and batch > 256:
                    # OBP decides row by row; time 256 rows and report the per-row rate (it does not batch)
                    fn = (lambda ag=ag, xs=x[:256]: ag.select(xs))
                else:
                    fn = (lambda ag=ag, xs=x: ag.select(xs))
                n_dec = 256 if isinstance(ag, _Obp) and batch > 256 else batch
                rate = _best_rate(fn, n_dec, min_time=0.2 if args.quick else 0.4)
                out.append({"policy": pol, "batch": batch, "lib": label, "decisions_per_s": rate})
                print(f"  {pol:16s} batch {batch:5d} {label:14s} {rate:14,.0f} decisions/s", flush=True)
    return out


# ---------------------------------------------------------------------------------------------------- report
def _fmt_reward(rows: list[dict]) -> str:
    import collections

    agg = collections.defaultdict(list)
    for r in rows:
        agg[(r["dataset"], r["policy"], r["lib"])].append((r["reward"], r["regret"], r["wall_s"]))
    lines = ["| dataset | policy | arr_coc reward | MABWiser reward | OBP reward | arr_coc regret | MABWiser regret "
             "| OBP regret | arr_coc/MABWiser reward | arr_coc/OBP reward |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(d, p) for d, p, _ in agg}, key=lambda k: (k[0], POLICIES.index(k[1])))
    for d, p in keys:
        m = {lib: np.array(agg[(d, p, lib)]) for lib in ("arr_coc", "MABWiser", "OBP")}
        rew = {lib: (v[:, 0].mean(), v[:, 0].std()) for lib, v in m.items()}
        reg = {lib: (v[:, 1].mean(), v[:, 1].std()) for lib, v in m.items()}
        lines.append(f"| {d} | {p} | " + " | ".join(f"{rew[lib][0]:.0f} ± {rew[lib][1]:.0f}" for lib in m) + " | "
                     + " | ".join(f"{reg[lib][0]:.1f} ± {reg[lib][1]:.1f}" for lib in m)
                     + f" | {rew['arr_coc'][0] / rew['MABWiser'][0]:.3f} | {rew['arr_coc'][0] / rew['OBP'][0]:.3f} |")
    return "\n".join(lines)


def _fmt_speed(rows: list[dict]) -> str:
    libs = list(dict.fromkeys(r["lib"] for r in rows))
    ours = [lib for lib in libs if lib.startswith("arr_coc")]
    head = "| policy | batch | " + " | ".join(libs) + " | " + " | ".join(
        f"{o}/MABWiser | {o}/OBP" for o in ours) + " |"
    lines = [head, "|" + "---|" * (2 + len(libs) + 2 * len(ours))]
    for pol in POLICIES:
        for batch in (1, 4096):
            v = {r["lib"]: r["decisions_per_s"] for r in rows if r["policy"] == pol and r["batch"] == batch}
            ratios = " | ".join(f"{v[o] / v['MABWiser']:.2f}x | {v[o] / v['OBP']:.2f}x" for o in ours)
            lines.append(f"| {pol} | {batch} | " + " | ".join(f"{v[lib]:,.0f}" for lib in libs) + f" | {ratios} |")
    return "\n".join(lines)


def _plots(curves: dict, speed: list[dict], out: str) -> None:
    datasets = sorted({k[0] for k in curves})
    fig, axes = plt.subplots(len(datasets), len(POLICIES), figsize=(4 * len(POLICIES), 3 * len(datasets)),
                             squeeze=False)
    for i, d in enumerate(datasets):
        for j, p in enumerate(POLICIES):
            ax = axes[i][j]
            for lib in ("arr_coc", "MABWiser", "OBP"):
                c = np.mean(curves[(d, p, lib)], axis=0)
                ax.plot(c, label=lib)
            ax.set_title(f"{d} / {p}", fontsize=9)
            ax.set_xlabel("decision")
            ax.set_ylabel("cumulative regret")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bench_bandits_regret.png"), dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    libs = list(dict.fromkeys(r["lib"] for r in speed))
    for ax, batch in zip(axes, (1, 4096)):
        xs = np.arange(len(POLICIES))
        for k, lib in enumerate(libs):
            vals = [next(r["decisions_per_s"] for r in speed if r["policy"] == p and r["batch"] == batch
                         and r["lib"] == lib) for p in POLICIES]
            ax.bar(xs + k * 0.8 / len(libs), vals, width=0.8 / len(libs), label=lib)
        ax.set_yscale("log")
        ax.set_xticks(xs + 0.4 - 0.4 / len(libs))
        ax.set_xticklabels(POLICIES, fontsize=8)
        ax.set_title(f"decisions/s, batch {batch}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bench_bandits_throughput.png"), dpi=110)
    plt.close(fig)


def main(args) -> None:
    try:  # a device the throughput table cannot use is refused now, not after the reward part's minutes
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"--device {args.device!r} is not usable here: {e}") from e
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    print(f"# {cmd}\n# torch {torch.__version__}, threads {args.threads}\n## reward")
    rows, curves = reward_table(args)
    print("## throughput")
    speed = throughput_table(args)
    rew_md, speed_md = _fmt_reward(rows), _fmt_speed(speed)
    print("\n" + rew_md + "\n\n" + speed_md)
    with open(os.path.join(args.out, "bench_bandits.md"), "w") as f:
        f.write(f"Command: `{cmd}` (torch {torch.__version__}, {args.threads} CPU thread(s), "
                f"{1 if args.quick else args.seeds} seed(s), {1500 if args.quick else args.rows} decisions per stream, "
                f"batch {args.batch}).\n\n### Cumulative reward and regret (mean ± std over seeds)\n\n{rew_md}\n\n"
                f"### Decisions per second (select only; best of 3)\n\n{speed_md}\n")
    _plots(curves, speed, args.out)


if __name__ == "__main__":
    main(ARGS)
