"""Test the Librex.Alloc seed's claims on synthetic multi-dimensional knapsack instances.

    python scripts/bench_librex.py               # full run: 4 settings x 20 seeds (several minutes on 2 cores)
    python scripts/bench_librex.py --quick       # 3 seeds, short horizon

Each round, n agents request resource vectors (R types) and the allocator serves a subset within the budget; a served
agent returns a Bernoulli reward with its unknown mean. Settings cross a loose budget (about 45% of the total request)
with a tight one (about 15%), and homogeneous agents (means in [0.4, 0.6], similar request sizes) with heterogeneous
ones (means in [0.05, 0.95], request sizes scaled per agent by 0.3..1.7). Every policy sees the same request sequence
and the same reward uniforms within a seed. Metrics: cumulative expected reward (sum of the true means served),
regret against the per-round oracle knapsack on the true means, and the Gini coefficient of per-agent allocation counts.

The claims under test (from the seed; they are hypotheses, reported whatever they show):
  1. constrained TS gains 15-25% reward over constrained UCB;
  2. a fairness mode cuts the Gini coefficient by 30-40% while keeping >= 90% of the reward;
  3. constrained TS reaches >= 95% of the oracle.

Writes results/bandits/bench_librex.md and results/bandits/bench_librex_regret.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from arr_coc.bandits import (  # noqa: E402
    ConstrainedThompsonSampling,
    ConstrainedUCB1,
    EpsilonGreedyAlloc,
    GreedyAlloc,
    OracleAlloc,
    ProportionalAlloc,
    RoundRobinAlloc,
    UnconstrainedTS,
    gini,
)

POLICIES = {
    "CTS": lambda n, r, mu, s: ConstrainedThompsonSampling(n, r, "none", seed=s),
    "CTS-proportional": lambda n, r, mu, s: ConstrainedThompsonSampling(n, r, "proportional", seed=s),
    "CTS-maxmin": lambda n, r, mu, s: ConstrainedThompsonSampling(n, r, "maxmin", seed=s),
    "CUCB": lambda n, r, mu, s: ConstrainedUCB1(n, r, seed=s),
    "UnconstrainedTS": lambda n, r, mu, s: UnconstrainedTS(n, r, seed=s),
    "eps-greedy": lambda n, r, mu, s: EpsilonGreedyAlloc(n, r, 0.1, seed=s),
    "round-robin": lambda n, r, mu, s: RoundRobinAlloc(n, r, seed=s),
    "proportional": lambda n, r, mu, s: ProportionalAlloc(n, r, seed=s),
    "greedy": lambda n, r, mu, s: GreedyAlloc(n, r, seed=s),
    "oracle": lambda n, r, mu, s: OracleAlloc(n, r, mu, seed=s),
}
SETTINGS = [(b, a) for b in ("loose", "tight") for a in ("homogeneous", "heterogeneous")]


def _instance(budget: str, agents: str, n: int, r: int, rounds: int, seed: int):
    rng = np.random.default_rng(seed)
    if agents == "homogeneous":
        mu = rng.uniform(0.4, 0.6, n)
        scale = np.ones(n)
    else:
        mu = rng.uniform(0.05, 0.95, n)
        scale = rng.uniform(0.3, 1.7, n)
    req = rng.uniform(0.5, 1.0, (rounds, n, r)) * scale[None, :, None]
    frac = 0.45 if budget == "loose" else 0.15
    cap = np.full(r, frac * float(req.sum(1).mean()))  # fraction of the mean total request per resource
    u = rng.random((rounds, n))
    return mu, req, cap, u


def _run(pol, mu, req, cap, u) -> tuple[np.ndarray, float]:
    """Expected reward per round, and the final Gini of allocation counts."""
    per_round = np.zeros(req.shape[0])
    for t in range(req.shape[0]):
        x = pol.allocate(req[t], cap).numpy().astype(bool)
        assert np.all(req[t][x].sum(0) <= cap + 1e-9), "budget violated"
        agents = np.nonzero(x)[0]
        if agents.size:
            pol.update(agents, (u[t, agents] < mu[agents]).astype(np.float64))
        per_round[t] = mu[x].sum()
    return per_round, gini(pol.alloc_counts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--agents", type=int, default=10)
    p.add_argument("--resources", type=int, default=3)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--out", default="results/bandits")
    args = p.parse_args(argv)
    seeds = 3 if args.quick else args.seeds
    rounds = 30 if args.quick else args.rounds
    os.makedirs(args.out, exist_ok=True)
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0])] + (sys.argv[1:] if argv is None else argv))
    print(f"# {cmd}")
    res: dict = {}
    t0 = time.perf_counter()
    for budget, agents in SETTINGS:
        for seed in range(seeds):
            mu, req, cap, u = _instance(budget, agents, args.agents, args.resources, rounds, seed)
            for name, make in POLICIES.items():
                per_round, g = _run(make(args.agents, args.resources, mu, seed), mu, req, cap, u)
                res.setdefault((budget, agents, name), []).append((per_round, g))
        print(f"  {budget}/{agents}: done at {time.perf_counter() - t0:.0f}s", flush=True)

    lines = ["| setting | policy | reward (mean ± std) | % of oracle | Gini (mean ± std) |", "|---|---|---|---|---|"]
    claims = ["| setting | CTS vs CUCB reward | CTS % of oracle | proportional: Gini cut / reward kept "
              "| maxmin: Gini cut / reward kept |", "|---|---|---|---|---|"]
    for budget, agents in SETTINGS:
        tot = {k: np.array([pr.sum() for pr, _ in res[(budget, agents, k)]]) for k in POLICIES}
        gin = {k: np.array([g for _, g in res[(budget, agents, k)]]) for k in POLICIES}
        orc = tot["oracle"]
        for k in POLICIES:
            lines.append(f"| {budget}/{agents} | {k} | {tot[k].mean():.1f} ± {tot[k].std():.1f} | "
                         f"{100 * (tot[k] / orc).mean():.1f}% | {gin[k].mean():.3f} ± {gin[k].std():.3f} |")
        gain = 100 * (tot["CTS"] / tot["CUCB"] - 1)
        frac = 100 * tot["CTS"] / orc
        cells = []
        for mode in ("CTS-proportional", "CTS-maxmin"):
            cut = 100 * (1 - gin[mode].mean() / gin["CTS"].mean())
            kept = 100 * (tot[mode] / tot["CTS"]).mean()
            ok = 30 <= cut and kept >= 90
            cells.append(f"{cut:.1f}% / {kept:.1f}% ({'meets' if ok else 'does not meet'} >=30% cut at >=90%)")
        claims.append(f"| {budget}/{agents} | {gain.mean():+.1f}% ± {gain.std():.1f} "
                      f"({'in' if 15 <= gain.mean() <= 25 else 'outside'} 15-25%) | {frac.mean():.1f}% ± "
                      f"{frac.std():.1f} ({'meets' if frac.mean() >= 95 else 'below'} 95%) | "
                      + " | ".join(cells) + " |")
    table, claim_table = "\n".join(lines), "\n".join(claims)
    print("\n" + claim_table + "\n\n" + table)
    with open(os.path.join(args.out, "bench_librex.md"), "w") as f:
        f.write(f"Command: `{cmd}` ({seeds} seeds per setting, {rounds} rounds, {args.agents} agents, "
                f"{args.resources} resources).\n\n### The seed's claims\n\n{claim_table}\n\n"
                f"### All policies\n\n{table}\n")
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(4.2 * len(SETTINGS), 3.6), squeeze=False)
    for ax, (budget, agents) in zip(axes[0], SETTINGS):
        orc = np.array([pr for pr, _ in res[(budget, agents, "oracle")]])
        for k in POLICIES:
            if k == "oracle":
                continue
            pr = np.array([p_ for p_, _ in res[(budget, agents, k)]])
            ax.plot(np.cumsum(orc - pr, axis=1).mean(0), label=k)
        ax.set_title(f"{budget} / {agents}", fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative regret vs oracle")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "bench_librex_regret.png"), dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}/bench_librex.md and bench_librex_regret.png ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
