"""Derived figures from a benchmark run: bandwidth, share of the copy's bandwidth, ratios, memory.

Used by the suite's terminal summary, and standalone on pytest-benchmark's JSON:
``python benchmarks/report.py .benchmarks/.../0001_run.json``.
"""
from __future__ import annotations

import json
from collections import defaultdict

PEERS = ("F.dropout", "timm.drop_block_2d[coupled]", "timm.drop_block_2d[per channel]", "torchvision.drop_block2d",
         "torchvision.drop_block3d", "naive_camdrop", "reference")
CAMDROPS = ("camdrop[eligible]", "camdrop[dropblock]")


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _median(row) -> float:
    return row["stats"]["median"]


def render(rows, device: str = "") -> list:
    """Lines of the summary: one table per group, then memory, then the headline ratios."""
    lines = ["", f"=== camdrop_kernels benchmark summary ({device}) ==="]
    groups = defaultdict(dict)
    for r in rows:
        groups[r["group"]][r["extra_info"].get("contender", r["name"])] = r
    copy_bw = {}
    for g, members in groups.items():
        if g.startswith("forward |") and "floor:copy" in members:
            c = members["floor:copy"]
            copy_bw[g.split("|", 1)[1]] = c["extra_info"]["bytes"] / _median(c)
    headline = []
    for g in sorted(groups):
        members = groups[g]
        lines.append(f"\n[{g}]")
        key = g.split("|", 1)[1] if "|" in g else None
        bw_copy = copy_bw.get(key)
        mul = members.get("floor:multiply")
        cam = members.get("camdrop[eligible]") or members.get("camdrop") or members.get("camdrop (convert_resnet defaults)")
        base = mul or members.get("plain")
        if bw_copy:
            lines.append(f"  copy bandwidth (read + write): {bw_copy / 1e9:.1f} GB/s")
        lines.append(f"  {'contender':<34}{'median':>12}{'GB/s':>9}{'% copy':>8}{'x base':>8}{'/camdrop':>10}"
                     f"{'dropped':>9}")
        for name, r in sorted(members.items(), key=lambda kv: _median(kv[1])):
            t = _median(r)
            nbytes = r["extra_info"].get("bytes", 0)
            gbs = f"{nbytes / t / 1e9:9.1f}" if nbytes else f"{'':>9}"
            pct = f"{100 * nbytes / t / bw_copy:7.0f}%" if nbytes and bw_copy else f"{'':>8}"
            rmul = f"{t / _median(base):8.2f}" if base else f"{'':>8}"
            speed = f"{t / _median(cam):9.1f}x" if cam and r is not cam else f"{'':>10}"
            share = r["extra_info"].get("dropped_share")
            drop = f"{100 * share:8.2f}%" if share is not None else f"{'':>9}"
            lines.append(f"  {name:<34}{t * 1e3:10.3f}ms{gbs}{pct}{rmul}{speed}{drop}")
        if cam and base:
            peers = {p: _median(members[p]) / _median(cam) for p in PEERS if p in members}
            modes = ", ".join(f"{n.split('[')[1][:-1]} {_median(members[n]) / _median(base):.2f}x "
                              f"({100 * (members[n]['extra_info'].get('dropped_share') or 0):.2f}% dropped)"
                              for n in CAMDROPS if n in members)
            share = ""
            mask = [r for n, r in members.items() if n.startswith("mask build")]
            if mask:
                share = f", mask build {100 * _median(mask[0]) / _median(cam):.0f}% of camdrop"
            pct = ""
            if bw_copy and cam["extra_info"].get("bytes"):
                pct = f", {100 * cam['extra_info']['bytes'] / _median(cam) / bw_copy:.0f}% of copy bandwidth"
            what = modes or f"camdrop {_median(cam) / _median(base):.2f}x"
            headline.append(f"  {g}: {what} the {'multiply' if mul else 'plain step'}{pct}{share}"
                            + ("; speedup over " if peers else "")
                            + ", ".join(f"{p} {v:.2f}x" for p, v in peers.items()))
    mem = [(r["extra_info"]["contender"], r["group"], r["extra_info"]) for r in rows
           if "saved_bytes" in r.get("extra_info", {})]
    if mem:
        lines.append("\nSaved for backward (bytes / x bytes), per contender (first group measured):")
        seen = set()
        for name, g, info in mem:
            if name in seen:
                continue
            seen.add(name)
            peak = info.get("peak_extra_bytes")
            peak_s = f", peak extra {peak / info['x_bytes']:.2f} x-sizes" if peak is not None else ""
            lines.append(f"  {name:<30}{info['saved_bytes'] / info['x_bytes']:8.4f}{peak_s}   [{g}]")
    if headline:
        lines.append("\nHeadline (per group):")
        lines += headline
    return lines


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--headline", action="store_true", help="only the memory table and the headline ratios")
    args = parser.parse_args(argv)
    data = json.load(open(args.json))
    device = data.get("machine_info", {}).get("camdrop_device") or \
        data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "")
    lines = render(data["benchmarks"], device=device)
    if args.headline:
        start = next((k for k, line in enumerate(lines) if line.startswith("Saved for backward")
                      or line.startswith("\nSaved for backward")), len(lines))
        lines = lines[:2] + lines[start:]
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
