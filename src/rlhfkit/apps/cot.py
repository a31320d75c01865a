"""Chain-of-thought prompt templates, and reading the final answer out of a reply.

Few-shot CoT shows worked examples whose answers reason step by step before "The answer is N"
[CoT]; zero-shot CoT only appends "Let's think step by step." [ZS]. ``plain_messages`` asks for the
answer alone (the baseline). The exemplars are the first GSM8K-style ones of [CoT], Table 20.

[CoT] Wei et al. 2022, "Chain-of-Thought Prompting Elicits Reasoning in Large Language Models".
[ZS] Kojima et al. 2022, "Large Language Models are Zero-Shot Reasoners".
"""

from __future__ import annotations

import re

EXAMPLES = [
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there "
     "will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been "
     "21 - 15 = 6.", "6"),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5.", "5"),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39.", "39"),
]
SYSTEM = "You answer math word problems."
ZERO_SHOT_TRIGGER = "Let's think step by step."


def plain_messages(question: str) -> list[dict]:
    """The baseline: the same examples with their answers only, no reasoning."""
    shots = [m for q, _, a in EXAMPLES for m in ({"role": "user", "content": q},
                                                  {"role": "assistant", "content": f"The answer is {a}."})]
    return [{"role": "system", "content": SYSTEM}, *shots, {"role": "user", "content": question}]


def cot_messages(question: str) -> list[dict]:
    """Few-shot chain of thought: each example reasons, then says 'The answer is N.'"""
    shots = [m for q, r, a in EXAMPLES for m in ({"role": "user", "content": q},
                                                  {"role": "assistant", "content": f"{r} The answer is {a}."})]
    return [{"role": "system", "content": SYSTEM}, *shots, {"role": "user", "content": question}]


def zero_shot_cot_messages(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{question}\n{ZERO_SHOT_TRIGGER}"}]


_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"


def extract_answer(text: str) -> str | None:
    """The number after the last 'answer is', else the last number in the text; None if there is none.
    Thousands separators go ('1,000' → '1000'); '6.0' → '6'."""
    found = re.findall(rf"answer is\s*\$?\s*({_NUMBER})", text, flags=re.IGNORECASE) or re.findall(_NUMBER, text)
    return normalize_number(found[-1]) if found else None


def normalize_number(s: str) -> str | None:
    """A number's canonical text ('1,000.50' → '1000.5', '6.0' → '6'); None if ``s`` is not a number."""
    try:
        value = float(s.replace(",", "").strip())
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(round(value, 6))
