"""Step 2 without a teacher: NL -> code records from seeds whose entry carries a docstring (as SelfCodeAlign
gathers its seeds).

The instruction is written from the docstring, in the release's style (``Write a function `f(s)` that ...``,
then ``For example, `f(...)` should return `...`.``): the summary paragraph, its first verb put in the third
person (``Return the ...`` -> ``that returns the ...``; a summary that does not start with a known verb is quoted
after ``described as follows:``), then further prose paragraphs while they fit a budget.  reST / Sphinx markup is
stripped (roles, double backquotes, emphasis, directives, field lists), Google-style ``Args:`` entries become a
bullet list, and doctest lines become the example sentence (only single-line calls of the entry itself, with a
single-line result or a raised exception); other doctests are dropped.  The response is the seed's whole code
(helpers included) in a ```python fence.  Docstrings with fewer than ``MIN_WORDS`` words of prose, or that say
nothing about behaviour (``TODO``, ``Deprecated``, ``See ...``, a bare signature), are skipped and counted.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from typing import Any

from data_pipeline.builder.types import Seed

MIN_WORDS = 5
DETAIL_BUDGET = 700  # characters of detail paragraphs after the summary
MAX_EXAMPLES = 3

_VERBS = frozenset("""
accumulate add adjust advance align append apply approximate assign average build calculate canonicalize
capitalize center check choose classify clean coerce collapse collect combine compare compress compute
concatenate construct convert correct count create decide decode decompress decrement deduplicate delete
derive deserialize detect determine divide drop encode enumerate escape estimate evaluate expand extract fill
filter find fix flatten fold format gather generate get give group guess hash identify increment indent infer
insert interpolate invert join justify keep locate look lookup lower make map mark match measure merge multiply
negate normalise normalize pack pad parse partition pick pop prepend prepare process produce push quote raise
put read recognize reduce remove render repeat replace represent reset resolve return reverse rotate round sanitize
scale scan search select separate serialize shift shorten simplify skip solve sort split strip substitute
subtract sum swap take tell test tokenize transform translate transpose trim truncate turn unescape unpack
unquote update upper validate verify walk wrap
""".split())
_UNINFORMATIVE = re.compile(
    r"^(todo|xxx|fixme|deprecated|obsolete|undocumented|not implemented|see\b|same as\b|alias\b|"
    r"for internal use|internal use|for backward|for compatibility|docstring)", re.I)
_SIGNATURE_ONLY = re.compile(r"^[\w.]+\(.*\)\s*(-+>.*)?$")
_SECTION = re.compile(r"^(args|arguments|parameters|params|keyword args|keyword arguments|other parameters|"
                      r"returns?|yields?|raises|examples?|notes?|see also|references|warnings?)\s*:?\s*$", re.I)
_ROLE = re.compile(r":[\w:.-]+:`([^`]*)`")
_FIELD = re.compile(r"^:(param|parameter|arg|argument|key|keyword|type|rtype|returns?|raises?|except|exception)"
                    r"(\s+[^:]+)?:\s*(.*)$")
_DIRECTIVE = re.compile(r"^\.\.\s+([\w-]+)::(.*)$")
_DROPPED_DIRECTIVES = frozenset({"versionadded", "versionchanged", "deprecated", "seealso", "index", "testsetup",
                                 "doctest", "code-block", "highlight"})


def _role_text(m: re.Match[str]) -> str:
    text = m.group(1)
    if "<" in text and text.endswith(">"):
        text = text[:text.index("<")].strip()
    elif text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return f"`{text}`"


def _inline(text: str) -> str:
    """Strip inline reST markup, keeping code in single backquotes."""
    text = _ROLE.sub(_role_text, text)
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    text = re.sub(r"(?<![\w*])\*\*(\S(?:.*?\S)?)\*\*(?![\w*])", r"\1", text)
    text = re.sub(r"(?<![\w*])\*([^\s*](?:[^*]*?[^\s*])?)\*(?![\w*])", r"\1", text)
    text = re.sub(r"`([^`]+)`_", r"\1", text)  # reST hyperlink references
    return text


def _paragraphs(doc: str) -> list[list[str]]:
    paras: list[list[str]] = [[]]
    for line in doc.expandtabs().splitlines():
        if line.strip():
            paras[-1].append(line.rstrip())
        elif paras[-1]:
            paras.append([])
    return [p for p in paras if p]


def _doctests(lines: list[str], entry: str) -> tuple[list[str], list[str]]:
    """(example sentences, the other lines) of a paragraph: doctest lines are removed either way."""
    examples: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped.startswith(">>>"):
            rest.append(lines[i])
            i += 1
            continue
        source = stripped[3:].strip()
        out: list[str] = []
        i += 1
        continuation = False
        while i < len(lines) and not lines[i].strip().startswith(">>>"):
            line = lines[i].strip()
            continuation |= line.startswith("...") and not out
            out.append(line)
            i += 1
        if not continuation:
            sentence = _example(source, out, entry)
            if sentence:
                examples.append(sentence)
    return examples, rest


def _example(source: str, output: list[str], entry: str) -> str | None:
    """``f(1)` should return `2`` for a doctest calling the entry, or None."""
    source = re.sub(r"\s+#.*$", "", source)
    try:
        call = ast.parse(source, mode="eval").body
    except SyntaxError:
        return None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == entry):
        return None
    try:  # arguments must be literals: a name set up by an earlier doctest line means nothing here
        for arg in (*call.args, *(k.value for k in call.keywords)):
            ast.literal_eval(arg)
    except ValueError:
        return None
    if not output:
        return f"`{source}` should return `None`"
    if output[0].startswith("Traceback"):
        m = re.match(r"([\w.]+)(:|$)", output[-1])
        return f"`{source}` should raise `{m.group(1).rsplit('.', 1)[-1]}`" if m else None
    if len(output) != 1 or "..." in output[0]:
        return None
    return f"`{source}` should return `{output[0]}`"


def _clean_paragraph(lines: list[str]) -> str:
    """One paragraph of prose (joined lines) or a bullet list, markup stripped; "" when nothing remains."""
    out: list[str] = []
    bullets: list[str] = []
    section = ""
    skip_indent: int | None = None
    bullets_indent = 0
    for raw in lines:
        indent = len(raw) - len(raw.lstrip())
        line = raw.strip()
        if skip_indent is not None:
            if indent > skip_indent:
                continue
            skip_indent = None
        if re.fullmatch(r"[-=~^]{3,}", line):  # numpy-style underline
            continue
        if m := _DIRECTIVE.match(line):
            if m.group(1) in _DROPPED_DIRECTIVES:
                skip_indent = indent
            elif m.group(2).strip():
                out.append(m.group(2).strip())
            continue
        if m := _SECTION.match(line):
            section = m.group(1).lower()
            if section.startswith(("arg", "param", "keyword", "other")):
                out.append("Arguments:")
            elif section.startswith("return"):
                out.append("Returns:")
            elif section.startswith("raise"):
                out.append("Raises:")
            elif section.startswith("yield"):
                out.append("Yields:")
            continue
        if m := _FIELD.match(line):
            kind, name, text = m.group(1), (m.group(2) or "").strip(), _inline(m.group(3))
            if kind in ("type", "rtype"):
                skip_indent = indent
            elif kind.startswith("return"):
                bullets.append(f"Returns: {text}")
            elif kind.startswith(("raise", "except")):
                bullets.append(f"Raises `{name}`: {text}" if name else f"Raises: {text}")
            else:
                bullets.append(f"`{name.split()[-1]}`: {text}" if name else text)
            continue
        item = re.match(r"^(\*{0,2}[A-Za-z_]\w*)\s*(\([^)]*\))?:\s+(.*)$", line)
        if section.startswith(("arg", "param", "keyword", "other", "raise")) and item \
                and (not bullets or indent <= bullets_indent):
            bullets.append(f"`{item.group(1)}`: {_inline(item.group(3))}")
            bullets_indent = indent
            continue
        if bullets and (section or line[0].islower()):
            bullets[-1] += " " + _inline(line)
            continue
        out.append(_inline(line))
    if bullets:
        out += ["- " + b for b in bullets]
        text = "\n".join(_join_prose(out))
    else:
        text = " ".join(out)
    text = re.sub(r"::$", ":", text.strip())
    text = re.sub(r"(?m)::$", ":", text)
    return re.sub(r"[ \t]+", " ", text).strip()


def _join_prose(lines: list[str]) -> list[str]:
    """Keep bullets and section headers on their own lines, join the prose in between."""
    out: list[str] = []
    for line in lines:
        if out and not line.startswith("- ") and not out[-1].startswith("- ") and not out[-1].endswith(":"):
            out[-1] += " " + line
        else:
            out.append(line)
    return out


def _third_person(word: str) -> str:
    if re.search(r"(s|sh|ch|x|z|o)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


def _lead(summary: str, signature: str) -> str:
    """The instruction's first sentence."""
    first, _, rest = summary.partition(" ")
    word = first.lower()
    if word in _VERBS and rest and not rest.startswith(("of ", "and ", "or ")):  # "Sum of ...": a noun
        head, dot, tail = rest.partition(". ")
        head = re.sub(r"\b(and|or|then) (\w+)\b",
                      lambda m: f"{m.group(1)} {_third_person(m.group(2)) if m.group(2) in _VERBS else m.group(2)}",
                      head)
        return f"Write a Python function `{signature}` that {_third_person(word)} {head}{dot}{tail}"
    if first[:1].isupper() and rest and any(word == _third_person(v) for v in _VERBS if v[:2] == word[:2]):
        return f"Write a Python function `{signature}` that {word} {rest}"
    return f"Write a Python function `{signature}` described as follows: {summary}"


def _signature(seed: Seed) -> str:
    """``name(a, b=1)`` read from the seed's code (defaults and kept annotations included)."""
    try:
        for node in ast.parse(seed.code).body:
            if isinstance(node, ast.FunctionDef) and node.name == seed.entry:
                return f"{seed.entry}({ast.unparse(node.args)})"
    except SyntaxError:
        pass
    return f"{seed.entry}({', '.join(seed.params)})"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?", ":")) else text + "."


def _describe(seed: Seed) -> tuple[str | None, str]:
    """(instruction, "") or (None, skip reason)."""
    if not seed.doc.strip():
        return None, "no docstring"
    paragraphs = _paragraphs(seed.doc)
    examples: list[str] = []
    prose: list[str] = []
    for para in paragraphs:
        found, rest = _doctests(para, seed.entry)
        examples += found
        if prose and prose[-1].endswith(":") and any(line.strip().startswith(">>>") for line in para[:1]):
            prose[-1] = prose[-1][:-1] + "."  # it introduced a doctest that is not shown
        text = _clean_paragraph(rest) if rest else ""
        if text and not re.fullmatch(r"(Examples?|For example):?", text, re.I):
            if any(line.strip().startswith(">>>") for line in para) and text.endswith(":"):
                text = text[:-1] + "."
            prose.append(text)
    if len(prose) > 1 and len(prose[0].split()) < 3:  # a title ("Covariance.") before the real summary
        prose = prose[1:]
    if not prose:
        return None, "short docstring"
    summary = prose[0]
    if len(re.findall(r"[A-Za-z][A-Za-z'-]*", " ".join(prose))) < MIN_WORDS:
        return None, "short docstring"
    if _UNINFORMATIVE.match(summary) or _SIGNATURE_ONLY.match(summary):
        return None, "uninformative docstring"
    parts = [_sentence(_lead(summary, _signature(seed)))]
    budget = DETAIL_BUDGET
    for para in prose[1:]:
        if len(para) > budget:
            break
        parts.append(para)
        budget -= len(para)
    if examples:
        parts.append(_sentence("For example, " + ", and ".join(examples[:MAX_EXAMPLES])))
    return "\n".join(parts), ""


def nl_skip_reason(seed: Seed) -> str | None:
    """Why ``seed`` gives no NL record ("no docstring", "short docstring", "uninformative docstring"), or None."""
    return _describe(seed)[1] or None


def nl_record(seed: Seed) -> dict[str, Any] | None:
    """The seed as a released-schema NL -> code record, or None when its docstring does not describe it."""
    instruction, _ = _describe(seed)
    if instruction is None:
        return None
    return {"nl": instruction, "fwd_mnl": "", "bwd_mnl": "", "response": f"```python\n{seed.code.strip()}\n```"}


def nl_records(seeds: Sequence[Seed]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Records for every describable seed, in order, and counts (``records``, ``skipped:<reason>``)."""
    records: list[dict[str, Any]] = []
    counts: dict[str, int] = {"records": 0}
    for seed in seeds:
        instruction, reason = _describe(seed)
        if instruction is None:
            counts[f"skipped:{reason}"] = counts.get(f"skipped:{reason}", 0) + 1
            continue
        records.append({"nl": instruction, "fwd_mnl": "", "bwd_mnl": "",
                        "response": f"```python\n{seed.code.strip()}\n```"})
        counts["records"] += 1
    return records, counts
