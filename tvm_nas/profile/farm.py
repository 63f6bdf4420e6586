"""The profile's measuring stage on a board farm: ops built here, timed on every board under the key at once."""

from __future__ import annotations

import time

from ..errors import TvmNasError
from .table import measured_entry


def measure_on_farm(todo, fused, task_of, table, path, db, spec, tvm_target, gpu, batch, rng, prog, mbar, timing,
                    console) -> None:
    """Build each op with the database and time it on whichever board is free; the table is saved after every op.

    A board that fails hands its op to the others and is named at the end; when every board has failed, what was
    measured is kept and the error says to run the command again.
    """
    import numpy as np

    from ..backend import measure, tuning
    from ..backend.farm import Farm
    from ..backend.pipeline import build

    bars: dict[int, int] = {}

    def on_board(boards):
        for i, b in enumerate(boards):
            label = f"  board {b.name}" + (" [red]failed[/]" if b.failed else "")
            if i not in bars:
                bars[i] = prog.add_task(label, total=None)
            prog.update(bars[i], description=label, completed=b.measured)

    by_key = {k.key: k for k in todo}
    t0 = time.perf_counter()

    def on_result(key, t):
        k, tasks = by_key[key], task_of[key]
        table.entries[key] = measured_entry(k, t, batch, sum(tuning.records(db, tk.mod) for tk in tasks),
                                            [f"{tk.name}#{tk.key}" for tk in tasks])
        timing.update(measure_s=round(time.perf_counter() - t0, 2), measured_ops=len(table.entries))
        table.save(path)
        prog.advance(mbar)

    farm = Farm(spec, measure.run_and_time, on_board=on_board, say=lambda m: prog.console.print(f"[yellow]{m}"))
    prog.console.print(f"measuring on {farm.n} board(s) under key '{spec.runner.key}'")
    on_board(farm.boards)
    pending = 0
    try:
        for k in todo:
            exe = build(fused[k.key], tvm_target, db, gpu=gpu, prepack=not gpu)
            c, h, w = k.in_shape
            shape = (batch, c, h, w) if k.op == "stem_conv_k3" else (batch, h, w, c)  # the stem takes the net's NCHW
            farm.submit(k.key, exe, [rng.standard_normal(shape, dtype=np.float32)])
            pending += 1
            pending -= farm.drain(on_result)
        pending -= farm.drain(on_result, block=True, pending=pending)
    finally:
        farm.close()
    failed = farm.failed()
    timing["boards"] = {b.name: {"measured": b.measured, "seconds": round(b.seconds, 2), "failed": b.failed}
                        for b in farm.boards}
    if pending:
        raise TvmNasError(f"{path}: every board under key '{spec.runner.key}' failed "
                          f"({'; '.join(f'{b.name}: {b.failed}' for b in failed)}); {len(table.entries)} ops "
                          "measured are kept: run the same command again to measure the rest")
    if failed:
        console.print(f"[yellow]board(s) that failed during the run: "
                      f"{', '.join(f'{b.name} ({b.failed})' for b in failed)}; their ops were measured on the others")
