"""The short table benchmarks/gpu_check.sh prints last, from the JSON and logs it left in $OUT."""
from __future__ import annotations

import json
import os
import re
import sys

_PYTEST_SUMMARY = re.compile(r"^(\d+ (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?),? ?)+ in [\d.]+s")


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main(out: str) -> int:
    lines = []
    env = os.path.join(out, "env.txt")
    if os.path.exists(env):
        with open(env) as f:
            lines += [line.rstrip() for line in f if line.strip()][:3]
    bench = _load(os.path.join(out, "bench.json"))
    if bench:
        lines += ["", "| layout | contender | wall us | event us | graph us | GB/s (event) | x dropped |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for key, r in bench["results"].items():
            layout, name = key.split(" | ", 1)
            graph = f"{r['graph_us']:.1f}" if r.get("graph_us") else "-"
            gbs = f"{r['event_gbs']:.0f}" if r.get("event_gbs") else "-"
            dropped = f"{100 * r['dropped']:.2f}%" if r.get("dropped") is not None else "-"
            lines.append(f"| {layout} | {name} | {r['wall_us']:.1f} | {r['event_us']:.1f} | {graph} | {gbs} | "
                         f"{dropped} |")
        lines += ["", "targets (issue 14, event timings):"]
        lines += [f"  {'met ' if met else 'MISS'} {text}: {value}" for text, value, met in bench["targets"]]
    else:
        lines.append("bench: no results (see bench.log)")
    resnet = _load(os.path.join(out, "resnet.json"))
    if resnet:
        lines += ["", f"resnet50 bf16 channels_last batch {resnet['batch']} (ms/step, peak GiB):"]
        for kind, r in resnet["results"].items():
            lines.append(f"  {kind}: " + (f"{r['step_ms']:.2f} ms, {r['peak_gib']:.1f} GiB"
                                          + (f", {r['vs_plain']:.3f} x plain" if r.get("vs_plain") else "")
                                          if "step_ms" in r else r.get("error", "?")))
        t = resnet["target"]
        lines.append(f"  {'met ' if t['met'] else 'MISS'} {t['text']}: {t['value']}")
    else:
        lines.append("resnet: no results (see resnet.log)")
    tests = os.path.join(out, "tests.log")
    if os.path.exists(tests):
        with open(tests) as f:
            log = [line.strip() for line in f]
        # pytest's last line ("3 failed, 120 passed, 2 skipped in 50.1s", "=" around it without -q)
        # and its FAILED/ERROR lines.
        final = [line for line in log if _PYTEST_SUMMARY.match(line.strip("= "))]
        failed = [line for line in log if line.startswith(("FAILED", "ERROR"))]
        lines += ["", "tests: " + (final[-1].strip("= ") if final else "no summary line (timeout? see tests.log)")]
        lines += [f"  {t}" for t in failed[:10]]
        lines += [f"  {line}" for line in log if line.startswith("Triton compiles")]
        if not final:
            lines.append(f"  {sum(' PASSED' in line for line in log)} passed before the cut")
    ncu = os.path.join(out, "ncu.txt")
    lines.append("ncu: " + (f"profile in {ncu}" if os.path.exists(ncu) and os.path.getsize(ncu) > 0
                            else "not available (see ncu.log)"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "./gpu-results"))
