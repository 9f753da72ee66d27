"""NeuralLinear (Riquelme, Tucker & Snoek 2018): an MLP encoder learns a representation, and a Bayesian linear head
(LinUCB, Li et al. 2010, or linear Thompson sampling, Agrawal & Goyal 2013) on the last hidden layer does the
exploration. This is also the structure of "Deep LinUCB" style models.

The encoder is trained by regression (MSE on the chosen arm's reward through a temporary linear read-out) every
``train_every`` observations on a replay buffer; afterwards the head's statistics are recomputed on the whole buffer
with the new features, as in Riquelme et al. Between retrainings the head updates incrementally like LinUCB/LinTS.

Shapes: N rows, A arms, d context width, F = ``hidden_sizes[-1]`` feature width.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ._validate import _check_int, _check_positive
from .linear import _LinearPolicy
from .nonstationary import _ring_append

__all__ = ["NeuralLinear"]

_HEADS = ("ucb", "ts")


class NeuralLinear(_LinearPolicy):
    """MLP encoder plus a disjoint Bayesian linear head per arm.

    Args:
        n_arms: number of arms A.
        dim: context width d.
        hidden_sizes: MLP widths; the last is the feature width F seen by the head.
        head: ``"ucb"`` (score ``φᵀθ + alpha·sqrt(φᵀA⁻¹φ)``) or ``"ts"`` (draw ``N(φᵀθ, alpha² φᵀA⁻¹φ)``).
        alpha: exploration scale of the head.
        lam: ridge regulariser λ of the head.
        buffer_size: replay-buffer capacity (most recent observations).
        train_every: observations between encoder retrainings.
        train_steps: Adam steps per retraining.
        batch_size: minibatch size for retraining.
        lr: Adam learning rate.
        n_mc: Monte Carlo draws for Thompson propensities.
        seed: seed of the encoder initialisation and of the minibatch sampler.
        device: state device.
        dtype: state dtype; contexts must match.

    Shapes:
        select: contexts ``(N, d)`` or ``(N, A, d)`` -> actions ``(N,)``, propensities ``(N,)``.
    """

    def __init__(self, n_arms: int, dim: int, hidden_sizes: Sequence[int] = (64, 32), head: str = "ucb",
                 alpha: float = 1.0, lam: float = 1.0, *, buffer_size: int = 10_000, train_every: int = 500,
                 train_steps: int = 100, batch_size: int = 256, lr: float = 1e-3, n_mc: int = 128, seed: int = 0,
                 forgetting=None, device=None, dtype=None) -> None:
        if forgetting is not None:
            raise ValueError(f"NeuralLinear does not support forgetting (got {forgetting}); retraining already adapts")
        sizes = tuple(hidden_sizes) if isinstance(hidden_sizes, (list, tuple)) else ()
        if not sizes or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in sizes):
            raise ValueError(f"hidden_sizes must be a non-empty sequence of positive ints, got {hidden_sizes!r}")
        hidden_sizes = sizes
        super().__init__(n_arms, dim, hidden_sizes[-1], lam, device=device, dtype=dtype)
        if head not in _HEADS:
            raise ValueError(f"head must be one of {_HEADS}, got {head!r}")
        buffer_size, train_every, train_steps, batch_size, n_mc = (
            _check_int(name, val) for name, val in (("buffer_size", buffer_size), ("train_every", train_every),
                                                    ("train_steps", train_steps), ("batch_size", batch_size),
                                                    ("n_mc", n_mc)))
        self.hidden_sizes, self.head = hidden_sizes, head
        self.alpha = _check_positive("alpha", alpha, allow_zero=True)
        self.lr = _check_positive("lr", lr)
        self.buffer_size, self.train_every, self.train_steps = buffer_size, train_every, train_steps
        self.batch_size, self.n_mc, self.seed = batch_size, n_mc, _check_int("seed", seed, min_value=0)
        # Seeded CPU initialisation, then moved: identical encoders on every device for one seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            layers: list[nn.Module] = []
            widths = (dim, *hidden_sizes)
            for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
                layers.append(nn.Linear(w_in, w_out, dtype=self.dtype))
                if i < len(hidden_sizes) - 1:
                    layers.append(nn.ReLU())
            self.encoder = nn.Sequential(*layers).to(self.device)
            self.readout = nn.Linear(hidden_sizes[-1], n_arms, dtype=self.dtype).to(self.device)
        dt, dev = self.dtype, self.device
        self.register_buffer("_buf_x", torch.zeros(buffer_size, dim, device=dev, dtype=dt))
        self.register_buffer("_buf_a", torch.zeros(buffer_size, dtype=torch.long, device=dev))
        self.register_buffer("_buf_r", torch.zeros(buffer_size, device=dev, dtype=dt))
        self.register_buffer("_buf_len", torch.zeros((), dtype=torch.long, device=dev))
        self.register_buffer("_buf_pos", torch.zeros((), dtype=torch.long, device=dev))
        self.register_buffer("_since_train", torch.zeros((), dtype=torch.long, device=dev))

    def _features(self, x: Tensor) -> Tensor:
        # The head treats features as fixed inputs; gradients flow only in _train_encoder.
        with torch.no_grad():
            return self.encoder(x)

    def _train_encoder(self) -> None:
        m = int(self._buf_len)
        x, a, r = self._buf_x[:m], self._buf_a[:m], self._buf_r[:m]
        gen = torch.Generator(device=self.device).manual_seed(self.seed + int(self.steps))
        params = list(self.encoder.parameters()) + list(self.readout.parameters())
        opt = torch.optim.Adam(params, lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.train_steps):
                idx = torch.randint(0, m, (min(self.batch_size, m),), generator=gen, device=self.device)
                pred = self.readout(self.encoder(x[idx])).gather(1, a[idx, None])[:, 0]
                loss = torch.mean((pred - r[idx]) ** 2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        # New features invalidate the head: rebuild its statistics from the whole buffer.
        with torch.no_grad():
            self._zero_stats()
            self._accumulate(x, a, r, None)
            self._refresh()

    def update(self, contexts: Tensor, actions: Tensor, rewards: Tensor) -> None:  # noqa: D102
        super().update(contexts, actions, rewards)  # validates all three
        per_arm = contexts.dim() == 3
        actions = actions.long()
        rewards = rewards.to(self.dtype)
        with torch.no_grad():
            x = self._chosen(contexts, actions, per_arm)
            _ring_append((self._buf_x, self._buf_a, self._buf_r), (x, actions, rewards), self._buf_pos, self._buf_len)
            self._since_train += contexts.shape[0]
        if int(self._since_train) >= self.train_every:
            self._since_train.zero_()
            self._train_encoder()

    def scores(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Head score per row and arm (UCB value, or one Thompson draw), ``(N, A)``."""
        contexts, per_arm = self._check_contexts(contexts)
        with torch.no_grad():
            mean, var = self._mean_var(contexts, per_arm)
            if self.head == "ucb":
                return mean + self.alpha * var.sqrt()
            return self._draws(mean, self.alpha * var.sqrt(), None, generator)

    def action_probabilities(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        if self.head == "ucb":
            return self._argmax_probs(self.scores(contexts))
        contexts, per_arm = self._check_contexts(contexts)
        with torch.no_grad():
            mean, var = self._mean_var(contexts, per_arm)
            return self._ts_probabilities(mean, self.alpha * var.sqrt(), generator)

    def select(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if self.head == "ucb":
            return super().select(contexts, generator=generator)
        contexts, per_arm = self._check_contexts(contexts)
        with torch.no_grad():
            mean, var = self._mean_var(contexts, per_arm)
            return self._ts_select(mean, self.alpha * var.sqrt(), generator)

    def _config(self) -> dict[str, Any]:
        cfg = super()._config()
        cfg.pop("solver")
        cfg.pop("forgetting")
        return {**cfg, "hidden_sizes": list(self.hidden_sizes), "head": self.head, "alpha": self.alpha,
                "buffer_size": self.buffer_size, "train_every": self.train_every, "train_steps": self.train_steps,
                "batch_size": self.batch_size, "lr": self.lr, "n_mc": self.n_mc, "seed": self.seed}
