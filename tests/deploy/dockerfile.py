"""Just enough of a Dockerfile reader for the deploy tests.

The tests run the image's own instructions (its ``COPY`` list, its ``RUN``
lines, its ``ENV`` and ``ENTRYPOINT``) outside Docker, so they read them from
the Dockerfile instead of restating them. Handles what our Dockerfile uses:
comments, line continuations, ``ARG`` defaults, ``KEY=VALUE`` ``ENV`` and
``LABEL`` pairs, exec-form ``ENTRYPOINT``, and ``--flag`` options on
``FROM``/``COPY``/``RUN``.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Instruction", "Stage", "parse"]


@dataclass(frozen=True)
class Instruction:
    """One instruction: its keyword (upper case), its options and its arguments."""

    keyword: str
    options: tuple[str, ...]
    args: str
    line: int


@dataclass
class Stage:
    """One ``FROM`` and the instructions after it."""

    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Return this stage's instructions with ``keyword``, in order."""
        return [i for i in self.instructions if i.keyword == keyword]

    def pairs(self, keyword: str) -> dict[str, str]:
        """Return the ``KEY=VALUE`` pairs of every ``ENV`` or ``LABEL`` of this stage."""
        result: dict[str, str] = {}
        for instruction in self.all(keyword):
            for word in shlex.split(instruction.args):
                key, sep, value = word.partition("=")
                if not sep:
                    raise ValueError(f"line {instruction.line}: {keyword} without '='")
                result[key] = value
        return result

    def arg_defaults(self) -> dict[str, str]:
        """Return the defaults of this stage's ``ARG`` lines (empty for none)."""
        result: dict[str, str] = {}
        for instruction in self.all("ARG"):
            name, _, default = instruction.args.partition("=")
            result[name.strip()] = default.strip()
        return result

    def exec_form(self, keyword: str) -> list[str]:
        """Return the JSON (exec) form of the last ``ENTRYPOINT``/``CMD``; fail on shell form."""
        instructions = self.all(keyword)
        if not instructions:
            return []
        value = json.loads(instructions[-1].args)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{keyword} is not in exec form: {instructions[-1].args}")
        return value


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Return the global ``ARG`` defaults and the stages of the Dockerfile at ``path``."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in _instructions(path.read_text(encoding="utf-8")):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            base = _substitute(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base=base, name=name))
        elif not stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"line {instruction.line}: {instruction.keyword} before FROM")
            name, _, default = instruction.args.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


def _instructions(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical = pending + stripped
        pending = ""
        keyword, _, rest = logical.partition(" ")
        options: list[str] = []
        rest = rest.strip()
        while rest.startswith("--"):
            option, _, rest = rest.partition(" ")
            options.append(option)
            rest = rest.strip()
        instructions.append(Instruction(keyword.upper(), tuple(options), rest, start))
    if pending:
        raise ValueError("the Dockerfile ends inside a line continuation")
    return instructions


def _substitute(word: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], word)
