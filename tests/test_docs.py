"""The docs cannot drift from the code: README.md and docs/*.md are checked against the repository.

What is checked, in README.md and every docs/*.md page ("the docs"):

1. **Links.** Every relative link target, ``[text](target)`` or ``![alt](target)``, exists (relative to the page that
   links it); a ``#anchor`` must be a heading of the target page (GitHub's slugs). http(s) and mailto links are not
   followed.
2. **Repository paths.** Every repository path named in inline code (backticks) or in a fenced code block exists.
   A token counts as a repository path when it starts with one of the repository's tracked top folders,
   ``ldm/ configs/ scripts/ docs/ tests/ models/ data/ benchmarks/ .ci/``, or is one of the top-level files
   ``README.md main.py setup.py pyproject.toml environment.yaml``; paths are always written from the repository
   root, also in docs/. Not repository paths, so not checked: generated ones (``outputs/...``, ``logs/...``,
   ``.venv``), paths inside another path (``~/x/docs/...``, URLs), and placeholders (a token with ``<`` or ``...``).
   Files the user brings (weights, image folders) are therefore written without those prefixes (``sd-v1-4.ckpt``,
   ``<images>``). A glob (``*``, ``?``, ``[..]``) must match a file; ``{a,b}`` is expanded and each must exist;
   ``file.py::name`` also needs ``name`` in the file. A dotted ``ldm.x.y`` name must be a module of the package, or
   a module and a name defined in it.
3. **Flags.** A command in a fenced code block or in inline code (``python <script> ...``, ``bash <script> ...``,
   or a span starting with the script's path) names a repository script; every flag after it must be accepted by
   that script: the options listed by its ``--help`` (``main.py``: its parser, ``ldm.training.flags.get_parser``;
   scripts ending in ``ldm.cli.run_cli`` also take ``--debug``). ``--ae_<field>``-style placeholders need one flag
   with that prefix. Short flags are checked for Python scripts only (a shell script may pass them on, as
   ``scripts/test.sh`` does to pytest). A ``<!-- flags: SCRIPT [SCRIPT ...] -->`` comment on a line of its own makes
   every flag in the inline code of the paragraph or table below it a flag of each listed script. Every other
   ``--flag`` in inline code, outside commands of other programs (pip, pytest, git, conda), must be accepted by at
   least one script, except a flag the same line shows refused (``unrecognized arguments: --x``), which no script may
   accept.
4. **Scripts answer --help.** Every ``scripts/*.py`` and ``scripts/*.sh`` exits 0 on ``--help`` with some output (run
   once per session: shell scripts each in its own process with ``PYTHON`` set to this interpreter; Python scripts one
   after another, as ``__main__``, in two worker processes, so torch is imported twice, not once per script).
5. **Cited docs.** Every ``docs/<file>`` that the code (``ldm/``, ``scripts/``, ``benchmarks/``, ``tests/``,
   ``configs/``, ``main.py``, ``setup.py``) cites exists, and a section it cites by its title in quotes right after
   the page (``docs/<page>.md "<title>"``, or the README's) is a heading of that page.

``test_checker_reports_a_renamed_path`` shows, on a temporary copy of the docs and scripts, that a renamed page, a
renamed script and an unknown flag are reported, so the checks can fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from glob import glob
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATH_PREFIXES = ("ldm", "configs", "scripts", "docs", "tests", "models", "data", "benchmarks", ".ci")
TOP_FILES = ("README.md", "main.py", "setup.py", "pyproject.toml", "environment.yaml")
PATH_RE = re.compile(
    r"(?<![\w./~$@<>-])((?:" + "|".join(re.escape(p) for p in PATH_PREFIXES) + r")/(?:\{[^{}\s]*\}|[^\s`'\"(),;|{])*"
    r"|(?:" + "|".join(re.escape(f) for f in TOP_FILES) + r")(?![\w/.-]))"
)
MODULE_RE = re.compile(r"(?<![\w./])ldm(?:\.[A-Za-z_]\w*)+")
LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_RE = re.compile(r"(`+)(.+?)\1")
FLAG_RE = re.compile(r"^--?[A-Za-z][\w-]*")
INLINE_FLAG_RE = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*(?:<[\w-]+>[\w-]*)?")
FLAG_MARKER_RE = re.compile(r"<!--\s*flags:\s*(.+?)\s*-->")
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
OTHER_PROGRAMS = {"pip", "pytest", "git", "conda", "ruff", "apt-get", "sudo", "curl"}
CITING_CODE = ("ldm", "scripts", "benchmarks", "tests", "configs", "main.py", "setup.py")
# a section cited by its title in quotes after a docs page's path or after README (with or without 's)
SECTION_CITE_RE = re.compile(r"""(?<![\w/.])(docs/[\w.-]+\.md|README(?:\.md)?(?:'s)?),? ["'](\w[^"']*)["']""")
HELP_TIMEOUT_S = 120  # a --help that takes longer is a script doing work it should not


def doc_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


# --- reading the markdown ---------------------------------------------------------------------------------------
@dataclass
class Snippet:
    """A piece of code in a page: an inline span or a fenced block's text (continuation lines joined)."""

    doc: Path
    line: int
    text: str
    inline: bool
    lang: str = ""
    flag_scripts: tuple[str, ...] = ()  # from a <!-- flags: ... --> marker above the paragraph


@dataclass
class Page:
    path: Path
    prose: list[tuple[int, str]] = field(default_factory=list)  # lines outside fenced blocks
    snippets: list[Snippet] = field(default_factory=list)


def read_page(path: Path) -> Page:
    page = Page(path)
    fence: str | None = None
    lang = ""
    block: list[tuple[int, str]] = []
    marker: tuple[str, ...] = ()
    open_span: tuple[int, str] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence, lang, block = stripped[:3], stripped[3:].strip().lower(), []
            continue
        if fence is not None:
            if stripped.startswith(fence):
                page.snippets.extend(_block_snippets(path, block, lang))
                fence = None
            else:
                block.append((number, line))
            continue
        found = FLAG_MARKER_RE.fullmatch(stripped)  # a line of its own (not a marker quoted in a sentence)
        if found:
            marker = tuple(found.group(1).split())
            continue
        if not stripped:
            marker = ()
        page.prose.append((number, line))
        if open_span:  # an inline span that began on an earlier line of the paragraph
            start, line = open_span[0], open_span[1] + " " + line
        else:
            start = number
        open_span = (start, line) if line.count("`") % 2 and stripped else None
        if not open_span:
            for span in INLINE_RE.finditer(line):
                page.snippets.append(Snippet(path, start, span.group(2).strip(), True, flag_scripts=marker))
    return page


def _block_snippets(path: Path, block: list[tuple[int, str]], lang: str) -> list[Snippet]:
    """One snippet per logical line of the block (backslash continuations joined; comments dropped in shell)."""
    snippets: list[Snippet] = []
    pending, start = "", 0
    for number, line in block:
        if not pending:
            start = number
        if lang in SHELL_LANGS and line.lstrip().startswith("#"):
            if not pending:
                snippets.append(Snippet(path, number, line, False, lang))  # paths in comments count too
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        snippets.append(Snippet(path, start, pending + line, False, lang))
        pending = ""
    if pending:
        snippets.append(Snippet(path, start, pending, False, lang))
    return snippets


def slug(title: str) -> str:
    """GitHub's anchor of a heading's title."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower().replace("`", "")).replace(" ", "-")


def headings(path: Path) -> frozenset[str]:
    """GitHub's anchors of a page's headings (read again when the file changed)."""
    stat = path.stat()
    return _headings(path, stat.st_mtime_ns, stat.st_size)


@cache
def _headings(path: Path, mtime_ns: int, size: int) -> frozenset[str]:
    slugs: set[str] = set()
    fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            slugs.add(slug(line.lstrip("#")))
    return frozenset(slugs)


# --- 1 and 2: links and paths -----------------------------------------------------------------------------------
def check_links(root: Path, pages: Iterable[Page]) -> list[str]:
    problems = []
    for page in pages:
        for number, line in page.prose:
            for target in LINK_RE.findall(INLINE_RE.sub("", line)):
                if re.match(r"^[a-z]+:", target):
                    continue
                name, _, anchor = target.partition("#")
                dest = (page.path.parent / name).resolve() if name else page.path
                where = f"{page.path.relative_to(root)}:{number}"
                if not dest.exists():
                    problems.append(f"{where}: link to {target}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in headings(dest):
                    problems.append(f"{where}: link to {target}: no heading '#{anchor}' in {name or 'this page'}")
    return problems


def _expand_braces(token: str) -> list[str]:
    found = re.search(r"\{([^{}]*)\}", token)
    if not found:
        return [token]
    head, tail = token[: found.start()], token[found.end() :]
    return [e for part in found.group(1).split(",") for e in _expand_braces(head + part + tail)]


def path_problem(root: Path, token: str) -> str | None:
    """Why ``token`` (a repository path as the docs write it) does not exist, or None."""
    token = token.rstrip(".:,;")
    if "<" in token or "..." in token:
        return None
    token, member = re.fullmatch(r"(.*?)(?:(?:::|(?<=\.py):)(\w[\w\[\]-]*))?", token).groups()
    for candidate in _expand_braces(token):
        if any(c in candidate for c in "*?["):
            if not glob(str(root / candidate)):
                return f"{candidate}: no file matches"
        elif not (root / candidate).exists():
            return f"{candidate}: no such file or folder"
        elif member and not re.search(rf"\b{re.escape(member.split('[')[0])}\b", (root / candidate).read_text()):
            return f"{candidate}::{member}: no '{member}' in the file"
    return None


def module_problem(root: Path, dotted: str) -> str | None:
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:k])
        source = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if source.exists():
            rest = parts[k:]
            if rest and not re.search(rf"\b{re.escape(rest[0])}\b", source.read_text(encoding="utf-8")):
                return f"{dotted}: no '{rest[0]}' in {source.relative_to(root)}"
            return None
    return f"{dotted}: no such module"


def check_paths(root: Path, pages: Iterable[Page]) -> list[str]:
    problems = []
    for page in pages:
        for snippet in page.snippets:
            text = snippet.text
            if snippet.lang == "python":  # paths in Python code are string literals
                text = text.replace('"', " ").replace("'", " ")
            where = f"{page.path.relative_to(root)}:{snippet.line}"
            for token in PATH_RE.findall(text):
                problem = path_problem(root, token)
                if problem:
                    problems.append(f"{where}: {problem}")
            for dotted in [] if text.startswith(("error:", "warning")) else MODULE_RE.findall(text):
                problem = module_problem(root, dotted)
                if problem:
                    problems.append(f"{where}: {problem}")
    return problems


def check_cited_docs(root: Path) -> list[str]:
    problems = []
    files = [root / name for name in CITING_CODE if (root / name).is_file()]
    for name in CITING_CODE:
        if (root / name).is_dir():
            files += [p for p in (root / name).rglob("*") if p.suffix in (".py", ".yaml", ".sh") and p.is_file()]
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            where = f"{path.relative_to(root)}:{number}"
            for cited in re.findall(r"(?<![\w/.])docs/[\w./-]*\w(?![\w{])", line):
                if "<" not in cited and not (root / cited).exists():
                    problems.append(f"{where}: cites {cited}, which does not exist")
            for page, section in SECTION_CITE_RE.findall(line):
                target = root / ("README.md" if page.startswith("README") else page)
                if target.is_file() and slug(section) not in headings(target):
                    problems.append(f"{where}: cites the section '{section}' of {page}, which has no such heading")
    return problems


# --- 3 and 4: scripts and their flags ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HelpRun:
    script: str
    returncode: int
    output: str


# Python scripts answer --help inside a few worker processes, one after another (runpy, as ``__main__`` with
# ``sys.argv = [script, "--help"]``): torch and the project are imported once per worker instead of once per script.
HELP_WORKER = r"""
import contextlib, io, json, runpy, sys, traceback
out_path, *scripts = sys.argv[1:]
results = {}
for script in scripts:
    buffer, code = io.StringIO(), 0
    sys.argv = [script, "--help"]
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            if isinstance(done.code, str):
                print(done.code)
        except BaseException:
            traceback.print_exc(file=buffer)
            code = 1
    results[script] = [code, buffer.getvalue()]
    with open(out_path, "w") as f:  # after every script, so a hang keeps the answers before it
        json.dump(results, f)
"""
HELP_WORKERS = 2


def _run_group(root: Path, cmd: list[str]) -> tuple[int, str]:
    """A command in its own process group, killed whole if it does not end in time: (status, output)."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        output, _ = process.communicate(timeout=HELP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return -1, f"no answer within {HELP_TIMEOUT_S} s"
    return process.returncode, output


def run_help(root: Path, script: str) -> HelpRun:
    """``bash script --help`` (a shell script; ``PYTHON`` set to this interpreter)."""
    return HelpRun(script, *_run_group(root, ["bash", script, "--help"]))


def run_python_helps(root: Path, scripts: list[str]) -> list[HelpRun]:
    """``--help`` of Python scripts, one after another in one worker process."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "helps.json"
        status, output = _run_group(root, [sys.executable, "-c", HELP_WORKER, str(out), *scripts])
        answers = json.loads(out.read_text()) if out.exists() else {}
    lost = f"the worker ended with status {status} before this script answered:\n{output[-2000:]}"
    return [HelpRun(s, *answers[s]) if s in answers else HelpRun(s, -1, lost) for s in scripts]


def run_helps(root: Path, scripts: Iterable[str]) -> list[HelpRun]:
    """Every script's --help: shell scripts in their own processes, Python ones in HELP_WORKERS workers."""
    scripts = sorted(set(scripts))
    python = [s for s in scripts if not s.endswith(".sh")]
    groups = [python[k::HELP_WORKERS] for k in range(HELP_WORKERS) if python[k::HELP_WORKERS]]
    with ThreadPoolExecutor(max_workers=HELP_WORKERS + 1) as pool:
        shell = pool.map(lambda s: run_help(root, s), [s for s in scripts if s.endswith(".sh")])
        runs = [run for group in pool.map(lambda g: run_python_helps(root, g), groups) for run in group]
        return runs + list(shell)


def help_flags(run: HelpRun) -> set[str]:
    """The options a --help lists (argparse: the option lines' invocations; shell scripts: any flag in the text)."""
    if run.script.endswith(".sh"):
        return set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", run.output))
    flags: set[str] = set()
    for line in run.output.splitlines():
        if line.lstrip().startswith("-"):
            invocation = re.split(r"\s{2,}", line.strip())[0]
            flags.update(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", invocation))
    return flags


def main_py_flags() -> set[str]:
    from ldm.training.flags import get_parser

    return {s for action in get_parser()._actions for s in action.option_strings}


def script_commands(snippet: Snippet, root: Path) -> list[tuple[str, list[str]]]:
    """(script, flags after it) for every command of a snippet that runs a repository script."""
    lexer = shlex.shlex(snippet.text, posix=True, punctuation_chars="|&;")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: plain words
        tokens = snippet.text.split()
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token and set(token) <= set("|&;"):
            segments.append([])
        else:
            segments[-1].append(token)
    commands = []
    for segment in segments:
        for k, token in enumerate(segment):
            if token in OTHER_PROGRAMS or token == "-m" or token.startswith("#"):
                break
            if (token.endswith((".py", ".sh")) and "/" in token) or token == "main.py":
                if (root / token).is_file():
                    flags = [t.split("=")[0] for t in segment[k + 1 :] if FLAG_RE.match(t)]
                    commands.append((token, flags))
                break
    return commands


def flag_accepted(flag: str, accepted: set[str]) -> bool:
    if "<" in flag:
        return any(a.startswith(flag.split("<")[0]) for a in accepted)
    return flag in accepted


class FlagBook:
    """Each script's accepted flags, from one --help run per script (run in parallel, cached)."""

    def __init__(self, root: Path, runs: dict[str, HelpRun]):
        self.root = root
        self.runs = dict(runs)

    def ensure(self, scripts: Iterable[str]) -> None:
        missing = {s for s in scripts if s not in self.runs and s != "main.py"}
        for run in run_helps(self.root, missing) if missing else []:
            self.runs[run.script] = run

    def flags(self, script: str) -> set[str]:
        if script == "main.py":
            return main_py_flags() | {"--debug"}
        flags = help_flags(self.runs[script])
        path = self.root / script
        if path.is_file() and "run_cli(" in path.read_text(encoding="utf-8", errors="replace"):
            flags.add("--debug")
        return flags

    def all_flags(self) -> set[str]:
        return set().union(*(self.flags(s) for s in [*self.runs, "main.py"]))


def check_flags(root: Path, pages: Iterable[Page], book: FlagBook) -> list[str]:
    pages = list(pages)
    checks: list[tuple[str, str, list[str], bool]] = []  # where, script, flags, short flags too
    loose: list[tuple[str, str]] = []  # (where, flag) in inline code outside any command
    for page in pages:
        for snippet in page.snippets:
            where = f"{page.path.relative_to(root)}:{snippet.line}"
            if snippet.lang not in SHELL_LANGS:
                continue
            commands = script_commands(snippet, root)
            for script, flags in commands:
                checks.append((where, script, flags, script.endswith(".py")))
            if snippet.inline and not commands:
                first = snippet.text.split()[0] if snippet.text.split() else ""
                if first in OTHER_PROGRAMS or first.startswith("python") and " -m " in f" {snippet.text} ":
                    continue
                flags = INLINE_FLAG_RE.findall(snippet.text)
                if snippet.flag_scripts:
                    checks += [(where, s, flags, s.endswith(".py")) for s in snippet.flag_scripts]
                else:
                    loose += [(where, f) for f in flags if f.startswith("--")]
    refused = {(f"{page.path.relative_to(root)}:{n}", flag) for page in pages for n, line in page.prose
               for flag in re.findall(r"unrecognized arguments: (--[\w-]+)", line)}  # fmt: skip
    book.ensure(script for _, script, _, _ in checks)
    problems = []
    for where, script, flags, shorts in checks:
        if not (root / script).is_file():
            problems.append(f"{where}: {script}: no such script")
            continue
        accepted = book.flags(script)
        for flag in flags:
            if (shorts or flag.startswith("--")) and not flag_accepted(flag, accepted):
                problems.append(f"{where}: {script} does not accept {flag}")
    known = book.all_flags()
    problems += [f"{where}: no script accepts {flag}" for where, flag in loose
                 if (where, flag) not in refused and not flag_accepted(flag, known)]  # fmt: skip
    problems += [f"{where}: shown as refused, but accepted: {flag}" for where, flag in refused if flag in known]
    return problems


def repository_scripts(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "scripts").iterdir() if p.suffix in (".py", ".sh"))


# --- the session's --help runs (once) ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def book() -> FlagBook:
    book = FlagBook(REPO, {})
    scripts = set(repository_scripts(REPO))
    for page in map(read_page, doc_files(REPO)):
        for snippet in page.snippets:
            scripts.update(s for s, _ in script_commands(snippet, REPO))
            scripts.update(snippet.flag_scripts)
    book.ensure(scripts)
    return book


@pytest.fixture(scope="module")
def pages() -> list[Page]:
    return [read_page(p) for p in doc_files(REPO)]


def _report(problems: list[str]) -> str:
    return "\n".join(problems)


def test_links_exist(pages):
    problems = check_links(REPO, pages)
    assert not problems, _report(problems)


def test_repository_paths_exist(pages):
    problems = check_paths(REPO, pages)
    assert not problems, _report(problems)


def test_cited_docs_exist():
    problems = check_cited_docs(REPO)
    assert not problems, _report(problems)


def test_every_script_answers_help(book):
    scripts = repository_scripts(REPO)
    assert len(scripts) > 10
    failed = [f"{s}: exit {book.runs[s].returncode}\n{book.runs[s].output[-800:]}" for s in scripts
              if book.runs[s].returncode != 0 or not book.runs[s].output.strip()]  # fmt: skip
    assert not failed, _report(failed)


def test_flags_are_accepted(pages, book):
    problems = check_flags(REPO, pages, book)
    assert not problems, _report(problems)


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 220, f"README.md has {lines} lines; the limit is 220 (move details into docs/)"


def _copy_for_checking(tmp_path: Path) -> Path:
    """The docs and scripts copied, every other top-level entry of the repository linked in."""
    root = tmp_path / "repo"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name in ("docs", "scripts", "README.md"):
            copy: Callable = shutil.copytree if entry.is_dir() else shutil.copy2
            copy(entry, root / entry.name)
        elif entry.name not in (".git", ".venv"):
            (root / entry.name).symlink_to(entry)
    return root


def test_checker_reports_a_renamed_path(tmp_path, book):
    root = _copy_for_checking(tmp_path)

    def problems() -> tuple[list[str], list[str], list[str]]:
        pages = [read_page(p) for p in doc_files(root)]
        return check_links(root, pages), check_paths(root, pages), check_flags(root, pages, FlagBook(root, book.runs))

    assert problems() == ([], [], [])  # the copy checks clean, as the repository does
    readme = root / "README.md"
    readme.write_text(readme.read_text() + "\nSee [the table](docs/bad_inputs.md) (`docs/bad_inputs.md`).\n")
    assert problems() == ([], [], [])  # a link and a path that exist

    (root / "docs" / "bad_inputs.md").rename(root / "docs" / "bad-inputs.md")
    (root / "scripts" / "explore.py").rename(root / "scripts" / "explorer.py")
    readme.write_text(readme.read_text() + "\n```bash\npython scripts/txt2img.py --ddim_stepz 5\n```\n")
    links, paths, flags = problems()
    assert any("README.md:" in p and "link to docs/bad_inputs.md: no such file" in p for p in links), links
    assert any("docs/bad_inputs.md: no such file" in p for p in paths), paths
    assert any("scripts/explore.py: no such file" in p for p in paths), paths
    assert any("scripts/txt2img.py does not accept --ddim_stepz" in p for p in flags), flags
    assert not any("--ddim_steps" in p.split("accept ")[-1].split() for p in flags)

    # a cited section whose heading went, and scripts that do not answer --help (one worker per Python script here)
    benchmarks = root / "docs" / "benchmarks.md"
    benchmarks.write_text(benchmarks.read_text().replace("## Start-up", "## Startup"))
    cited = check_cited_docs(root)
    assert any("latent_diffusion.py" in p and "section 'Start-up' of docs/benchmarks.md" in p for p in cited), cited
    (root / "scripts" / "starts_work.py").write_text('raise RuntimeError("working instead of answering --help")\n')
    (root / "scripts" / "starts_work.sh").write_text("echo working; exit 3\n")
    scripts = ["scripts/make_readme_figure.py", "scripts/starts_work.py", "scripts/starts_work.sh"]
    runs = {r.script: r for r in run_helps(root, scripts)}
    assert runs["scripts/starts_work.py"].returncode == 1 and "RuntimeError" in runs["scripts/starts_work.py"].output
    assert runs["scripts/starts_work.sh"].returncode == 3
    answered = runs["scripts/make_readme_figure.py"]
    assert answered.returncode == 0 and "--out" in help_flags(answered)
