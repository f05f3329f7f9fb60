"""The main job (``python -m camdrop_kernels``): its timing line is a paired ratio that a loaded
machine's slow spells cancel out of, on one thread, printed with its spread."""
import re

import torch

from camdrop_kernels import __main__ as main_job


def test_paired_rounds_cancel_a_slow_spell_shared_by_a_round():
    """A fake clock: camdrop costs 3 units and the multiply 1, times a load factor that changes
    from round to round (1x to 40x, as a shared 2-core VM swings). The per-call times swing with
    it; every round's ratio is exactly 3, and the order alternates so neither always goes first."""
    load = [1, 40, 2, 25, 1, 7, 13, 1, 3, 30]
    now, calls = [0.0], []

    def make(name, cost):
        def fn():
            calls.append(name)
            timed = len(calls) - 6  # (after 3 warm-up calls of each)
            if timed > 0:
                now[0] += cost * load[(timed - 1) // 2]
        return fn

    times = main_job.paired_rounds({"camdrop": make("camdrop", 3.0), "multiply": make("multiply", 1.0)}, len(load),
                                   clock=lambda: now[0])
    assert calls[:6] == ["camdrop"] * 3 + ["multiply"] * 3  # warm-up
    assert calls[6:12] == ["camdrop", "multiply", "multiply", "camdrop", "camdrop", "multiply"]  # alternating order
    assert [a / b for a, b in zip(times["camdrop"], times["multiply"])] == [3.0] * len(load)
    assert max(times["multiply"]) / min(times["multiply"]) == 40.0  # (what unpaired medians are exposed to)


def test_quantiles():
    assert main_job.quantiles([4.0, 1.0, 3.0, 2.0, 5.0]) == (2.0, 3.0, 4.0)
    assert main_job.quantiles([1.0, 2.0]) == (1.25, 1.5, 1.75)


def test_main_job_prints_the_ratio_with_its_spread_on_one_thread(capsys):
    threads = torch.get_num_threads()
    assert main_job.main(["--shape", "2", "16", "12", "12", "--block-size", "3", "--rounds", "12"]) == 0
    assert torch.get_num_threads() == threads  # restored after the timing
    out = capsys.readouterr().out
    assert "output equals the reference bit for bit: yes" in out
    line = next(line for line in out.splitlines() if line.startswith("time per call"))
    match = re.search(r"time per call \(1 thread, 12 paired rounds\): camdrop ([\d.]+) ms, bare x \* scale ([\d.]+) "
                      r"ms \(medians\); camdrop / multiply ([\d.]+)x per round \(interquartile ([\d.]+)-([\d.]+)x\)",
                      line)
    assert match, line
    median, q1, q3 = (float(match.group(i)) for i in (3, 4, 5))
    assert 0 < q1 <= median <= q3
