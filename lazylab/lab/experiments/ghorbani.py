"""Ghorbani, Mei, Misiakiewicz & Montanari (2019): RF vs NT vs NN two-layer nets.

``ghorbani-quadratic``: ``x ~ N(0, I_d)``, target ``f*(x) = x^T B x - tr B`` with the official code's
``B = diag(gamma)/sqrt(d)``, ``gamma_i ~ Exp(1)`` (numpy seed 100). One model for all three regimes:
``TwoLayerNet(d, N, activation, scaling="mean_field", bias=True)``, i.e.
``f(x) = c + (1/N) sum_j a_j sigma(<w_j, x>/sqrt(d))``, with the hidden biases set to 0 and frozen (so
the classes are exactly the paper's ``c + sum_i a_i sigma(<w_i, x>)``), ``w_j ~ N(0, I_d)``:

* RF = ``lazylab.random_features(net, ["out.weight", "out.bias"])`` (first layer frozen);
* NT = ``lazylab.linearize(net)`` (tangent model at init, all of W, a, c trained);
* NN = ``net`` itself, everything trained (mean-field parametrization as in the paper's code).

Population training (as the official code): a fresh batch of ``batch_size`` Gaussian samples every SGD
step, mean-squared loss ``(1/2) mean (f - y)^2``, per-parameter learning-rate multipliers of the code
(``W``, ``a``: ``N * lr``; ``c``: ``lr``; the NT first layer gets an extra :func:`nt_multiplier`), and
the code's step schedule (``lr`` until 80 % of the steps, ``lr/10`` until 90 %, then ``lr/15``; NN:
drops at 70 % and 85 %). It runs on the library's one training loop (``lazylab.training.run``) with a
sample-stream data source (``steps * batch_size`` points drawn as needed: drawing the stream in advance
would take 18 GB at the paper's d = 450, 100 000 steps) and per-parameter-group rates, which the
mean-field parametrization needs.

Risks, normalized by ``Var f* = 2 ||B||_F^2``: (a) the exact population-optimal risk of the class at
the cell's initialization (:mod:`lazylab.risks`: RF and NT depend on W, NN only on N); (b) the
population risk of the SGD-trained model, exact for the quadratic activation (the trained function is a
quadratic form, read off by ``torch.func``: :func:`lazylab.risks.model_risk`) and by Monte Carlo on
``n_test`` fresh points for ReLU; (c) the asymptotic curves :func:`lazylab.risks.exp_target_limits`
(our derivation, docs/papers.md §2.3 [D], not quoted from the paper, whose body was not available).

Deviation from the code: the second layer starts at ``a_j = +-1`` (random signs) instead of ``N(0, 1)``
(NT) or a common ``a = 0`` (NN, ``constant_a``). The NT class is the same for any ``a0`` with non-zero
entries; the signs avoid the tiny ``|a0_j|`` that make NT's SGD very ill-conditioned in a short run.

``ghorbani-mixture``: ``x | y = +-1 ~ N(0, I +- delta P_s)`` (our parametrization; the paper's was not
found), logistic loss, same three regimes; test error on ``n_test`` fresh points against the exact
Bayes error :func:`lazylab.risks.mixture_bayes_error`. Its presets train NN with the common fixed second layer
(``nn_second_layer="fixed"``, the code's ``constant_a``; see :func:`build_regime`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lazylab.lab.registry import Check, Experiment, Preset, Report, RunContext, check, register
from lazylab.lab.rules import NONNEG, POSITIVE, Rule, one_of

REGIMES = ("rf", "nt", "nn")
COLORS = {"rf": "tab:blue", "nt": "tab:orange", "nn": "tab:green"}


@dataclass
class QuadraticConfig:
    seed: int = 0                  # init of W, a and the SGD sample stream
    d: int = 100
    rho: float = 0.5               # N = round(rho * d) neurons
    regime: str = "nn"             # rf | nt | nn
    activation: str = "quadratic"  # quadratic | relu
    target_seed: int = 100         # numpy seed of gamma (the code's)
    steps: int = 2000              # SGD steps (0 = exact risks only)
    batch_size: int = 100
    lr: float = 0.3
    nt_w_mult: float = 0.0         # extra first-layer lr multiplier in NT; 0 = auto: 40 * rho
    second_layer_init: str = "sign"  # sign (+-1) | gaussian (N(0,1), the code's NT init)
    nn_second_layer: str = "trained"  # NN only: trained | fixed (all a_j = +1, frozen; see build_regime)
    n_test: int = 20000            # Monte Carlo test points (relu only)
    n_track: int = 8
    dtype: str = "float32"

    RULES: ClassVar[dict[str, Rule]] = {
        "d": POSITIVE, "rho": POSITIVE, "regime": one_of("rf", "nt", "nn"),
        "activation": one_of("quadratic", "relu"), "steps": NONNEG, "batch_size": POSITIVE,
        "lr": POSITIVE, "nt_w_mult": NONNEG, "second_layer_init": one_of("sign", "gaussian"),
        "nn_second_layer": one_of("trained", "fixed"), "n_test": POSITIVE, "n_track": POSITIVE,
        "dtype": one_of("float32", "float64")}


@dataclass
class MixtureConfig:
    seed: int = 0
    d: int = 100
    s: int = 10                    # rank of the Bayes rule (dimension of the signal subspace)
    delta: float = 0.5             # Sigma_+- = I +- delta P_s
    rho: float = 0.5
    regime: str = "nn"
    activation: str = "quadratic"
    steps: int = 2000
    batch_size: int = 100
    lr: float = 1.0
    nt_w_mult: float = 0.0         # 0 = auto: 40 * rho
    second_layer_init: str = "sign"
    nn_second_layer: str = "trained"  # NN only: trained | fixed (all a_j = +1, frozen; see build_regime)
    n_test: int = 100000
    n_track: int = 6
    dtype: str = "float32"

    RULES: ClassVar[dict[str, Rule]] = {
        "d": POSITIVE, "s": POSITIVE, "delta": Rule(ge=0, lt=1), "rho": POSITIVE,
        "regime": one_of("rf", "nt", "nn"), "activation": one_of("quadratic", "relu"),
        "steps": NONNEG, "batch_size": POSITIVE, "lr": POSITIVE, "nt_w_mult": NONNEG,
        "second_layer_init": one_of("sign", "gaussian"),
        "nn_second_layer": one_of("trained", "fixed"), "n_test": POSITIVE, "n_track": POSITIVE,
        "dtype": one_of("float32", "float64")}


def _dtype(name: str):
    import torch

    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {name!r}")
    return getattr(torch, name)


def _check_common(cfg) -> int:
    if cfg.regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {cfg.regime!r}")
    if cfg.activation not in ("quadratic", "relu"):
        raise ValueError(f"activation must be 'quadratic' or 'relu', got {cfg.activation!r}")
    if cfg.second_layer_init not in ("sign", "gaussian"):
        raise ValueError(f"second_layer_init must be 'sign' or 'gaussian', got {cfg.second_layer_init!r}")
    if cfg.nn_second_layer not in ("trained", "fixed"):
        raise ValueError(f"nn_second_layer must be 'trained' or 'fixed', got {cfg.nn_second_layer!r}")
    if cfg.rho <= 0 or cfg.d < 1:
        raise ValueError(f"need rho > 0 and d >= 1, got rho={cfg.rho}, d={cfg.d}")
    if cfg.steps < 0 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise ValueError("need steps >= 0, batch_size >= 1, lr > 0")
    return max(1, int(round(cfg.rho * cfg.d)))


def build_regime(d: int, N: int, regime: str, activation: str = "quadratic", seed: int = 0,
                 second_layer_init: str = "sign", device: str = "cpu", dtype=None,
                 nn_second_layer: str = "trained"):
    """The paper's two-layer net in one of the three regimes.

    Returns ``(model, net)``: ``model`` is what is trained and evaluated (``net`` for RF/NN, the
    :class:`lazylab.regimes.Linearized` wrapper for NT), ``net`` the underlying
    :class:`lazylab.models.TwoLayerNet` whose parameters requiring grad are the trained ones.
    ``f(x) = c + (1/N) sum_j a_j sigma(<w_j, x>/sqrt(d))``, hidden biases 0 and frozen.

    ``nn_second_layer="fixed"`` (NN only): every ``a_j = +1`` and frozen, i.e. the official code's
    ``constant_a`` (one common second-layer scalar) with that scalar fixed; for ``sigma = t^2`` the class
    is then ``{c + x^T Q x : Q psd, rank Q <= N}``, which holds every psd target. Why: with one ``a_j``
    per neuron and exactly ``N = rank`` neurons, SGD can park a neuron at the saddle ``a_j ~ 0`` (its
    ``w_j`` then gets no gradient) and miss one direction for tens of thousands of steps; measured on
    the mixture at ``N = s = 10`` after 20 000 steps in 1 of 3 seeds (+-1 init) and 1 of 2 (+1 init),
    against 0 of 4 with the common fixed sign (docs/ghorbani.md)."""
    import torch

    from lazylab.models import TwoLayerNet
    from lazylab.regimes import linearize, random_features

    with torch.random.fork_rng(devices=[]):  # seed the init without touching the global RNG
        torch.manual_seed(seed)
        net = TwoLayerNet(d, N, activation=activation, scaling="mean_field", bias=True)
    with torch.no_grad():
        net.hidden.bias.zero_()
        if second_layer_init == "sign":
            net.out.weight.copy_(torch.where(net.out.weight >= 0, 1.0, -1.0))
    net.hidden.bias.requires_grad_(False)
    net = net.to(device=device, dtype=dtype or torch.get_default_dtype())
    if regime == "rf":
        return random_features(net, ["out.weight", "out.bias"]), net
    if regime == "nt":
        return linearize(net), net
    if regime == "nn":
        if nn_second_layer == "fixed":
            with torch.no_grad():
                net.out.weight.fill_(1.0)
            net.out.weight.requires_grad_(False)
        return net, net
    raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")


def lr_factor(step: int, steps: int, regime: str) -> float:
    """The official code's step schedule as a fraction of the total (100 000 steps there): NT (and RF)
    ``1`` until ``steps - 20 %``, ``1/10`` until ``steps - 10 %``, then ``1/15``; NN: drops at 70 % and
    85 %."""
    a, b = (0.7, 0.85) if regime == "nn" else (0.8, 0.9)
    return 1.0 if step < a * steps else (0.1 if step < b * steps else 1.0 / 15.0)


def nt_multiplier(nt_w_mult: float, N: int, d: int) -> float:
    """Extra lr multiplier of the NT first layer: ``nt_w_mult`` if > 0, else ``40 N/d`` (tuned at
    d = 100 with 2000 steps: smaller N is limited by SGD noise, N near d by the conditioning of W)."""
    if nt_w_mult < 0:
        raise ValueError(f"nt_w_mult must be >= 0 (0 = auto), got {nt_w_mult}")
    return float(nt_w_mult) if nt_w_mult > 0 else 40.0 * N / d


def _optimizer(net, N: int, regime: str, lr: float, nt_w_mult: float, steps: int):
    """SGD with the official code's per-layer rates ``lr * mult`` and its step schedule."""
    from lazylab import training
    from lazylab.training.optim import multiply

    groups = []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        mult = 1.0 if name == "out.bias" else float(N)
        if regime == "nt" and name == "hidden.weight":
            mult *= nt_w_mult
        groups.append({"params": [p], "lr": lr * mult, "mult": mult})
    spec = training.sgd(lr).with_schedule(multiply(lambda step: lr_factor(step, steps, regime)))
    return spec, spec.build(groups)


def _track_steps(steps: int, n: int) -> list[int]:
    if steps == 0:
        return [0]
    pts = np.unique(np.round(np.geomspace(1, steps, max(n, 2))).astype(int))
    return sorted({0, *pts.tolist(), steps})


def population_sgd(model, net, N: int, regime: str, sample, loss_fn, steps: int, lr: float,
                   nt_w_mult: float, evaluate, track: list[int], seed: int, device: str,
                   bar=None) -> list[dict]:
    """SGD on fresh samples: at each step ``(x, y) = sample(generator)``, loss ``loss_fn(model(x), y)``,
    lr ``lr * mult * lr_factor(step)``. Returns ``evaluate(model) | {"step": k}`` at the ``track`` steps.
    Cost: ``steps`` forward/backward passes on one batch, O(steps * batch * d * N) (NT: plus one jvp per
    step) and ``len(track)`` evaluations. Raises FloatingPointError on a non-finite loss. Runs on the
    one training loop (:func:`lazylab.training.run`) with a sample-stream data source."""
    import torch

    from lazylab import training

    class Evaluate(training.Hook):
        def record(self, state) -> dict:
            return evaluate(state.model)

    spec, opt = _optimizer(net, N, regime, lr, nt_w_mult, steps)
    g = torch.Generator(device=device).manual_seed(1_000_003 + seed)
    h = training.run(training.LoopState(model), training.Stream(sample, g),
                     lambda st, b: (loss_fn(st.model(b[0]), b[1]), None), spec, opt, steps,
                     hooks=[Evaluate()], track=set(track), label=f"SGD (regime {regime}, N={N}): ",
                     progress=None if bar is None else bar(total=steps, desc=f"{regime} N={N}"))
    return h.records


def run_quadratic(cfg: QuadraticConfig, ctx: RunContext) -> list[dict]:
    """One (regime, rho, seed) cell: exact optimum risk of the class, SGD risk along training."""
    import torch

    from lazylab import risks

    N = _check_common(cfg)
    dt = _dtype(cfg.dtype)
    t0 = time.time()
    B = risks.exp_diagonal_target(cfg.d, cfg.target_seed)
    var = risks.quadratic_variance(B)
    Bt = torch.tensor(B, dtype=dt, device=ctx.device)
    trB = float(np.trace(B))
    model, net = build_regime(cfg.d, N, cfg.regime, cfg.activation, cfg.seed, cfg.second_layer_init,
                              ctx.device, dt, cfg.nn_second_layer)
    W0 = net.hidden.weight.detach().double().cpu().numpy() / math.sqrt(cfg.d)  # rows w_j/sqrt(d)
    exact = float("nan")  # no closed form for ReLU
    if cfg.activation == "quadratic":
        exact = {"rf": lambda: risks.risk_rf(B, W0), "nt": lambda: risks.risk_nt(B, W0),
                 "nn": lambda: risks.risk_nn(B, N)}[cfg.regime]()

    def sample(g):
        x = torch.randn(cfg.batch_size, cfg.d, generator=g, device=ctx.device, dtype=dt)
        return x, ((x @ Bt) * x).sum(1) - trB

    gt = torch.Generator(device=ctx.device).manual_seed(77 + cfg.seed)
    Xt = torch.randn(cfg.n_test, cfg.d, generator=gt, device=ctx.device, dtype=dt)
    yt = ((Xt @ Bt) * Xt).sum(1) - trB

    def evaluate(m) -> dict:
        if cfg.activation == "quadratic":
            r = risks.model_risk(m, B)
        else:
            with torch.no_grad():
                r = float(((m(Xt) - yt) ** 2).double().mean())
        return {"risk": r, "risk_norm": r / var}

    def loss_fn(out, y):
        return 0.5 * ((out - y) ** 2).mean()

    recs = population_sgd(model, net, N, cfg.regime, sample, loss_fn, cfg.steps, cfg.lr,
                          nt_multiplier(cfg.nt_w_mult, N, cfg.d),
                          evaluate, _track_steps(cfg.steps, cfg.n_track), cfg.seed, ctx.device,
                          ctx.bar if ctx.progress and cfg.steps >= 2000 else None)
    lim = risks.exp_target_limits(N / cfg.d)
    plug = {"rf": float(risks.limit_rf(N / cfg.d, B)) / var, "nt": float(risks.limit_nt(N / cfg.d, B)) / var,
            "nn": risks.risk_nn(B, N) / var}[cfg.regime]
    extra = {"N": N, "rho_eff": N / cfg.d, "var": var, "exact_norm": exact / var,
             "theory_norm": float(lim[cfg.regime]), "plugin_norm": plug, "time_s": time.time() - t0}
    return [{**r, **extra} for r in recs]


def _final(df):
    return df.loc[df.groupby("cell_id")["step"].idxmax()]


def _theory_axes(ax, rmax: float) -> None:
    from lazylab import risks

    r = np.linspace(1e-3, rmax, 400)
    lim = risks.exp_target_limits(r)
    for k in REGIMES:
        ax.plot(r, lim[k], "-", color=COLORS[k], lw=1.2, label=f"{k.upper()} theory (d→∞)")


SRC_D = "our derivation [D] of the d→∞ risks, docs/papers.md §2.3"
SRC_P = "Ghorbani et al. 2019 abstract [P], docs/papers.md §2.1"
SGD_TOL = 0.05  # SGD vs the class optimum, normalized risk (the code's runs end above it too)


def _exact_claims(q) -> list[Check]:
    """Exact-optimum checks on the final records ``q`` (quadratic activation, one row per cell).

    Sanity: the NT and NN optima are 0 for rho >= 1 (a rank identity of the classes). Claim: the
    RF optimum stays at its d→∞ value (1 + 1/(1+rho))/2 (0.75 at rho = 1, 0.70 at 1.5) for
    rho >= 1, within ±0.05 (2 sd of one target draw at finite d), per seed (the RF optimum
    depends on the random first layer)."""
    from lazylab.lab.experiments._common import per_seed

    checks: list[Check] = []
    big = q[q["rho"] >= 1]
    for reg in ("nt", "nn"):
        b = big[big["regime"] == reg]
        if len(b):
            v = float(b["exact_norm"].max())
            checks.append(Check(f"(a) {reg.upper()} exact risk ≈ 0 for rho >= 1", v, "<= 1e-6",
                                v <= 1e-6, "normalized", kind="sanity",
                                source="rank identity: the class holds every quadratic form"))
    rf = big[big["regime"] == "rf"]
    if len(rf):
        dev = per_seed(rf, lambda g: float((g["exact_norm"] - _rf_limit(g["rho"])).abs().max()))
        lo = float(_rf_limit(rf["rho"]).min())
        hi = float(_rf_limit(rf["rho"]).max())
        checks.append(check(f"(a) RF exact risk stays at its limit for rho >= 1 (theory "
                            f"{lo:.3f}-{hi:.3f}; max |exact - limit|)", None, 0.05, op="<=",
                            seeds=dev, source=SRC_D + "; RF = (1 + 1/(1+rho))/2"))
    return checks


def _rf_limit(rho):
    return (1.0 + 1.0 / (1.0 + np.asarray(rho, float))) / 2.0


def _sgd_claims(q, regimes) -> list[Check]:
    """(b) population SGD reaches the class optimum: per seed, max over rho of
    |SGD risk - exact optimum| <= 0.05 (normalized). For NN at rho >= 1 the optimum is 0, the
    paper's "zero risk"."""
    from lazylab.lab.experiments._common import per_seed

    checks: list[Check] = []
    for reg in regimes:
        s = q[q["regime"] == reg]
        if not len(s):
            continue
        gap = (s["risk_norm"] - s["exact_norm"]).abs()
        worst = float(s["rho"].iloc[int(np.argmax(gap.to_numpy()))])
        vals = per_seed(s, lambda g: float((g["risk_norm"] - g["exact_norm"]).abs().max()))
        checks.append(check(f"(b) {reg.upper()}: max |SGD - exact| over rho (worst rho={worst:g})",
                            None, SGD_TOL, op="<=", seeds=vals,
                            source=(SRC_P + " (NN, NT: zero risk for N >= d)" if reg != "rf"
                                    else SRC_D) + "; 0.05 is our tolerance"))
    return checks


def _gap_claim(t, act: str) -> list[Check]:
    """(b) NN's SGD risk is below NT's at every rho < 1, by more than 0.05 (a third of the smallest
    theoretical gap over rho in [0.25, 0.75], 0.15): per seed, min over rho of NT - NN."""
    from lazylab.lab.experiments._common import per_seed

    t = t[t["rho"] < 1]

    def margin(g):
        nn_ = g[g["regime"] == "nn"].groupby("rho")["risk_norm"].mean()
        nt_ = g[g["regime"] == "nt"].groupby("rho")["risk_norm"].mean()
        common = nn_.index.intersection(nt_.index)
        return float((nt_[common] - nn_[common]).min()) if len(common) else math.nan

    vals = per_seed(t, margin)
    if not np.isfinite(vals).any():
        return []
    return [check(f"(b) {act}: NN SGD risk < NT SGD risk at every rho < 1 (min NT - NN)", None,
                  SGD_TOL, op=">", seeds=vals,
                  source=SRC_P + "; the gap for N < d (theory >= 0.15 on [0.25, 0.75])")]


def _quadratic_table(last):
    """Per (activation, regime, rho, N): mean over cells of the final records ``last``, with the
    spread (``exact_sd``) and count (``cells``) of the cells averaged, ``sgd_norm`` (the final SGD
    risk) and ``sgd_minus_exact``; the closed forms and limits only for the quadratic activation."""
    cols = ["exact_norm", "risk_norm", "theory_norm", "plugin_norm", "time_s"]
    grouped = last.groupby(["activation", "regime", "rho", "N"])
    table = grouped[cols].mean().reset_index()
    # spread of the exact optimum over the cells averaged here (target draws x init seeds): at finite d
    # one draw of gamma ~ Exp(1) moves R_NN/Var by ~0.025 at d = 200, rho = 0.25
    table["exact_sd"] = grouped["exact_norm"].std().to_numpy()
    table["cells"] = grouped.size().to_numpy()
    table = table.rename(columns={"risk_norm": "sgd_norm"})
    table["sgd_minus_exact"] = table["sgd_norm"] - table["exact_norm"]
    # the closed forms and limits are for the quadratic activation only
    table.loc[table["activation"] != "quadratic", ["theory_norm", "plugin_norm"]] = np.nan
    return table


def _theory_check(q, last, d: int, metrics: dict[str, float]) -> list[Check]:
    """(a) exact optimum vs the d→∞ theory, max over regimes x rho in {.25, .5, .75, 1.5} of
    |exact - theory| <= 0.03 (on the quadratic rows ``q`` of the table); checked only at d >= 200
    with >= 4 target draws, otherwise the deviation is added to ``metrics``, not checked."""
    # (a) exact optimum vs asymptotic theory (d >= 200 only, as the issue states)
    sel = q[q["rho"].round(4).isin([0.25, 0.5, 0.75, 1.5])]
    draws = int(last["target_seed"].nunique())
    if d >= 200 and draws >= 4 and len(sel):
        dev = (sel["exact_norm"] - sel["theory_norm"]).abs()
        i = int(np.argmax(dev.to_numpy()))
        return [Check(
            f"(a) max |exact - theory| over regimes x rho in {{.25,.5,.75,1.5}} (d={d}, exact risk "
            f"averaged over {draws} target draw(s); worst: "
            f"{sel['regime'].iloc[i]} at rho={sel['rho'].iloc[i]:g})", float(dev.max()), "<= 0.03",
            bool(dev.max() <= 0.03), "abs, normalized risk", source=SRC_D
            + "; 0.03 ≈ 1 sd of one target draw at d = 200", n=draws)]
    if len(sel):  # the limits are d -> inf statements about a random spectrum: one draw at
        # d = 200 sits ~0.025 (1 sd) from them, so the check needs d >= 200 and >= 4 draws
        metrics[f"exact_minus_theory_max_abs(d={d}, {draws} draw(s), not checked)"] = float(
            (sel["exact_norm"] - sel["theory_norm"]).abs().max())
    return []


def _quadratic_figure(table, last, base: QuadraticConfig, trained: bool):
    """Normalized risk vs rho = N/d, one panel per activation: exact optima, SGD risks (when
    ``trained``) and, for the quadratic activation, the d→∞ theory curves."""
    import matplotlib.pyplot as plt

    d = int(base.d)
    acts = sorted(table["activation"].unique())
    fig, axes = plt.subplots(1, len(acts), figsize=(6.2 * len(acts), 4.4), squeeze=False)
    for ax, act in zip(axes[0], acts):
        t = table[table["activation"] == act]
        if act == "quadratic":
            _theory_axes(ax, max(1.6, float(t["rho"].max()) * 1.05))
        for reg in REGIMES:
            s = t[t["regime"] == reg].sort_values("rho")
            if not len(s):
                continue
            if act == "quadratic":
                ax.plot(s["rho"], s["exact_norm"], "o", mfc="none", color=COLORS[reg], ms=8,
                        label=f"{reg.upper()} exact optimum (d={d})")
            if trained:
                ax.plot(s["rho"], s["sgd_norm"], "x" if act == "quadratic" else "o-", color=COLORS[reg],
                        ms=7, mew=2, label=f"{reg.upper()} SGD")
        ax.set_xlabel("ρ = N / d")
        ax.set_ylabel("R / Var(f*)")
        ax.set_ylim(-0.03, 1.05)
        ax.set_title(f"{act} activation, d={d}, " + (f"{int(last['step'].max())} SGD steps × batch "
                     f"{int(base.batch_size)}" if trained else "exact optima only (no SGD)"))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


QUADRATIC_NOTES = (
    "Normalized risk R/Var(f*) of two-layer nets on f*(x) = x^T B x - tr B, B = diag(gamma)/sqrt(d), "
    "gamma ~ Exp(1) (the official code's target). Exact optimum: least squares in the space of "
    "quadratic forms (lazylab.risks; RF/NT at the cell's own random W). SGD: population training "
    "(fresh batch each step), risk of the trained model computed exactly (quadratic activation) or "
    "by Monte Carlo (ReLU). Theory curves: d→∞ limits of our derivation (docs/papers.md §2.3) "
    "[D] (the paper's body was not available), verified against finite-d exact risks in "
    "tests/test_risks.py. Check (a) against theory applies at d >= 200 only (issue 7); at smaller d "
    "the deviation is reported as a metric. With short runs SGD stops above the optimum; NT near "
    "rho = 1 converges slowest (the smallest singular value of W -> 0 at N = d)."
)


def report_quadratic(df, base: QuadraticConfig) -> Report:
    """Table, metrics, checks ((a) exact optima vs theory and their rank/limit identities, (b) SGD
    reaches the optimum and NN beats NT for N < d), figure and notes of the records ``df`` of a
    ``ghorbani-quadratic`` sweep (final step of each cell)."""
    last = _final(df)
    table = _quadratic_table(last)
    metrics: dict[str, float] = {}
    checks: list[Check] = []
    for row in table.itertuples(index=False):
        key = f"{row.activation}/{row.regime}@rho={row.rho:g}"
        metrics[f"sgd_norm[{key}]"] = float(row.sgd_norm)
        if row.activation == "quadratic":
            metrics[f"exact_norm[{key}]"] = float(row.exact_norm)
    d = int(base.d)
    q = table[table["activation"] == "quadratic"]
    trained = int(last["step"].max()) > 0
    if not trained:  # steps = 0: only exact risks (the "SGD" risk would be the risk at init)
        table = table.drop(columns=["sgd_norm", "sgd_minus_exact"])
        metrics = {k: v for k, v in metrics.items() if not k.startswith("sgd_norm")}
    if len(q):
        checks += _theory_check(q, last, d, metrics)
        checks += _exact_claims(last[last["activation"] == "quadratic"])
        if trained:
            checks += _sgd_claims(last[last["activation"] == "quadratic"], ("rf", "nt", "nn"))
    if trained:
        for act in sorted(last["activation"].unique()):
            checks += _gap_claim(last[last["activation"] == act], act)
    for reg in ("nn",) if trained and len(q) else ():
        b = q[(q["regime"] == reg) & (q["rho"] >= 1)]
        if len(b):  # the paper says zero risk for N >= d: how far SGD is from it after these steps
            metrics[f"nn_sgd_risk_rho>=1_max (paper: 0; {int(last['step'].max())} steps)"] = float(
                b["sgd_norm"].max())
    figs = {"ghorbani_quadratic": _quadratic_figure(table, last, base, trained)}
    return Report(metrics=metrics, checks=checks, figures=figs, table=table, notes=QUADRATIC_NOTES)


# ---------------------------------------------------------------------------------------------------
# mixture of two centered Gaussians


def mixture_sampler(d: int, s: int, delta: float, seed: int, device: str = "cpu", dtype=None):
    """``(P, sample)``: P (d, s) orthonormal basis of the signal subspace (from ``seed``), and
    ``sample(g, n) -> (x, y)`` with ``y = +-1`` equiprobable and
    ``x = z + (sqrt(1 + y delta) - 1) P P^T z``, ``z ~ N(0, I_d)``, so ``Cov(x | y) = I + y delta P P^T``."""
    import torch

    if not 1 <= s <= d:
        raise ValueError(f"s must be in [1, d={d}], got {s}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    dt = dtype or torch.get_default_dtype()
    g = torch.Generator().manual_seed(5_000 + seed)
    P = torch.linalg.qr(torch.randn(d, s, generator=g, dtype=torch.float64))[0].to(device=device, dtype=dt)

    def sample(gen, n: int):
        y = torch.where(torch.rand(n, generator=gen, device=device) < 0.5, -1.0, 1.0).to(dt)
        z = torch.randn(n, d, generator=gen, device=device, dtype=dt)
        k = torch.sqrt(1 + y * delta) - 1
        return z + k[:, None] * ((z @ P) @ P.T), y

    return P, sample


def run_mixture(cfg: MixtureConfig, ctx: RunContext) -> list[dict]:
    """One (regime, rho, seed) cell of the mixture experiment: test error along SGD (logistic loss)."""
    import torch
    import torch.nn.functional as F

    from lazylab import risks

    N = _check_common(cfg)
    dt = _dtype(cfg.dtype)
    t0 = time.time()
    bayes = risks.mixture_bayes_error(cfg.s, cfg.delta)
    _, sample = mixture_sampler(cfg.d, cfg.s, cfg.delta, 0, ctx.device, dt)
    model, net = build_regime(cfg.d, N, cfg.regime, cfg.activation, cfg.seed, cfg.second_layer_init,
                              ctx.device, dt, cfg.nn_second_layer)
    gt = torch.Generator(device=ctx.device).manual_seed(99 + cfg.seed)
    Xt, yt = sample(gt, cfg.n_test)

    def evaluate(m) -> dict:
        with torch.no_grad():
            out = torch.cat([m(Xt[i:i + 20000]) for i in range(0, cfg.n_test, 20000)])
            err = float((torch.sign(out) != yt).double().mean())
            loss = float(F.softplus(-yt * out).double().mean())
        return {"test_error": err, "test_loss": loss}

    def loss_fn(out, y):
        return F.softplus(-y * out).mean()

    recs = population_sgd(model, net, N, cfg.regime, lambda g: sample(g, cfg.batch_size), loss_fn,
                          cfg.steps, cfg.lr, nt_multiplier(cfg.nt_w_mult, N, cfg.d), evaluate,
                          _track_steps(cfg.steps, cfg.n_track),
                          cfg.seed, ctx.device, ctx.bar if ctx.progress and cfg.steps >= 2000 else None)
    extra = {"N": N, "bayes_error": bayes, "time_s": time.time() - t0}
    return [{**r, **extra} for r in recs]


def _mixture_claims(q, d: int, s: int) -> list[Check]:
    """The mixture claims on the final records ``q`` (quadratic activation), each per seed (the
    excess test error over the Bayes error, max or min over the cells named):
    NT and NN reach the Bayes error for N >= d and NN already for N >= s (excess <= 0.01, about
    3 Monte Carlo s.e. of the quick preset's test set); NT does not for s <= N < d and RF stays far
    for N <= 2d (excess > 0.01 / > 0.05)."""
    from lazylab.lab.experiments._common import per_seed

    q = q.assign(excess=q["test_error"] - q["bayes_error"])
    src_p = SRC_P + " (zero risk for N >= d)"
    src_d = "our derivation [D]: the class holds the Bayes rule iff ..., docs/papers.md §2.3"
    spec = []
    for reg in ("nt", "nn"):
        spec.append((f"{reg.upper()} reaches the Bayes error for N >= d (max excess)",
                     (q["regime"] == reg) & (q["N"] >= d), "max", 0.01, "<=", src_p))
    if s < d:
        spec.append((f"NN reaches the Bayes error already for N >= s = {s} (max excess)",
                     (q["regime"] == "nn") & (q["N"] >= s), "max", 0.01, "<=",
                     src_d.replace("...", "N >= s")))
        spec.append(("NT does not for s <= N < d (min excess)",
                     (q["regime"] == "nt") & (q["N"] >= s) & (q["N"] < d), "min", 0.01, ">",
                     src_d.replace("...", "N >= d")))
    spec.append(("RF stays far from the Bayes error for N <= 2d (min excess)",
                 (q["regime"] == "rf") & (q["N"] <= 2 * d), "min", 0.05, ">",
                 SRC_P + "; 'far' = 5 points of error (ours)"))
    checks = []
    for name, mask, agg, target, op, src in spec:
        sub = q[mask]
        if len(sub):
            vals = per_seed(sub, lambda g, agg=agg: float(getattr(g["excess"], agg)()))
            checks.append(check(name, None, target, op=op, seeds=vals, source=src))
    return checks


def report_mixture(df, base: MixtureConfig) -> Report:
    import matplotlib.pyplot as plt

    last = _final(df)
    table = (last.groupby(["activation", "regime", "rho", "N"])[["test_error", "bayes_error", "time_s"]]
             .mean().reset_index())
    table["excess"] = table["test_error"] - table["bayes_error"]
    d, s = int(base.d), int(base.s)
    bayes = float(table["bayes_error"].iloc[0])
    metrics = {"bayes_error": bayes}
    for row in table.itertuples(index=False):
        metrics[f"test_error[{row.activation}/{row.regime}@rho={row.rho:g}]"] = float(row.test_error)
    checks = _mixture_claims(last[last["activation"] == "quadratic"], d, s)

    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    for act, ls in (("quadratic", "-"), ("relu", "--")):
        for reg in REGIMES:
            sub = table[(table["activation"] == act) & (table["regime"] == reg)].sort_values("rho")
            if len(sub):
                ax.plot(sub["rho"], sub["test_error"], "o" + ls, color=COLORS[reg],
                        label=f"{reg.upper()} ({act})")
    ax.axhline(bayes, color="k", lw=1, ls=":", label=f"Bayes error {bayes:.3f}")
    ax.axvline(s / d, color="gray", lw=0.8, ls="--", label=f"N = s ({s})")
    ax.axvline(1.0, color="gray", lw=0.8, ls="-.", label="N = d")
    ax.set_xlabel("ρ = N / d")
    ax.set_ylabel("test classification error")
    ax.set_title(f"mixture Σ± = I ± {base.delta:g}·P_s, d={d}, s={s}, {int(last['step'].max())} steps")
    ax.legend(fontsize=7)
    fig.tight_layout()
    notes = (
        f"x | y=±1 ~ N(0, I ± delta P_s) with a random s-dim projector P_s (our parametrization; the "
        f"paper's was not found). The log-likelihood ratio is delta/(1-delta²)·||P_s x||² - const, a "
        f"rank-s quadratic, so with the logistic loss (whose population minimizer is the LLR) NN with "
        f"N >= s and NT with N >= d contain the Bayes rule; NT with N < d cannot represent P_s. Bayes "
        f"error exact from chi² tails (lazylab.risks.mixture_bayes_error); test errors on "
        f"{int(base.n_test)} fresh points (Monte Carlo, s.e. ≈ "
        f"{math.sqrt(bayes * (1 - bayes) / base.n_test):.4f})."
    )
    if int(last["step"].max()) < 20000:  # measured: 4000 steps leave NT at N >= d ~0.014 above Bayes
        notes += (" Short run: where the class contains the Bayes rule but SGD has not converged (NT at "
                  "N >= d, NN at N = s exactly) the excess error can stay above 0.01; these checks need "
                  "the paper preset's 100 000 steps.")
    return Report(metrics=metrics, checks=checks, figures={"ghorbani_mixture": fig}, table=table,
                  notes=notes)


_RHO_QUICK = [0.25, 0.5, 0.75, 1.5]  # the rho set of check (a)
QUADRATIC = register(Experiment(
    name="ghorbani-quadratic",
    description="Ghorbani et al. 2019: RF / NT / NN risk on a quadratic target vs rho = N/d "
                "(exact optimum, population SGD, d->inf theory); activation option (quadratic|relu)",
    config=QuadraticConfig,
    presets={
        # seeds 1-3: the lr / NT multiplier were tuned by hand on seed 0 (out-of-sample check)
        "quick": Preset(set={"d": 100, "steps": 2000},
                        sweep={"regime": list(REGIMES), "rho": _RHO_QUICK, "seed": [1, 2, 3]}),
        "d200": Preset(set={"d": 200, "steps": 20000}, sweep={"regime": list(REGIMES), "rho": _RHO_QUICK}),
        "quick-relu": Preset(set={"d": 100, "steps": 2000, "activation": "relu"},
                             sweep={"regime": list(REGIMES), "rho": [0.25, 0.5, 1.0, 1.5]}),
        "theory": Preset(set={"d": 450, "steps": 0},
                         sweep={"regime": list(REGIMES), "rho": [0.25, 0.5, 0.75, 1.0, 1.5],
                                "target_seed": list(range(100, 108))}),
        "theory-d200": Preset(set={"d": 200, "steps": 0},
                              sweep={"regime": list(REGIMES), "rho": [0.25, 0.5, 0.75, 1.0, 1.5],
                                     "target_seed": list(range(100, 116))}),
        "paper": Preset(set={"d": 450, "steps": 100000},
                        sweep={"regime": list(REGIMES),
                               "rho": [round(n / 450, 4) for n in range(30, 451, 60)] + [1.5, 2.0]}),
    },
    run_cell=run_quadratic,
    report=report_quadratic,
))

MIXTURE = register(Experiment(
    name="ghorbani-mixture",
    description="Ghorbani et al. 2019: RF / NT / NN test error on a two-Gaussian mixture "
                "(Sigma = I +- delta P_s) vs rho = N/d, against the Bayes error",
    config=MixtureConfig,
    presets={
        "quick": Preset(set={"d": 100, "s": 10, "steps": 20000, "nt_w_mult": 20.0,
                             "nn_second_layer": "fixed"},
                        # seeds 2-4: NT multiplier, lr and steps tuned by hand on seeds 0, 1
                        sweep={"regime": list(REGIMES), "rho": [0.1, 0.2, 0.5, 1.5],
                               "seed": [2, 3, 4]}),
        "paper": Preset(set={"d": 450, "s": 45, "steps": 100000, "lr": 0.3, "nn_second_layer": "fixed"},
                        sweep={"regime": list(REGIMES),
                               "rho": [0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0]}),
    },
    run_cell=run_mixture,
    report=report_mixture,
))
