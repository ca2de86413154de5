"""The ``lazylab`` command line: ``list``, ``run``, ``report``."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from lazylab.lab.executors import CellError, CellsFailedError

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Run lazylab's experiments (paper reproductions) with one command.

  lazylab list                                   the experiments, one line each
  lazylab run NAME [--preset quick|paper]        run one; prints the path of report.md
  lazylab report DIR [--set TOL=V]               rebuild DIR's report from its stored results
  lazylab diagnose --model M --data D            how lazy is this run? (see lazylab diagnose -h)

Config: defaults -> the preset's values -> --set key=value. Grid: the preset's sweep plus
--sweep key=v1,v2,... (the CLI wins on the same key); every combination is one cell.
Each finished cell is committed to DIR/results.sqlite in one transaction, so an interrupted run
loses at most the cells in flight: `lazylab run NAME ... --out DIR --resume` runs only the
missing ones. Executors: local (in-process; --workers N for N processes), dask (a local Dask
cluster of --workers processes) or dask://HOST:PORT (an existing `dask scheduler`).
"""

EPILOG = """\
examples:
  lazylab run regimes-demo --preset quick
  lazylab run regimes-demo --set steps=200 --sweep alpha=1,10,100 --out runs/a
  lazylab run regimes-demo --out runs/a --resume --sweep alpha=1,10,100 --set steps=200
  lazylab run regimes-demo --preset paper --executor dask --workers 8
  lazylab run regimes-demo --executor dask://10.0.0.5:8786
  lazylab report runs/a

output folder DIR (default runs/NAME-<timestamp>):
  config.yaml  results.sqlite  summary.json  report.md  figures/*.png  environment.json
Python: lazylab.load_results(DIR) -> pandas.DataFrame (one row per cell and step).
See docs/lab.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lazylab", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"lazylab {_version()}")
    sub = p.add_subparsers(dest="command", metavar="{list,run,report,diagnose}")
    sub.required = True

    sub.add_parser("list", help="list the registered experiments with their presets",
                   description="List the registered experiments with one-line descriptions.")

    r = sub.add_parser(
        "run", help="run an experiment (a sweep of cells) and write its report",
        description="Run experiment NAME: resolve its config, run every cell of the grid on the "
                    "executor, store the records and write the report. Prints report.md's path.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("name", metavar="NAME", help="experiment name (see `lazylab list`)")
    r.add_argument("--preset", default="quick",
                   help="named settings: quick (minutes on 2 CPU cores) or paper (the paper's "
                        "sizes); default quick")
    r.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable); the value is parsed by the "
                        "key's type: int, float, bool (true/false), str, list ([1,2,3])")
    r.add_argument("--sweep", dest="sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="sweep one config key over values (repeatable); all sweeps combine as a "
                        "grid; list values need brackets: widths=[8,8],[16,16]")
    r.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default runs/NAME-<timestamp>); must be new or empty "
                        "unless --resume")
    r.add_argument("--executor", default="local", metavar="local|dask|dask://HOST:PORT",
                   help="where cells run: local (default), dask (a LocalCluster of --workers "
                        "processes), dask://HOST:PORT (an existing Dask scheduler)")
    r.add_argument("--workers", type=int, default=1, metavar="N",
                   help="parallel worker processes for local/dask (default 1 = in-process)")
    r.add_argument("--resume", action="store_true",
                   help="complete the run in --out DIR: run only its missing cells (the "
                        "experiment, preset, --set and --sweep must match the stored run)")
    r.add_argument("--device", default="cpu", metavar="cpu|cuda",
                   help="device for the cells' tensors (default cpu)")
    r.add_argument("--threads", type=int, default=1, metavar="T",
                   help="torch threads per cell (default 1; parallelism comes from --workers, "
                        "and one thread count everywhere gives identical records)")
    r.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are off anyway when stderr is not a terminal)")

    rp = sub.add_parser("report", help="rebuild a run folder's report from its stored results",
                        description="Rebuild summary.json, figures/ and report.md of DIR from "
                                    "DIR/results.sqlite, without training.")
    rp.add_argument("dir", metavar="DIR", help="a run folder (holds results.sqlite)")
    rp.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                    help="re-judge with another value of a report setting (a tolerance; "
                         "repeatable); the stored records are not recomputed")
    from lazylab.lab import diagnose_cli  # `lazylab diagnose` (lazylab/lab/diagnose_cli.py)

    diagnose_cli.add_parser(sub)
    return p


def _version() -> str:
    from lazylab import __version__

    return __version__


def _cmd_list() -> int:
    from lazylab.lab.registry import list_experiments

    exps = list_experiments()
    if not exps:
        print("no experiments registered")
        return 0
    width = max(len(e.name) for e in exps)
    for e in exps:
        print(f"{e.name:<{width}}  {e.description}  [presets: {', '.join(e.presets)}]")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lazylab`` command; returns the exit status (2 on bad input)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        if args.command == "list":
            return _cmd_list()
        if args.command == "diagnose":
            from lazylab.lab import diagnose_cli

            return diagnose_cli.run(args)
        if args.command == "report":
            from lazylab.lab.report import build_report

            print(f"report: {build_report(args.dir, sets=args.set or None)}")
            return 0
        from lazylab.lab.runner import run_experiment

        run_experiment(args.name, preset=args.preset, set=args.set, sweep=args.sweep,
                       out=args.out, executor=args.executor, workers=args.workers,
                       resume=args.resume, device=args.device,
                       progress=not args.no_progress and sys.stderr.isatty(),
                       threads=args.threads,
                       argv=["lazylab", *args_list])
        return 0
    except KeyboardInterrupt:
        print("lazylab: interrupted; finished cells are stored (use --resume)", file=sys.stderr)
        return 130
    except CellsFailedError as e:  # workers died twice on some cells; the others are stored
        print(f"lazylab: error: {e}", file=sys.stderr)
        return 1
    except CellError as e:  # the experiment's code failed: show where
        traceback.print_exception(type(e.error), e.error, e.error.__traceback__)
        print(f"lazylab: error: {e}\nfinished cells are stored; fix the cause and rerun the same "
              "command with --resume (a changed config needs a new --out)", file=sys.stderr)
        return 1
    except (ValueError, TypeError, KeyError, LookupError, OSError, RuntimeError,
            ArithmeticError, ImportError) as e:
        if os.environ.get("LAZYLAB_DEBUG"):
            traceback.print_exc()
        print(f"lazylab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
