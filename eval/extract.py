"""Turning raw generations into what gets executed: CRUXEval answers, code blocks, EvalPlus sanitize.

Pure string/AST functions, no I/O.  Where the release's processing can turn a correct answer into a wrong
one, the default here keeps correct answers correct and ``release_compatible=True`` reproduces the release
byte for byte (see docs/eval.md, "Deliberate differences").
"""

from __future__ import annotations

import ast


def answer_span(raw: str) -> str:
    """The text between the last ``[ANSWER]`` and the ``[/ANSWER]`` after it (or the end of the text).

    Without any ``[ANSWER]`` tag the whole text is the answer (a direct-mode prompt already ends with the
    opening tag, so the model writes only the assertion)."""
    start = raw.rfind("[ANSWER]")
    if start >= 0:
        start += len("[ANSWER]")
    elif "\nANSWER]" in raw:  # the release also accepts the tag without its bracket at a line start
        start = raw.rfind("\nANSWER]") + len("\nANSWER]")
    else:
        start = 0
    end = raw.find("[/ANSWER]", start)
    if end < 0:
        end = raw.find("[/ANS", start)
    return raw[start: end if end >= 0 else len(raw)]


def _strip_assert(text: str) -> str:
    text = text.strip()
    if text.startswith("assert ") or text.startswith("assert("):
        text = text[len("assert"):].strip()
    return text


def _split_comparison(text: str) -> tuple[str, str] | None:
    """(left, right) source of ``[assert] LEFT == RIGHT`` when it parses as exactly one ``==``."""
    body = _strip_assert(text)
    try:
        tree = ast.parse(body, mode="eval")
    except SyntaxError:
        return None
    node = tree.body
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
        left = ast.get_source_segment(body, node.left)
        right = ast.get_source_segment(body, node.comparators[0])
        if left is not None and right is not None:
            return left.strip(), right.strip()
    return None


def cruxeval_answer(raw: str, task: str, *, release_compatible: bool = False) -> str:
    """The answer CRUXEval executes: for ``task="o"`` the expected-output expression, for ``"i"`` the call
    ``f(...)``.  Takes the last ``[ANSWER]`` block, then the side of ``==`` that belongs to the task.

    Default: the assertion is parsed with ``ast`` so ``==`` or the word ``assert`` inside string literals
    stay intact, and quotes are left as written.  ``release_compatible``: the release's
    ``process_cruxeval.py`` rules (split on the first ``==``, split on ``assert``, then replace every
    double quote by a single quote, which breaks answers such as ``'say "hi"'``)."""
    if release_compatible:
        return _release_answer(raw, task)
    span = answer_span(raw).strip()
    lines = [line for line in span.splitlines() if line.strip()]
    candidates = [span] + ([lines[0]] if len(lines) > 1 else [])
    for text in candidates:  # a multi-line span may be one assertion plus trailing chatter
        sides = _split_comparison(text)
        if sides is not None:
            return sides[1] if task == "o" else sides[0]
    if "==" in span:
        left, _, right = _strip_assert(span).partition("==")
        return _strip_assert(right) if task == "o" else _strip_assert(left)
    return _strip_assert(span)


def _release_answer(raw: str, task: str) -> str:
    if "\nANSWER]" in raw:
        start = raw.rfind("ANSWER]") + len("ANSWER]")
    else:
        start = raw.rfind("[ANSWER]") + len("[ANSWER]")
    end = raw.rfind("[/ANS")
    if end == -1 or end < start:
        end = len(raw)
    answer = raw[start:end]
    if "==" in answer:
        answer = answer.split("==")[1 if task == "o" else 0].strip()
    if "assert" in answer:
        answer = answer.split("assert")[1].strip()
    return answer.replace('"', "'")


def completion_before_fence(generation: str) -> str:
    """The release's NL2CODE post-processing: the completion ends at the first ```` ``` ````."""
    index = generation.find("```")
    return generation if index < 0 else generation[:index]


def refined_code(generation: str) -> str:
    """Code of a self-refine answer: between ``[Refined]`` and ``[/Refined]``, else the first python fence,
    else the whole text; a python fence inside the Refined block is unwrapped too."""
    text = generation
    if "[Refined]" in text:
        text = text[text.rfind("[Refined]") + len("[Refined]"):]
        end = text.find("[/Refined]")
        text = text if end < 0 else text[:end]
    if "```python" in text:
        text = text[text.find("```python") + len("```python"):]
        end = text.find("```")
        text = text if end < 0 else text[:end]
    return text.strip("\n")


# ---- EvalPlus sanitize, with Python's ast instead of tree-sitter -------------------------------------------

def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, MemoryError, ValueError):
        return False
    return True


def code_extract(text: str) -> str:
    """The longest run of consecutive lines that parses as Python (by non-empty line count; EvalPlus)."""
    if _parses(text):
        return text
    lines = text.split("\n")
    nonempty = [1 if line.strip() else 0 for line in lines]
    best, best_len = (0, 0), 0
    for i in range(len(lines)):
        count = nonempty[i]
        for j in range(i + 1, len(lines)):
            count += nonempty[j]
            if count > best_len and _parses("\n".join(lines[i: j + 1])):
                best, best_len = (i, j), count
    return "\n".join(lines[best[0]: best[1] + 1])


def _identifiers(node: ast.AST) -> set[str]:
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            names.add(sub.attr)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(sub.name)
        elif isinstance(sub, ast.arg):
            names.add(sub.arg)
    return names


def _has_return(node: ast.AST) -> bool:
    return any(isinstance(sub, ast.Return) for sub in ast.walk(node))


def sanitize(code: str, entry_point: str | None = None) -> str:
    """EvalPlus's sanitize: keep imports, classes, functions that return something and top-level
    assignments, first definition of each name only, and with ``entry_point`` only what it reaches."""
    extracted = code_extract(code)
    try:
        tree = ast.parse(extracted)
    except SyntaxError:
        return extracted
    lines = extracted.split("\n")

    def source(node: ast.stmt) -> str:
        segment = ast.get_source_segment(extracted, node, padded=False)
        if segment is None:
            segment = "\n".join(lines[node.lineno - 1: node.end_lineno])
        return segment

    imports: list[ast.stmt] = []
    definitions: list[tuple[str | None, ast.stmt]] = []
    seen: set[str | None] = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(node)
            continue
        name: str | None
        if isinstance(node, ast.ClassDef) and not node.decorator_list:
            name = node.name
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.decorator_list:
            if not _has_return(node):
                continue
            name = node.name
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            name = target.id if isinstance(target, ast.Name) else None
        else:
            continue
        if name in seen:
            continue
        seen.add(name)
        definitions.append((name, node))

    keep: set[str | None] | None = None
    if entry_point:
        deps = {name: _identifiers(node) for name, node in definitions}
        keep, todo = {entry_point}, [entry_point]
        while todo:
            for dep in deps.get(todo.pop(), ()):
                if dep not in keep:
                    keep.add(dep)
                    todo.append(dep)
    parts = [source(node) for node in imports]
    parts += [source(node) for name, node in definitions if keep is None or name in keep]
    result = "\n".join(parts).strip()
    return result if result else extracted
