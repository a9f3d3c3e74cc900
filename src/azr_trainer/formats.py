"""The words around an AZR task: how a proposer or solver prompt is written and how an answer
is read back. Two formats, one interface:

- ``compact``: terse, for the tiny model pretrained from zero on generator documents (it
  learns exactly this format; every answer ends with a blank line);
- ``paper``: natural-language instructions and ``<answer>…</answer>`` tags in the spirit of
  the paper's prompts (our own wording), for a pretrained causal LM imported from Hugging Face
  or GGUF; the answer ends with ``</answer>``.

Parsing never evaluates anything: values go through ``ast.literal_eval`` (guarded), programs
through the executor's allow-list; running them is the executor's job.
"""
from __future__ import annotations

import ast
import re

from . import executor

MAX_LITERAL_CHARS = 2000


def parse_literal(text: str):
    """A Python literal written by the model, or raise ValueError. Never evaluates code."""
    text = text.strip()
    if not text or len(text) > MAX_LITERAL_CHARS:
        raise ValueError("empty or too long")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise ValueError(str(e)) from None


def is_literal(text: str) -> bool:
    try:
        parse_literal(text)
        return True
    except ValueError:
        return False


def is_arguments(text: str) -> bool:
    """``text`` is an argument list of literals, e.g. ``[1, 2], 3``."""
    return is_literal(f"({text},)")


def shown_count(n_pairs: int) -> int:
    """Induction shows the first half of its pairs (rounded up); the rest are held out."""
    return (n_pairs + 1) // 2


def triplet_text(code: str, inp: str, out: str) -> str:
    return f"{code}\n>>> f({inp}) = {out}"


class CompactFormat:
    name = "compact"
    stop = "\n\n"  # every answer ends with a blank line
    # A small model often writes its proposal like the references before it: with a guess of the
    # output and "##" after it. Both are accepted (the output is the executor's to compute).
    proposal_stops = ("\n\n", "\n##")

    def answer(self, text: str) -> tuple[str, bool]:
        """The answer part of a generation and whether it was finished."""
        cut = text.find(self.stop)
        return (text, False) if cut < 0 else (text[:cut], True)

    # solver prompts end where the answer starts
    def deduction(self, code: str, inp: str) -> str:
        return f"#D\n{code}\n>>> f({inp})\n= "

    def abduction(self, code: str, out: str) -> str:
        return f"#A\n{code}\n>>> f(?) = {out}\n? "

    def induction(self, message: str, shown: list[tuple[str, str]]) -> str:
        pairs = "".join(f">>> f({i}) = {o}\n" for i, o in shown)
        return f"#I\n# {message}\n{pairs}def f(x):\n"

    def induction_program(self, answer: str) -> str:
        """The program a solver's induction answer stands for (its first line is in the prompt)."""
        return "def f(x):\n" + answer

    def induction_answer(self, code: str) -> str:
        """The ideal induction answer for ``code`` (pretraining documents)."""
        return code.split("\n", 1)[1] if "\n" in code else ""

    def proposer(self, kind: str, references: list[tuple[str, str, str]]) -> str:
        tag = {"deduction": "#PD", "abduction": "#PA"}[kind]
        return tag + "\n" + "".join(triplet_text(c, i, o) + "\n##\n" for c, i, o in references)

    def proposal(self, code: str, inp: str) -> str:
        return f"{code}\n>>> f({inp})"

    def induction_proposer(self, code: str, n_inputs: int) -> str:
        return f"#PI\n{code}\n"

    def induction_proposal(self, message: str, inputs: list[str]) -> str:
        return f"# {message}\n" + "\n".join(f">>> f({i})" for i in inputs)

    def parse_proposal(self, text: str) -> tuple[str, str] | None:
        """A deduction/abduction proposal → (program source, input source), or None when malformed."""
        ends = [i for i in (text.find(s) for s in self.proposal_stops) if i >= 0]
        body = text[:min(ends)] if ends else ""
        if "\n>>> f(" not in body:
            return None
        code, call = body.split("\n>>> f(", 1)
        call = call.split(") = ", 1)[0] + ")" if ") = " in call else call
        if not call.endswith(")"):
            return None
        return _checked(code, call[:-1])

    def parse_induction_proposal(self, text: str, n_inputs: int) -> tuple[str, list[str]] | None:
        body, finished = self.answer(text)
        lines = body.split("\n")
        if not finished or not lines[0].startswith("# "):
            return None
        calls = []
        for line in lines[1:]:
            if not (line.startswith(">>> f(") and line.endswith(")")):
                return None
            calls.append(line[6:-1])
        return _distinct_inputs(lines[0][2:].strip(), calls, n_inputs)


_CODE_RE = re.compile(r"```python\n(.*?)```", re.S)
_INPUT_RE = re.compile(r"```input\n(.*?)```", re.S)
_MESSAGE_RE = re.compile(r"```message\n(.*?)```", re.S)


class PaperFormat:
    """Instructions in plain English, reasoning allowed, the result inside <answer> tags."""
    name = "paper"
    stop = "</answer>"
    proposal_stops = (stop,)
    preamble = ("A conversation between a user and an assistant. The assistant thinks step by step inside "
                "<think> </think> and then gives the final result inside <answer> </answer>.\n\nUser: ")
    opening = "\n\nAssistant: <think>"

    def answer(self, text: str) -> tuple[str, bool]:
        m = re.search(r"<answer>(.*?)</answer>", text, re.S)
        if m is None:
            return "", False
        body = m.group(1).strip()
        code = _CODE_RE.search(body)
        return (code.group(1) if code else body).strip("\n"), True

    def _prompt(self, task: str) -> str:
        return self.preamble + task + self.opening

    def deduction(self, code: str, inp: str) -> str:
        return self._prompt(f"What does this Python function return for the given input?\n```python\n{code}\n```\n"
                            f"Input: f({inp})\nGive the returned value as a Python literal.")

    def abduction(self, code: str, out: str) -> str:
        return self._prompt(f"Find an input for this Python function that makes it return {out}.\n```python\n"
                            f"{code}\n```\nGive the arguments of f as Python literals, separated by commas.")

    def induction(self, message: str, shown: list[tuple[str, str]]) -> str:
        pairs = "\n".join(f"f({i}) == {o}" for i, o in shown)
        return self._prompt(f"Write a Python function f that satisfies every example below. Hint: {message}\n"
                            f"{pairs}\nGive the whole function in a ```python block.")

    def induction_program(self, answer: str) -> str:
        return answer

    def induction_answer(self, code: str) -> str:
        return code

    def proposer(self, kind: str, references: list[tuple[str, str, str]]) -> str:
        goal = ("predict its output from the input" if kind == "deduction"
                else "find an input from the output")
        refs = "\n\n".join(f"```python\n{c}\n```\n```input\n{i}\n```\n```output\n{o}\n```" for c, i, o in references)
        return self._prompt(
            f"Invent a new Python function f and one input for it, so that a solver must {goal}. Make it "
            f"different from these examples, not too easy and not impossible; only plain Python, no imports, "
            f"no randomness, no files.\n\n{refs}\n\nGive the function in a ```python block and the input (the "
            f"arguments of f) in an ```input block.")

    def proposal(self, code: str, inp: str) -> str:
        return f"```python\n{code}\n```\n```input\n{inp}\n```"

    def induction_proposer(self, code: str, n_inputs: int) -> str:
        return self._prompt(
            f"Here is a Python function:\n```python\n{code}\n```\nWrite a one-line hint about what it does in a "
            f"```message block, and {n_inputs} different inputs for it, each in its own ```input block, so that "
            "someone who sees some of the results can work out the function.")

    def induction_proposal(self, message: str, inputs: list[str]) -> str:
        return f"```message\n{message}\n```\n" + "\n".join(f"```input\n{i}\n```" for i in inputs)

    def _answer_block(self, text: str) -> str | None:
        m = re.search(r"<answer>(.*?)</answer>", text, re.S)
        return m.group(1) if m else None

    def parse_proposal(self, text: str) -> tuple[str, str] | None:
        body = self._answer_block(text)
        code, inp = (_CODE_RE.search(body), _INPUT_RE.search(body)) if body else (None, None)
        if not code or not inp:
            return None
        return _checked(code.group(1).strip("\n"), inp.group(1).strip())

    def parse_induction_proposal(self, text: str, n_inputs: int) -> tuple[str, list[str]] | None:
        body = self._answer_block(text)
        msg = _MESSAGE_RE.search(body) if body else None
        if not msg:
            return None
        return _distinct_inputs(msg.group(1).strip(), [m.strip() for m in _INPUT_RE.findall(body)], n_inputs)


def _checked(code: str, inp: str) -> tuple[str, str] | None:
    if not code.startswith("def f(") or executor.check_program(code) is not None or not is_arguments(inp):
        return None
    return code, inp


def _distinct_inputs(message: str, calls: list[str], n_inputs: int) -> tuple[str, list[str]] | None:
    inputs: list[str] = []
    for call in calls:
        if not is_arguments(call):
            return None
        if call not in inputs:
            inputs.append(call)
    if not message or len(inputs) < n_inputs:
        return None
    return message, inputs[:n_inputs]


FORMATS = {"compact": CompactFormat(), "paper": PaperFormat()}
