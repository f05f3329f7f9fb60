"""Static reading of compiled kernels: SASS, registers, spills, instruction counts along paths
and around loops, with the ``cuobjdump``/``nvdisasm`` that ship inside Triton's NVIDIA backend.

No GPU is needed: ``triton.compile`` builds a cubin for a ``GPUTarget`` on any machine, and
these tools read it. The counts are *warp instructions*: each SASS instruction a warp issues
counts once, whatever its width.

- ``Sass.paths()``: for a kernel without loops, the instruction count of its shortest and
  longest path from entry to ``EXIT`` (e.g. the plain and the masked path of ``apply``).
- ``Sass.loops()``: each loop (a backward branch) with the instructions of its body and the
  Python source lines they come from (line info), so that a caller who knows the trip counts
  can estimate a dynamic count (``Sass.estimate``).
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_LINE = re.compile(r'^\s*//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`?\(?(\.L_x_\d+)\)?`?")


def tool(name: str) -> str:
    """Path of a CUDA binary tool bundled with Triton (``cuobjdump``, ``nvdisasm``, ``ptxas``)."""
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} is not bundled with this triton ({path})")
    return path


@dataclass
class Instr:
    addr: int
    pred: str
    opcode: str
    operands: str
    file: str  # innermost source location (an inlined helper's own line)
    line: int
    stack: Tuple[Tuple[str, int], ...] = ()  # every source location, innermost first (inlined calls)

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


@dataclass
class Loop:
    start: int  # index of the first instruction of the body (the branch target)
    end: int  # index of the backward branch
    body: List[Instr] = field(default_factory=list)  # excluding nested loops
    lines: Dict[Tuple[str, int], int] = field(default_factory=dict)  # source line -> instructions
    parent: Optional["Loop"] = None


def _run(args: Sequence[str]) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout


class Sass:
    """The SASS of one cubin (one kernel), parsed."""

    def __init__(self, cubin: bytes):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "k.cubin")
            with open(path, "wb") as f:
                f.write(cubin)
            self.text = _run([tool("nvdisasm"), "-c", "-gi", path])
            self.usage = _run([tool("cuobjdump"), "-res-usage", path])
        self.instrs: List[Instr] = []
        self.labels: Dict[str, int] = {}
        # Line info comes as runs of "//## File A, line a inlined at File B, line b" comments, one
        # per inlined frame, the outermost without "inlined at"; a run sets the stack of the
        # instructions after it.
        stack: List[Tuple[str, int]] = []
        in_run = False
        for raw in self.text.splitlines():
            m = _LINE.match(raw)
            if m:
                if not in_run:
                    stack = []
                    in_run = True
                if not stack:
                    stack.append((m.group(1), int(m.group(2))))
                if m.group(3):
                    stack.append((m.group(3), int(m.group(4))))
                continue
            in_run = False
            m = _LABEL.match(raw.strip())
            if m:
                self.labels[m.group(1)] = len(self.instrs)
                continue
            m = _INSTR.match(raw)
            if m:
                file, line = stack[0] if stack else ("", 0)
                self.instrs.append(Instr(int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3),
                                         m.group(4).strip(), file, line, tuple(stack)))
        # Drop the padding after the last EXIT: the self-branch (`.L: BRA .L`) and NOPs.
        last_exit = max((k for k, ins in enumerate(self.instrs) if ins.base == "EXIT"), default=len(self.instrs) - 1)
        self.instrs = self.instrs[: last_exit + 1]

    # -- resources -------------------------------------------------------------------------
    @functools.cached_property
    def resources(self) -> Dict[str, int]:
        """REG, STACK, SHARED, LOCAL from ``cuobjdump -res-usage``, plus spill instructions (STL/LDL)."""
        out = {}
        for key in ("REG", "STACK", "SHARED", "LOCAL"):
            m = re.search(rf"\b{key}:(\d+)", self.usage)
            out[key.lower()] = int(m.group(1)) if m else 0
        out["spill_instructions"] = sum(ins.base in ("STL", "LDL") for ins in self.instrs)
        return out

    def count(self, opcode_prefix: str) -> int:
        return sum(ins.opcode.startswith(opcode_prefix) for ins in self.instrs)

    # -- control flow ----------------------------------------------------------------------
    def _target(self, ins: Instr) -> Optional[int]:
        if ins.base not in ("BRA", "BRX", "JMP"):
            return None
        m = _TARGET.search(ins.operands)
        return self.labels.get(m.group(1)) if m else None

    def _successors(self, k: int) -> List[int]:
        ins = self.instrs[k]
        nxt = [k + 1] if k + 1 < len(self.instrs) else []
        if ins.base == "EXIT":
            return nxt if ins.pred else []
        target = self._target(ins)
        if target is None:
            return nxt
        if target <= k:  # a backward branch (paths(loops_once=True)): leave the loop
            return nxt
        return ([target] + nxt) if ins.pred else [target]

    def loops(self) -> List[Loop]:
        """Loops as backward branches, innermost bodies excluding their nested loops."""
        found = []
        for k, ins in enumerate(self.instrs):
            t = self._target(ins)
            if t is not None and t <= k:
                found.append(Loop(t, k))
        found.sort(key=lambda lp: (lp.start, -lp.end))
        for lp in found:
            inner = [o for o in found if o is not lp and lp.start <= o.start and o.end <= lp.end]
            for o in inner:
                if o.parent is None or (o.parent.end - o.parent.start) > (lp.end - lp.start):
                    o.parent = lp
        for lp in found:
            nested = [o for o in found if o.parent is lp]
            for k in range(lp.start, lp.end + 1):
                if any(o.start <= k <= o.end for o in nested):
                    continue
                ins = self.instrs[k]
                lp.body.append(ins)
                lp.lines[(ins.file, ins.line)] = lp.lines.get((ins.file, ins.line), 0) + 1
        return found

    def paths(self, loops_once: bool = False) -> Tuple[int, int]:
        """(shortest, longest) instruction count from entry to an EXIT; ValueError on a loop, unless
        ``loops_once``: each loop body then counts once (its backward branch is not taken), e.g.
        the apply kernels' batch-scale prologue, one trip up to 1024 samples."""
        n = len(self.instrs)
        if any(lp for lp in self.loops()) and not loops_once:
            raise ValueError("the kernel has loops: use loops()/estimate() instead of paths()")
        INF = float("inf")
        short, long_ = [INF] * (n + 1), [-INF] * (n + 1)
        for k in range(n - 1, -1, -1):  # branches go forward only: one backward sweep
            succ = self._successors(k)
            if not succ:  # EXIT
                short[k], long_[k] = 1, 1
                continue
            short[k] = 1 + min(short[s] for s in succ)
            long_[k] = 1 + max(long_[s] for s in succ)
            if self.instrs[k].base == "EXIT":  # a predicated EXIT may end the path here
                short[k] = 1
        return int(short[0]), int(long_[0])

    def estimate(self, trips: Dict[str, Tuple[Tuple[str, int, int], float]],
                 cold: Sequence[Tuple[str, int, int]] = (), only: Optional[Sequence[str]] = None
                 ) -> Tuple[float, List[dict]]:
        """Dynamic warp-instruction estimate for one warp of one program.

        ``trips``: source loop name -> ((file, first line, last line), trips of one entry).
        ``cold``: source ranges (file, first, last) whose code is assumed not to run (e.g. a
        rarely taken branch). An instruction belongs to a range when any frame of its inline
        stack lies in it. Each SASS loop (a backward branch) is matched to the innermost source
        loop that holds most of its instructions; an instruction counts once times the trips of
        every SASS loop around it. A source loop that ptxas splits (say an unrolled main loop and
        a remainder) is counted once per part: an over-estimate. ``only``: count just these base
        opcodes (e.g. ("BAR",): barriers executed). Returns (estimate, per-loop detail)."""
        def inside(ins: Instr, rng) -> bool:
            file, lo, hi = rng
            name = os.path.basename(file)  # (by name: a copy of the tree elsewhere has other paths)
            return any(lo <= line <= hi and os.path.basename(f) == name for f, line in ins.stack)

        loops = self.loops()
        names: Dict[int, str] = {}
        # Innermost SASS loops first; a source loop taken by a loop nested inside is not a
        # candidate for the loops around it (their own code may sit on the inner loop's lines).
        for lp in sorted(loops, key=lambda o: o.end - o.start):
            taken = {names[id(o)] for o in loops if id(o) in names and lp.start <= o.start and o.end <= lp.end}
            votes: Dict[str, int] = {}
            for ins in lp.body:
                best = None
                for name, (rng, _) in trips.items():
                    if name in taken or not inside(ins, rng):
                        continue
                    if best is None or rng[2] - rng[1] < trips[best][0][2] - trips[best][0][1]:
                        best = name
                if best is not None:
                    votes[best] = votes.get(best, 0) + 1
            if not votes:
                raise ValueError(f"SASS loop at {lp.start} matches no source loop "
                                 f"(lines {sorted(set((os.path.basename(i.file), i.line) for i in lp.body))[:8]})")
            names[id(lp)] = max(votes, key=votes.get)
        is_cold = [any(inside(ins, rng) for rng in cold) for ins in self.instrs]
        # A loop whose own instructions are mostly cold, or whose source loop lies in a cold range,
        # is cold as a whole (without inline stacks, code inlined from a function that is also
        # called from hot code cannot be told apart by its lines).
        def within_cold(name: str) -> bool:
            file, lo, hi = trips[name][0]
            return any(os.path.basename(f) == os.path.basename(file) and c_lo <= lo and hi <= c_hi
                       for f, c_lo, c_hi in cold)

        for lp in loops:
            own = [k for k in range(lp.start, lp.end + 1) if self.instrs[k] in lp.body]
            if own and (within_cold(names[id(lp)]) or sum(is_cold[k] for k in own) * 2 > len(own)):
                for k in range(lp.start, lp.end + 1):
                    is_cold[k] = True
        total, cold_count = 0.0, 0
        per_loop: Dict[str, dict] = {}
        for k, ins in enumerate(self.instrs):
            if only is not None and ins.base not in only:
                continue
            if is_cold[k]:
                cold_count += 1
                continue
            mult, innermost = 1.0, None
            for lp in loops:
                if lp.start <= k <= lp.end:
                    mult *= trips[names[id(lp)]][1]
                    if innermost is None or lp.end - lp.start < innermost.end - innermost.start:
                        innermost = lp
            total += mult
            key = names[id(innermost)] if innermost is not None else "(straight)"
            entry = per_loop.setdefault(key, dict(loop=key, instructions=0, executed=0.0))
            entry["instructions"] += 1
            entry["executed"] += mult
        detail = sorted(per_loop.values(), key=lambda e: -e["executed"])
        detail.append(dict(loop="(cold, not counted)", instructions=cold_count, executed=0.0))
        return total, detail


def function_lines(module_file: str, names: Sequence[str]) -> List[Tuple[str, int, int]]:
    """(file, first, last line) of the bodies of the named functions of a source file."""
    import ast

    with open(module_file) as f:
        tree = ast.parse(f.read())
    return [(module_file, node.body[0].lineno, node.end_lineno) for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name in names]


def source_regions(module_file: str) -> Tuple[Dict[str, Tuple[str, int, int]], List[Tuple[str, int, int]]]:
    """Marked regions of a kernel source file: loops (``# loop: NAME`` on a ``for`` line) as
    NAME -> (file, for line, last line of its body), and cold branches (``# cold`` on an ``if``
    line) as (file, first, last line of the if-body). (``while`` loops may be marked too.)"""
    import ast

    with open(module_file) as f:
        text = f.read()
    lines = text.splitlines()
    loops, cold = {}, []
    for node in ast.walk(ast.parse(text)):
        marker = lines[node.lineno - 1] if hasattr(node, "lineno") else ""
        if isinstance(node, (ast.For, ast.While)):
            m = re.search(r"#\s*loop:\s*(\w+)", marker)
            if m:
                loops[m.group(1)] = (module_file, node.lineno, node.end_lineno)
        elif isinstance(node, ast.If) and re.search(r"#\s*cold\b", marker):
            cold.append((module_file, node.body[0].lineno, node.body[-1].end_lineno))
    return loops, cold
