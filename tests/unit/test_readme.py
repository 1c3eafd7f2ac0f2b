"""Every `guardian ...` command the README and the docs show runs against the CLI's real
commands and options, and every link between them leads somewhere (issue 12)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from guardian.cli import app, hoist_global_options

REPO = Path(__file__).resolve().parents[2]
# The pages whose commands are checked: the README and the reference pages it links to.
PAGES = ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("docs/*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"`(guardian [^`]+)`")
SHELL_BREAKS = re.compile(r"\s(?:\||>|&&|2>)\s.*$")


def _code_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines inside fenced blocks of shell-like languages, continuations joined."""
    language: str | None = None
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence:
            language = None if language is not None else fence.group(1)
            continue
        if language is None or language in ("yaml", "json", "python", "toml", "ini"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def _invocation(line: str) -> list[str] | None:
    """The arguments after ``guardian`` on a shell line (prompt, sudo and paths allowed)."""
    text = SHELL_BREAKS.sub("", line.strip().removeprefix("$ "))
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return None
    for index, token in enumerate(tokens):
        if token == "guardian" or token.endswith("/bin/guardian"):
            return tokens[index + 1 :]
        if index == 0 and token != "sudo":
            return None  # another program's line (export, sudo install, ...)
    return None


def commands(page: str) -> Iterator[tuple[str, list[str], bool]]:
    """(where, arguments, complete): a code block's line is a whole command; an inline span in
    prose may name a command without its arguments, and ``[--once]`` marks an option."""
    text = (REPO / page).read_text(encoding="utf-8")
    for number, line in _code_lines(text):
        argv = _invocation(line)
        if argv is not None:
            yield f"{page}:{number}: {line.strip()}", argv, True
    for number, line in enumerate(text.splitlines(), start=1):
        for span in INLINE.findall(line):
            argv = _invocation(span)
            if argv is not None:
                unwrapped = [a[1:-1] if a.startswith("[") and a.endswith("]") else a for a in argv]
                yield f"{page}:{number}: `{span}`", unwrapped, False


def check(argv: list[str], complete: bool = True) -> None:
    """Parse ``argv`` down to the command it names, as the CLI would, without running it; an
    incomplete one may leave out required arguments, never name an unknown option."""
    group = GROUP
    args = hoist_global_options(argv)
    ctx = group.make_context("guardian", args)
    command: Any = group
    rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
    while hasattr(command, "get_command") and rest:
        name, *rest = rest
        sub = command.get_command(ctx, name)
        assert sub is not None, f"no command {name!r}"
        try:
            ctx = sub.make_context(name, rest, parent=ctx)
        except Exception as error:  # prose may name `guardian agent keep` without its argument
            if complete or type(error).__name__ != "MissingParameter":
                raise
            return
        command = sub
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
    assert not rest, f"left over: {rest}"


ALL = [command for page in PAGES for command in commands(page)]


def test_the_readme_shows_commands() -> None:
    readme = [where for where, _, _ in ALL if where.startswith("README.md")]
    assert len(readme) >= 15


@pytest.mark.parametrize(("where", "argv", "complete"), ALL, ids=[c[0] for c in ALL])
def test_every_documented_command_parses(where: str, argv: list[str], complete: bool) -> None:
    try:
        check(argv, complete)
    except typer.Exit:
        pass  # --help, --version
    except Exception as error:  # the CLI's own message says what is wrong
        text = error.format_message() if hasattr(error, "format_message") else str(error)
        pytest.fail(f"{where}\n  {type(error).__name__}: {text}")


GROUP: Any = typer.main.get_command(app)
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]+)?\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a page."""
    found = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            found.add(slug)
    return found


@pytest.mark.parametrize("page", PAGES)
def test_links_lead_somewhere(page: str) -> None:
    source = REPO / page
    broken = []
    for target, anchor in LINK.findall(source.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        path = (source.parent / target).resolve()
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor[1:] not in _anchors(path):
            broken.append(target + anchor)
    assert broken == []
