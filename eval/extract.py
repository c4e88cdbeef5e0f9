"""Turning raw generations into what gets executed: CRUXEval answers, code blocks, EvalPlus sanitize.

Pure string/AST functions, no I/O.  CRUXEval answers follow the release's ``process_cruxeval.py``; where
its processing turns a correct answer into a wrong one, the default keeps it correct and
``release_compatible=True`` reproduces the release byte for byte.  ``sanitize`` is EvalPlus's, keeping what
EvalPlus 0.3.1 drops from working solutions.  Every difference is listed in docs/eval.md ("CRUXEval answer
extraction", "Sanitize").
"""

from __future__ import annotations

import ast


def answer_span(text: str, *, release_compatible: bool = False) -> str:
    """The answer block of the release's ``process_cruxeval.py``, read from prompt + generation as the release
    does: after the last ``[ANSWER]`` (after the last ``ANSWER]`` when a line starts with ``ANSWER]``), up to
    the last ``[/ANS`` when that comes later, else to the end.

    A generation without its own tag is therefore read after the prompt's last tag: the direct prompts end
    with ``[ANSWER]``, so that is the whole generation; the cot and monologue prompts mention or show the tags
    earlier, so that is text of the prompt, which fails.  Text with no tag at all (no prompt given) is read
    whole; the release (``release_compatible``) drops its first 7 characters (``rfind`` gives -1, plus 8)."""
    if "\nANSWER]" in text:
        start = text.rfind("ANSWER]") + len("ANSWER]")
    else:
        found = text.rfind("[ANSWER]")
        start = found + len("[ANSWER]") if found >= 0 or release_compatible else 0
    end = text.rfind("[/ANS")
    if end == -1 or end < start:
        end = len(text)
    return text[start:end]


def assertion_sides(text: str) -> tuple[str, str] | None:
    """(left, right) source of ``text`` when all of it is one ``[assert] LEFT == RIGHT`` (no message, no chained
    comparison, nothing after it but comments); None otherwise."""
    body = text.strip()
    try:
        tree = ast.parse(body)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if len(tree.body) != 1:
        return None
    node = tree.body[0]
    if isinstance(node, ast.Assert) and node.msg is None:
        test = node.test
    elif isinstance(node, ast.Expr):
        test = node.value
    else:
        return None
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        left = ast.get_source_segment(body, test.left)
        right = ast.get_source_segment(body, test.comparators[0])
        if left is not None and right is not None:
            return left.strip(), right.strip()
    return None


def _release_splits(answer: str, task: str) -> str:
    """``process_cruxeval.py``'s splits: the piece before (-I) or after (-O) the first ``==`` (up to a second),
    then the piece after the first ``assert`` (up to a second)."""
    if "==" in answer:
        answer = answer.split("==")[1 if task == "o" else 0].strip()
    if "assert" in answer:
        answer = answer.split("assert")[1].strip()
    return answer


def cruxeval_answer(raw: str, task: str, *, prompt: str = "", release_compatible: bool = False) -> str:
    """The answer CRUXEval executes: for ``task="o"`` the expected-output expression, for ``"i"`` the call
    ``f(...)``, from the generation ``raw`` of ``prompt``.

    The release's ``process_cruxeval.py`` rules (SemCoder @ edc4ad39): the block of ``answer_span`` over
    prompt + generation; the piece before (-I) or after (-O) the first ``==``; the piece after the first
    ``assert``; then every ``"`` becomes ``'``.  Text after the assertion stays in the answer, so an answer
    followed by prose or a second assertion fails, as there.

    ``release_compatible`` reproduces those rules byte for byte.  The default differs in three ways, each
    keeping a correct answer correct (docs/eval.md, "CRUXEval answer extraction"):
    1. quotes are left as written (the swap breaks ``'say "hi"'``);
    2. when the whole block is one ``[assert] LEFT == RIGHT``, its sides come from Python's parser, so ``==``
       or ``assert`` inside a string literal or brackets does not cut the answer;
    3. surrounding whitespace is stripped (the release leaves it on an answer without ``==``, and a leading
       newline is a syntax error in ``assert {output} == {answer}``), as the official CRUXEval scripts do."""
    span = answer_span(prompt + raw, release_compatible=release_compatible)
    if release_compatible:
        return _release_splits(span, task).replace('"', "'")
    sides = assertion_sides(span)
    if sides is not None:
        return sides[1] if task == "o" else sides[0]
    return _release_splits(span, task).strip()


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


# ---- EvalPlus's sanitize, with Python's ast instead of tree-sitter -----------------------------------------

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
    """Every name in ``node``, attribute names included: EvalPlus's dependency edges (tree-sitter identifiers)."""
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
        elif isinstance(sub, ast.alias):
            names.add((sub.asname or sub.name).split(".")[0])
    return names


def _has_return(node: ast.AST) -> bool:
    return any(isinstance(sub, ast.Return) for sub in ast.walk(node))


def _module_level(node: ast.AST):
    """``node`` and what it contains, without descending into function, class or lambda bodies."""
    todo = [node]
    while todo:
        current = todo.pop()
        yield current
        if current is not node and isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                         ast.Lambda)):
            continue
        todo.extend(ast.iter_child_nodes(current))


def _target_names(target: ast.AST) -> set[str]:
    """The module-level names an assignment target binds or changes (``T`` for ``T``, ``T[k]``, ``T.x``)."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_target_names(t) for t in target.elts))
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    while isinstance(target, (ast.Subscript, ast.Attribute)):
        target = target.value
    return {target.id} if isinstance(target, ast.Name) else set()


def _writes(statement: ast.stmt) -> set[str]:
    """Names a top-level statement assigns, changes (item or attribute assignment, ``del``, a method call as a
    statement, such as ``T.append(x)``) or imports; not loop variables, nor names bound inside functions."""
    names: set[str] = set()
    for node in _module_level(statement):
        if isinstance(node, ast.Assign):
            names |= set().union(*(_target_names(t) for t in node.targets))
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            names |= _target_names(node.target)
        elif isinstance(node, ast.Delete):
            names |= set().union(*(_target_names(t) for t in node.targets))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not statement:
            names.add(node.name)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Attribute):
            names |= _target_names(node.value.func.value)
    return names


# A top-level statement that mentions one of these is test or driver code: never kept as a side effect.
_DRIVER_NAMES = frozenset({"input", "open", "exit", "quit", "stdin", "__name__"})
# Interpreter settings a solution may need (deep recursion, long integers): a top-level call is always kept.
_SETTINGS = frozenset({"setrecursionlimit", "set_int_max_str_digits"})


def _is_setting(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)
            and isinstance(statement.value.func, ast.Attribute) and statement.value.func.attr in _SETTINGS)


def _is_driver(statement: ast.stmt, entry_point: str | None) -> bool:
    if isinstance(statement, ast.Assert):
        return True
    for node in ast.walk(statement):
        if isinstance(node, ast.Name) and (node.id == entry_point or node.id in _DRIVER_NAMES):
            return True
        if isinstance(node, ast.Attribute) and node.attr in _DRIVER_NAMES:
            return True
    return False


def _names_only(target: ast.AST) -> bool:
    if isinstance(target, (ast.Tuple, ast.List)):
        return all(_names_only(t) for t in target.elts)
    if isinstance(target, ast.Starred):
        return _names_only(target.value)
    return isinstance(target, ast.Name)


def _definition_names(node: ast.stmt) -> list[str]:
    """The names a definition defines, first name first ([] when ``node`` is not a definition)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign) and all(_names_only(t) for t in node.targets):
        return [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def sanitize(code: str, entry_point: str | None = None) -> str:
    """The code to run from a generated or supplied solution: EvalPlus's sanitize (``evalplus/sanitize.py``,
    0.3.1), with what it drops from working solutions kept.

    As EvalPlus: the longest run of lines that parses (``code_extract``); every top-level import; then the
    first definition of each name (function, class, ``name = value``); with ``entry_point``, only the
    definitions it reaches through the names they mention, in source order.  Test and driver code goes:
    prints, asserts, calls of the entry point, ``if __name__ == "__main__":`` blocks.

    Kept here and dropped by EvalPlus 0.3.1 (docs/eval.md, "Sanitize"):
    1. decorated functions and classes (``@functools.lru_cache``, ``@dataclass``);
    2. a reachable function without a ``return`` (a helper that changes its argument);
    3. assignments to several names (``a, b = 1, 2``, ``x = y = 0``);
    4. other top-level statements that assign or change a name the kept code uses (a loop filling a table,
       ``T[0] = 1``, ``T.append(x)``), unless they mention the entry point, ``input``, ``open``, ``stdin``,
       ``exit``, ``quit`` or ``__name__`` or are asserts;
    5. top-level calls of ``sys.setrecursionlimit`` and ``sys.set_int_max_str_digits``."""
    extracted = code_extract(code)
    try:
        tree = ast.parse(extracted)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return extracted
    lines = extracted.split("\n")

    def source(node: ast.stmt) -> str:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        if first == node.lineno:
            segment = ast.get_source_segment(extracted, node, padded=False)
            if segment is not None:
                return segment
        return "\n".join(lines[first - 1: node.end_lineno])

    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    functions = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    returning = {node.name for node in functions if _has_return(node)}
    units: list[tuple[ast.stmt, set[str], bool]] = []  # (statement, names it defines or changes, definition?)
    seen: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        names = _definition_names(node)
        if names:
            if all(name in seen for name in names):
                continue  # EvalPlus keeps the first definition of a name
            if node in functions and not _has_return(node) and (not entry_point or node.name in returning):
                continue  # EvalPlus: only functions with a return (here also a reachable helper without one)
            seen.update(names)
            units.append((node, set(names), True))
        elif _is_setting(node):
            units.append((node, {entry_point or ""}, True))
        elif not _is_driver(node, entry_point):
            units.append((node, _writes(node), False))

    if entry_point:
        reached, kept = {entry_point}, [False] * len(units)
        changed = True
        while changed:
            changed = False
            for i, (node, names, _) in enumerate(units):
                if not kept[i] and names & reached:
                    kept[i], changed = True, True
                    reached |= _identifiers(node)
    else:
        defined = set().union(*(names for _, names, definition in units if definition), *map(_identifiers, imports))
        kept = [definition or bool(names & defined) for _, names, definition in units]
    parts = [source(node) for node in imports]
    parts += [source(node) for (node, _, _), keep in zip(units, kept) if keep]
    result = "\n".join(parts).strip()
    return result if result else extracted
