"""``tvm-nas run``: arguments built from :class:`~tvm_nas.config.RunConfig`, and the runner."""

from __future__ import annotations

import argparse

from ..config import DEVICES, RunConfig
from ..stages import STAGES

_HELP = {"space": "search space", "target": "hardware target", "data": "builtin | imagefolder:PATH | cifar10:PATH",
         "logs_dir": "per-target tuning databases and tables", "seed": "seed of everything random"}


def add_run_args(p: argparse.ArgumentParser) -> None:
    for name, f in RunConfig.model_fields.items():
        text = f.description or _HELP.get(name, name)
        if "(default" not in text:
            text += f" (default {f.default})"
        kw = {"dest": name, "default": None, "help": text}
        if f.annotation is bool:  # on by default: the flag turns it off
            p.add_argument("--no-" + name.replace("_", "-"), action="store_const", const=False, **kw)
            continue
        if name in ("loss", "weight_sampling"):
            kw["choices"] = list(f.annotation.__args__)
        elif name == "device":
            kw["choices"] = list(DEVICES)
        elif f.annotation not in (str, str | None):
            kw["type"] = int if f.annotation in (int, int | None) else float
        p.add_argument("--" + name.replace("_", "-"), **kw)
    p.add_argument("--out", help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run; finished stages are kept")
    p.add_argument("--stop-after", choices=STAGES, help="stop cleanly after this stage (continue with --resume)")
    p.add_argument("--trust", action="store_true", help="with --resume: load the run folder's compiled libraries "
                                                        "even if this tvm-nas did not build them on this machine "
                                                        "(loading a library runs its code; without this they are "
                                                        "refused)")


def run_run(args: argparse.Namespace) -> int:
    from ..run import start_or_resume
    from .deploy import trust_libraries

    trust_libraries(args)

    given = {k: getattr(args, k) for k in RunConfig.model_fields if getattr(args, k, None) is not None}
    if "device" in given:  # refuse a missing GPU now, not after the profile stage
        from ..search.distributed import resolve_device

        resolve_device(given["device"])
    start_or_resume(given, out=args.out, resume=args.resume, stop_after=args.stop_after)
    return 0
