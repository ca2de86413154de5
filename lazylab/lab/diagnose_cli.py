"""``lazylab diagnose``: how lazy is this run? Train a model next to its linearization, write a report.

    lazylab diagnose --model two_layer --model-set m=1000 --alpha 100 --data teacher --out runs/d
    lazylab diagnose --model mypkg.nets:make_net --data data.npz --steps 2000 --lr 0.05

Model: a built-in name (:data:`MODELS`) configured with ``--model-set key=value``, or a factory
``module:function`` (called with the ``--model-set`` values as keyword arguments, plus ``d`` (input
features) and ``out_dim`` (outputs) when its signature has those parameters and they are not set).
Data: a built-in name (:data:`DATASETS`, configured with ``--data-set``) or a ``.pt`` / ``.npz`` file
holding ``X`` (N, ...) and ``y`` (N,) or (N, C), optionally ``X_test`` and ``y_test``.
This module exposes ``add_parser(subparsers)`` and ``run(args)`` for :mod:`lazylab.lab.cli`, and
``main(argv)`` to run it alone (``python -m lazylab.lab.diagnose_cli``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when the command runs, not when the CLI parser is built
    from torch import Tensor, nn

__all__ = ["add_parser", "run", "main", "MODELS", "DATASETS", "build_model", "load_data"]

MODELS = ("two_layer", "mlp", "small_cnn")
DATASETS = ("teacher", "digits")

EPILOG = """\
examples:
  lazylab diagnose --model two_layer --model-set m=1000 --alpha 100 --data teacher
  lazylab diagnose --model two_layer --model-set m=20 --alpha 0.1 --data teacher --steps 300 --lr 1
  lazylab diagnose --model mlp --model-set widths=256,256 --data digits --optimizer sgd --batch-size 64
  lazylab diagnose --model mypkg.nets:make_net --data mydata.npz --steps 2000

built-in models (--model-set keys): two_layer (m, activation, scaling, bias, init_std,
parametrization), mlp (widths, activation, parametrization, bias), small_cnn (width, depth).
built-in data (--data-set keys): teacher (d, n, n_test, m0, seed: ReLU teacher on the sphere),
digits (classes, e.g. classes=0,1 for a +-1 binary task; test_fraction, seed).
data files: .pt (a dict saved with torch.save) or .npz with X, y [, X_test, y_test].
verdict: lazy if ||K_T-K_0||/||K_0|| < 0.1 and ||f-f_lin||/||f_lin|| < 0.1; feature learning if
||K_T-K_0||/||K_0|| >= 0.5; intermediate otherwise. See docs/diagnose.md.
"""


def _parse_sets(items: Sequence[str], flag: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it or not it.split("=", 1)[0].strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {it!r}")
        k, v = (s.strip() for s in it.split("=", 1))
        try:
            if "," in v and not v.startswith("["):
                out[k] = [yaml.safe_load(x) for x in v.split(",") if x.strip()]
            else:
                out[k] = yaml.safe_load(v) if v else ""
        except yaml.YAMLError as e:
            raise ValueError(f"{flag} {k}: cannot parse the value {v!r} "
                             f"({str(e).splitlines()[0]})") from None
    return out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``diagnose`` subcommand to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser(
        "diagnose", help="how lazy is this run? train next to the linearization, write a report",
        description="Train a model (regime 'full', or lazy(model, alpha) with --alpha) next to its "
                    "linearized twin, track the tangent kernel, weights, linearization gap and ReLU "
                    "activation stability, and write report.md + figures to --out.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="NAME|module:function",
                   help=f"built-in model ({', '.join(MODELS)}) or a factory module:function")
    p.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                   help="model setting (repeatable), e.g. m=1000 or widths=256,256")
    p.add_argument("--alpha", type=float, default=None,
                   help="train lazy(model, alpha): output alpha*(h(w)-h(w0)), loss / alpha^2")
    p.add_argument("--data", required=True, metavar="NAME|FILE",
                   help=f"built-in dataset ({', '.join(DATASETS)}) or a .pt/.npz file with X, y")
    p.add_argument("--data-set", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset setting (repeatable), e.g. d=20 or classes=0,1")
    p.add_argument("--steps", type=int, default=500, help="training steps (default 500)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    p.add_argument("--loss", default="mse", help="mse | cross_entropy | logistic | hinge (default mse)")
    p.add_argument("--optimizer", default="gd", help="gd | sgd | adam (default gd)")
    p.add_argument("--batch-size", type=int, default=None, help="mini-batch size for sgd/adam")
    p.add_argument("--probe", type=int, default=64, help="probe points for the kernel (default 64)")
    p.add_argument("--snapshots", type=int, default=15, help="kernel snapshots, log-spaced (default 15)")
    p.add_argument("--no-kappa", action="store_true", help="skip Chizat's kappa at init")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the model's initialization, the probe draw and SGD batches (default 0)")
    p.add_argument("--device", default=None, metavar="cpu|cuda", help="default: cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default runs/diagnose-<time>); must be new or empty: a previous "
                        "report is never overwritten")
    p.add_argument("--resume", action="store_true",
                   help="--out DIR may hold an earlier diagnose: keep its finished report (nothing is "
                        "recomputed), or complete it when it has none")
    return p


def check_out(out: Path, resume: bool) -> Path | None:
    """Check ``--out`` BEFORE any training: a folder we can write into that holds no report (or,
    with ``resume``, may hold one). Returns the existing report.md when ``resume`` finds one (then
    there is nothing to do), else None. Raises NotADirectoryError / FileExistsError /
    PermissionError naming ``--out`` and the way out."""
    import tempfile

    report = out / "report.md"
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if resume and report.is_file():
            return report
        if not resume:
            what = "a report (report.md)" if report.is_file() else "files"
            raise FileExistsError(f"--out {out} already holds {what}; choose a new --out (a previous "
                                  "report is never overwritten), or add --resume to keep it")
    anc = out  # nothing is created before the run: check the nearest existing folder instead
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise NotADirectoryError(f"--out {out}: {anc} is a file, not a folder; choose another --out")
    try:
        with tempfile.TemporaryFile(dir=anc):
            pass
    except OSError as e:
        raise PermissionError(f"--out {out} cannot be written ({anc}: {e.strerror or e}); choose "
                              "another --out") from None
    return None


# --------------------------------------------------------------------------------------------- data
def _as_tensor(v: Any, name: str, path: Path) -> Tensor:
    import numpy as np
    import torch

    if isinstance(v, np.ndarray):
        if v.dtype == object:
            raise ValueError(f"data file {path}: {name} must be a numeric array, got dtype object")
        v = torch.from_numpy(v)
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"data file {path}: {name} must be a tensor or array, got {type(v).__name__}")
    return v


def _check_xy(X: Tensor, y: Tensor, where: str, xs: str = "X", ys: str = "y") -> tuple[Tensor, Tensor]:
    import torch

    if X.dim() < 2:
        raise ValueError(f"{where}: {xs} must have shape (N, features...) with N examples, "
                         f"got {tuple(X.shape)}")
    if y.dim() not in (1, 2):
        raise ValueError(f"{where}: {ys} must have shape (N,) or (N, C), got {tuple(y.shape)}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: {xs} has {X.shape[0]} rows but {ys} has {y.shape[0]}; they must match")
    if X.shape[0] < 2:
        raise ValueError(f"{where}: need at least 2 examples, got {X.shape[0]}")
    if X.dtype == torch.bool or X.is_complex():
        raise TypeError(f"{where}: {xs} must be real numbers, got dtype {X.dtype}")
    X = X.to(torch.float32) if not X.is_floating_point() or X.dtype == torch.float16 else X
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{where}: {ys} must be numbers, got dtype {y.dtype}")
    if not y.is_floating_point():
        y = y.long()
    return X, y


def load_file(path: str | os.PathLike) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
    """Read ``X, y`` (and optional ``X_test, y_test``) from a ``.pt`` dict or an ``.npz`` file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            blob: dict[str, Any] = {k: z[k] for k in z.files}
    elif path.suffix == ".pt":
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"data file {path} is not a readable torch file: {e}") from e
        if not isinstance(blob, dict):
            raise ValueError(f"data file {path} must hold a dict with keys X and y, "
                             f"got {type(blob).__name__}")
    else:
        raise ValueError(f"data file {path}: expected a .pt or .npz file, got suffix {path.suffix!r}")
    missing = [k for k in ("X", "y") if k not in blob]
    if missing:
        raise ValueError(f"data file {path} lacks {missing}: it must hold X (N, ...) and y (N,) or (N, C) "
                         f"(optionally X_test, y_test); found keys {sorted(blob)}")
    train = _check_xy(_as_tensor(blob["X"], "X", path), _as_tensor(blob["y"], "y", path), f"data file {path}")
    test = None
    if ("X_test" in blob) != ("y_test" in blob):
        raise ValueError(f"data file {path}: give both X_test and y_test or neither; "
                         f"found keys {sorted(blob)}")
    if "X_test" in blob:
        Xt, yt = _as_tensor(blob["X_test"], "X_test", path), _as_tensor(blob["y_test"], "y_test", path)
        test = _check_xy(Xt, yt, f"data file {path}", "X_test", "y_test")
        if test[0].shape[1:] != train[0].shape[1:]:
            raise ValueError(f"data file {path}: X_test examples have shape {tuple(test[0].shape[1:])}, "
                             f"X's have {tuple(train[0].shape[1:])}")
    return train, test


def load_data(name: str, settings: dict[str, Any] | None = None
              ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
    """A built-in dataset by name (:data:`DATASETS`) or a data file (``.pt``/``.npz``)."""
    s = dict(settings or {})
    if name.endswith((".pt", ".npz")) or os.sep in name:
        if s:
            raise ValueError(f"--data-set does not apply to a data file, got {sorted(s)}")
        return load_file(name)
    if name == "teacher":
        from lazylab.data import sphere, teacher_two_layer

        d, n, nt = (_int(s, k, v) for k, v in (("d", 10), ("n", 200), ("n_test", 200)))
        m0, seed = _int(s, "m0", 3), _int(s, "seed", 0, allow_zero=True)
        _unknown(s, "teacher", ("d", "n", "n_test", "m0", "seed"))
        f, _, _ = teacher_two_layer(d, m0, seed=seed)
        X, Xt = sphere(n, d, radius=d**0.5, seed=seed + 1), sphere(nt, d, radius=d**0.5, seed=seed + 2)
        return (X, f(X)), (Xt, f(Xt))
    if name == "digits":
        from lazylab.data import digits

        classes = s.pop("classes", None)
        if classes is not None and not isinstance(classes, list):
            classes = [classes]
        tf, seed = float(s.pop("test_fraction", 0.3)), _int(s, "seed", 0, allow_zero=True)
        _unknown(s, "digits", ("classes", "test_fraction", "seed"))
        binary = classes is not None and len(classes) == 2
        return digits(classes=classes, test_fraction=tf, seed=seed, binary_labels=binary)
    raise ValueError(f"unknown dataset {name!r}: built-in datasets are {list(DATASETS)}, or give a "
                     ".pt/.npz file with keys X and y")


def _int(s: dict[str, Any], key: str, default: int, flag: str = "--data-set",
         allow_zero: bool = False) -> int:
    """Pop the integer setting ``key`` (``2.5`` is refused, naming ``flag key``)."""
    from lazylab.checks import positive_int

    return positive_int(s.pop(key, default), f"{flag} {key}", allow_zero=allow_zero)


def _unknown(s: dict[str, Any], what: str, known: Sequence[str]) -> None:
    if s:
        raise ValueError(f"unknown setting(s) {sorted(s)} for {what}; known: {list(known)}")


# -------------------------------------------------------------------------------------------- model
def _out_dim(y: Tensor) -> int:
    if not y.is_floating_point():
        return int(y.max()) + 1
    return 1 if y.dim() == 1 else y.shape[1]


def build_model(spec: str, settings: dict[str, Any], X: Tensor, y: Tensor) -> tuple[nn.Module, Tensor]:
    """The model named by ``spec`` (built-in name or ``module:function``) and ``X`` reshaped for it
    (flattened for the fully connected built-ins)."""
    s = dict(settings)
    out = _out_dim(y)
    if ":" in spec:
        return _factory(spec, s, X, out), X
    from lazylab.checks import positive_int
    from lazylab.models import MLP, SmallCNN, TwoLayerNet

    flat = X.flatten(1)
    if spec == "two_layer":
        keys = ("m", "activation", "scaling", "bias", "init_std", "parametrization", "input_scale")
        _unknown({k: v for k, v in s.items() if k not in keys}, "two_layer", keys)
        return TwoLayerNet(flat.shape[1], _int(s, "m", 100, "--model-set"), out_dim=out, **s), flat
    if spec == "mlp":
        widths = s.pop("widths", [256, 256])
        widths = widths if isinstance(widths, list) else [widths]
        keys = ("widths", "activation", "parametrization", "bias")
        _unknown({k: v for k, v in s.items() if k not in keys}, "mlp", keys)
        widths = [positive_int(w, "--model-set widths") for w in widths]
        return MLP([flat.shape[1], *widths, out], squeeze=out == 1, **s), flat
    if spec == "small_cnn":
        if X.dim() != 4:
            raise ValueError(f"small_cnn needs image data (N, C, H, W), got X of shape {tuple(X.shape)}")
        keys = ("width", "depth", "init")
        _unknown({k: v for k, v in s.items() if k not in keys}, "small_cnn", keys)
        net = SmallCNN(X.shape[1], out, **s)
        return (_squeeze(net) if out == 1 else net), X
    raise ValueError(f"unknown model {spec!r}: built-in models are {list(MODELS)}, or give a factory "
                     "as module:function")


def _squeeze(net: nn.Module) -> nn.Module:
    """``net`` with its single output column squeezed: (N, 1) -> (N,)."""
    from torch import nn

    class Squeeze(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x).squeeze(-1)

    return Squeeze(net)


def _factory(spec: str, s: dict[str, Any], X: Tensor, out: int) -> nn.Module:
    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise ValueError(f"a model factory must be given as module:function, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {mod_name!r} of the model factory {spec!r}: {e}") from e
    fn = getattr(mod, fn_name, None)
    if fn is None:
        raise ValueError(f"module {mod_name!r} has no attribute {fn_name!r} (model factory {spec!r})")
    if not callable(fn):
        raise TypeError(f"model factory {spec!r} is not callable ({type(fn).__name__})")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "d" in params and "d" not in s:
        s["d"] = int(X[0].numel())
    if "out_dim" in params and "out_dim" not in s:
        s["out_dim"] = out
    from torch import nn

    net = fn(**s)
    if not isinstance(net, nn.Module):
        raise TypeError(f"model factory {spec!r} returned {type(net).__name__}; it must return a "
                        "torch.nn.Module")
    return net


# ---------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    """Run ``lazylab diagnose`` from parsed arguments; prints the verdict and report.md's path."""
    import torch

    from lazylab.checks import positive_finite, positive_int
    from lazylab.diagnosis import diagnose

    out = Path(args.out) if args.out else Path("runs") / f"diagnose-{time.strftime('%Y%m%d-%H%M%S')}"
    done = check_out(out, getattr(args, "resume", False))  # before any data or training
    if done is not None:
        print(f"report: {done} (already complete; nothing recomputed)")
        return 0
    if args.threads is not None:
        torch.set_num_threads(positive_int(args.threads, "--threads"))
    if args.alpha is not None:
        positive_finite(args.alpha, "--alpha")  # the dtype's safe range: lazy() below, before training
    (X, y), test = load_data(args.data, _parse_sets(args.data_set, "--data-set"))
    torch.manual_seed(args.seed)  # the model's initial weights follow --seed
    model, X = build_model(args.model, _parse_sets(args.model_set, "--model-set"), X, y)
    if test is not None and X.dim() == 2:
        test = (test[0].flatten(1), test[1])
    rep = diagnose(model, (X, y), test_data=test, alpha=args.alpha, steps=args.steps, lr=args.lr,
                   loss=args.loss, optimizer=args.optimizer, batch_size=args.batch_size,
                   n_probe=args.probe, n_snapshots=args.snapshots, kappa=not args.no_kappa,
                   seed=args.seed, device=args.device)
    from lazylab.lab.diagnosis_render import save

    path = save(rep, out)
    n = rep.numbers
    nan = float("nan")
    print(f"verdict: {rep.verdict} (kernel change {n['kernel_rel_change']:.3g}, linearization gap "
          f"{n.get('lin_gap_rel', nan):.3g}, weight change {n.get('rel_weight_change', nan):.3g})")
    print(f"report: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``lazylab diagnose ...`` on its own (``argv`` without the word ``diagnose``); exit status 2 and a
    one-line message on bad input."""
    parser = argparse.ArgumentParser(prog="lazylab")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["diagnose", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except (ValueError, TypeError, KeyError, LookupError, OSError, RuntimeError, ArithmeticError,
            ImportError) as e:
        print(f"lazylab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
