"""Test the Librex.Alloc seed's claims on synthetic multi-dimensional knapsack instances.

    python scripts/bench_librex.py               # full run: 4 settings x 20 seeds (~11 min wall, 6.5 min CPU)
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

Every claim figure is a per-seed ratio, reported as mean ± std over seeds with the verdict of the mean (within the
claimed band, above it or below it) and the number of seeds that meet the claim on their own. A seed whose ratio is
undefined (a zero denominator: nothing served, or plain CTS's Gini 0) is left out; a setting with none defined gets
no verdict ("undefined").

Writes results/bandits/bench_librex.md and results/bandits/bench_librex_regret.png.
"""

from __future__ import annotations

import argparse
import datetime
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


def _finite(x: np.ndarray) -> tuple[np.ndarray, float, float, str]:
    """The seeds where a ratio is defined (finite: a zero denominator gives NaN or ±inf), their mean and std (NaN if
    none is), and the note a cell adds when some are not."""
    ok = x[np.isfinite(x)]
    mean, std = (float(ok.mean()), float(ok.std())) if ok.size else (float("nan"), float("nan"))
    skipped = f"; {x.size - ok.size} seed(s) undefined" if ok.size < x.size else ""
    return ok, mean, std, skipped


def _finite_mean(x: np.ndarray) -> float:
    """Mean over the seeds where a ratio is defined; NaN if none is."""
    return _finite(x)[1]


def _position(mean: float, lo: float, hi: float) -> str:
    if np.isnan(mean):
        return "undefined"
    return "within" if lo <= mean <= hi else ("above" if mean > hi else "below")


def _band_cell(x: np.ndarray, lo: float, hi: float, *, signed: bool = False) -> str:
    """``mean ± std``, where the mean falls against the claimed band [lo, hi], and how many seeds fall inside it."""
    ok, m, std, skipped = _finite(x)
    inside = int(((ok >= lo) & (ok <= hi)).sum())
    where = {"within": f"within {lo:g}-{hi:g}%", "above": f"above {lo:g}-{hi:g}%",
             "below": f"below {lo:g}-{hi:g}%", "undefined": "undefined"}[_position(m, lo, hi)]
    value = f"{m:+.1f}% ± {std:.1f}" if signed else f"{m:.1f}% ± {std:.1f}"
    return f"{value}: {where} ({inside}/{ok.size} seeds within{skipped})"


def _floor_cell(x: np.ndarray, floor: float) -> str:
    """``mean ± std``, whether the mean reaches ``floor``, and how many seeds do (seeds where the ratio is undefined
    are left out, as in :func:`_band_cell`)."""
    ok, m, std, skipped = _finite(x)
    where = "undefined" if np.isnan(m) else (f">= {floor:g}%" if m >= floor else f"below {floor:g}%")
    return f"{m:.1f}% ± {std:.1f}: {where} ({int((ok >= floor).sum())}/{ok.size} seeds >= {floor:g}%{skipped})"


def _summary(verdicts: dict) -> str:
    """One line per claim: in which settings it holds as stated, and how the others miss it."""
    def names(rows, pred):
        got = [r[0] for r in rows if pred(r)]
        return ", ".join(got) if got else "none"

    def undefined(rows, pred):  # settings where no seed defines the ratio: in none of the lists above
        got = [r[0] for r in rows if pred(r)]
        return f"; undefined in: {', '.join(got)}" if got else ""

    out = ["Verdicts (on the mean over seeds):", "",
           (f"- Claim 1 (CTS +15-25% reward over CUCB) holds in: {names(verdicts['gain'], lambda r: r[1] == 'within')}"
            f"; below the band in: {names(verdicts['gain'], lambda r: r[1] == 'below')}; above it in: "
            f"{names(verdicts['gain'], lambda r: r[1] == 'above')}"
            f"{undefined(verdicts['gain'], lambda r: r[1] == 'undefined')}."),
           f"- Claim 3 (CTS >= 95% of oracle) holds in: {names(verdicts['oracle'], lambda r: r[1])}"
           f"{undefined(verdicts['oracle'], lambda r: r[1] is None)}."]
    for mode in ("CTS-proportional", "CTS-maxmin"):
        rows = verdicts[mode]
        out.append(f"- Claim 2, {mode.removeprefix('CTS-')} mode (Gini cut 30-40% while keeping >= 90% reward): "
                   f"holds as stated in: {names(rows, lambda r: r[1] == 'within' and r[2])}; cuts more than "
                   f"40% with >= 90% kept in: {names(rows, lambda r: r[1] == 'above' and r[2])}; keeps < 90% of the "
                   f"reward in: {names(rows, lambda r: r[2] is False)}; cuts < 30% in: "
                   f"{names(rows, lambda r: r[1] == 'below')}"
                   f"{undefined(rows, lambda r: r[1] == 'undefined' or r[2] is None)}.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--agents", type=int, default=10)
    p.add_argument("--resources", type=int, default=3)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--out", default="results/bandits")
    args = p.parse_args(argv)
    for flag in ("seeds", "agents", "resources", "rounds"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
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
    claims = [("| setting | 1. CTS vs CUCB reward (claim: +15-25%) | 3. CTS % of oracle (claim: >= 95%) "
               "| 2. proportional: Gini cut (claim: 30-40%) | 2. proportional: reward kept (claim: >= 90%) "
               "| 2. maxmin: Gini cut (claim: 30-40%) | 2. maxmin: reward kept (claim: >= 90%) |"),
              "|---|---|---|---|---|---|---|"]
    verdicts: dict = {}
    for budget, agents in SETTINGS:
        setting = f"{budget}/{agents}"
        tot = {k: np.array([pr.sum() for pr, _ in res[(budget, agents, k)]]) for k in POLICIES}
        gin = {k: np.array([g for _, g in res[(budget, agents, k)]]) for k in POLICIES}
        orc = tot["oracle"]
        for k in POLICIES:
            lines.append(f"| {setting} | {k} | {tot[k].mean():.1f} ± {tot[k].std():.1f} | "
                         f"{100 * (tot[k] / orc).mean():.1f}% | {gin[k].mean():.3f} ± {gin[k].std():.3f} |")
        # every figure is a per-seed ratio (same instance, same reward uniforms), then mean ± std over seeds
        gain, of_oracle = 100 * (tot["CTS"] / tot["CUCB"] - 1), 100 * tot["CTS"] / orc
        cells = [_band_cell(gain, 15, 25, signed=True), _floor_cell(of_oracle, 95)]
        for mode in ("CTS-proportional", "CTS-maxmin"):
            with np.errstate(divide="ignore", invalid="ignore"):
                cut = 100 * (1 - gin[mode] / gin["CTS"])  # NaN where plain CTS was perfectly equal (Gini 0)
            kept = 100 * tot[mode] / tot["CTS"]
            cells += [_band_cell(cut, 30, 40), _floor_cell(kept, 90)]
            # the verdicts are those of the cells: on the mean over the seeds where the ratio is defined (None: none is)
            kept_mean = _finite_mean(kept)
            verdicts.setdefault(mode, []).append((setting, _position(_finite_mean(cut), 30, 40),
                                                  None if np.isnan(kept_mean) else bool(kept_mean >= 90)))
        verdicts.setdefault("gain", []).append((setting, _position(_finite_mean(gain), 15, 25)))
        oracle_mean = _finite_mean(of_oracle)
        verdicts.setdefault("oracle", []).append((setting, None if np.isnan(oracle_mean) else bool(oracle_mean >= 95)))
        claims.append(f"| {setting} | " + " | ".join(cells) + " |")
    summary = _summary(verdicts)
    table, claim_table = "\n".join(lines), "\n".join(claims)
    elapsed = time.perf_counter() - t0
    print("\n" + claim_table + "\n\n" + summary + "\n\n" + table)
    with open(os.path.join(args.out, "bench_librex.md"), "w") as f:
        f.write(f"Command: `{cmd}` ({seeds} seeds per setting, {rounds} rounds, {args.agents} agents, "
                f"{args.resources} resources); measured {datetime.date.today().isoformat()} on CPU in "
                f"{elapsed / 60:.1f} min.\n\n### The seed's claims\n\n"
                "Each cell: mean ± std over seeds of a per-seed ratio (policies share the instance and the reward "
                "uniforms within a seed), the verdict of the mean against the claim, and how many seeds meet the "
                "claim on their own. Gini cut = 1 - Gini(fair mode) / Gini(plain CTS); reward kept = reward(fair "
                f"mode) / reward(plain CTS).\n\n{claim_table}\n\n{summary}\n\n"
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
