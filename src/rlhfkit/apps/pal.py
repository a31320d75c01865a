"""Program-aided language models (PAL): the model writes Python, an interpreter computes the answer [PAL].

The model sees worked examples whose answers are a ``solution()`` function, and writes one for the new
question. The program runs in ``sandbox.run_python`` — never in this process: a model's output is
untrusted — with ``print(solution())`` appended, and what it prints is the answer. A program that fails
(error, time or memory limit) gives no answer, and the reason is kept.

[PAL] Gao et al. 2023, "PAL: Program-aided Language Models" (prompt format of their GSM8K prompt).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlhfkit.apps.cot import EXAMPLES, normalize_number
from rlhfkit.apps.llm import Chat
from rlhfkit.apps.sandbox import RunResult, run_python

SYSTEM = "You solve math word problems by writing a Python function solution() that returns the answer."
PROGRAMS = [  # one per cot.EXAMPLES question, in order
    "def solution():\n    trees_initial = 15\n    trees_after = 21\n    trees_added = trees_after - trees_initial\n"
    "    result = trees_added\n    return result",
    "def solution():\n    cars_initial = 3\n    cars_arrived = 2\n    total_cars = cars_initial + cars_arrived\n"
    "    result = total_cars\n    return result",
    "def solution():\n    leah_chocolates = 32\n    sister_chocolates = 42\n    total = leah_chocolates + sister_chocolates\n"
    "    eaten = 35\n    result = total - eaten\n    return result",
]


@dataclass
class PalAnswer:
    answer: str | None  # what the program printed, as a canonical number when it is one
    program: str  # the code that ran (the model's, plus the print line)
    run: RunResult | None  # None when the reply held no code

    def reason(self) -> str:
        return "no code in the reply" if self.run is None else self.run.reason()


def pal_messages(question: str) -> list[dict]:
    shots = [m for (q, _, _), program in zip(EXAMPLES, PROGRAMS)
             for m in ({"role": "user", "content": q}, {"role": "assistant", "content": f"```python\n{program}\n```"})]
    return [{"role": "system", "content": SYSTEM}, *shots, {"role": "user", "content": question}]


def extract_program(reply: str) -> str | None:
    """The first ```python fenced block of the reply, else the reply itself if it defines solution(); else None."""
    fenced = re.search(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", reply, flags=re.DOTALL)
    code = fenced.group(1) if fenced else reply
    return code.strip() if "def solution" in code else None


def run_program(code: str, *, timeout_s: float = 5.0, memory_mb: int = 256) -> PalAnswer:
    """Run a PAL program (it defines solution()) in the sandbox; the answer is what solution() returns."""
    program = f"{code}\n\nprint(solution())\n"
    run = run_python(program, timeout_s=timeout_s, memory_mb=memory_mb)
    printed = run.stdout.strip().splitlines()
    answer = None
    if run.ok and printed:
        answer = normalize_number(printed[-1]) or printed[-1]
    return PalAnswer(answer, program, run)


def solve(chat: Chat, question: str, *, timeout_s: float = 5.0) -> PalAnswer:
    """Ask the model for a program, run it sandboxed, return the answer it computes."""
    code = extract_program(chat(pal_messages(question)))
    if code is None:
        return PalAnswer(None, "", None)
    return run_program(code, timeout_s=timeout_s)
