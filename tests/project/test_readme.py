"""The README and docs/ stay true for a newcomer who follows them line by line.

The README is the first screen: what imgsvc is, the two commands, the prerequisites, links into
docs/. Every command the pages show must exist as written (a make target, an `imgsvc` or `flask`
subcommand, a bench, a script, an API route), every relative link must reach a file and heading,
and every path they name in backticks must be in the tree.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from imgsvc.config import PROJECT_ROOT, Settings

README = PROJECT_ROOT / "README.md"
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
TOPICS = (
    "models",
    "api",
    "configuration",
    "deploy",
    "scaling",
    "security",
    "reliability",
    "benchmarks",
    "development",
)
PAGES = [README, *DOCS, *sorted((PROJECT_ROOT / "bench" / "results").rglob("*.md"))]


def text(page: Path) -> str:
    return page.read_text()


def without_code(markdown: str) -> str:
    return re.sub(r"```.*?```", "", markdown, flags=re.S)


def code_lines(page: Path) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text(page), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def shell_commands(page: Path) -> list[list[str]]:
    """Each command of each bash line, comments and leading VAR=value assignments dropped."""
    commands = []
    for line in code_lines(page):
        if line.startswith("#"):
            continue
        line = re.sub(r"<(\w+)>", r"{\1}", line)  # a placeholder such as <job_id>, not a redirection
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token not in {"&&", "||", ";", "|", "&"}:
                words.append(token)
                continue
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                words.pop(0)
            if words:
                commands.append(words)
            words = []
    return commands


def slug(heading: str) -> str:
    """GitHub's (and MkDocs' toc) anchor for a heading."""
    heading = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", without_code(text(page)), re.M)}


def test_first_screen_has_the_two_commands_and_the_whole_prerequisites_line():
    first_screen = "\n".join(text(README).splitlines()[:40])
    assert re.search(r"^make run\b", first_screen, re.M) and re.search(r"^make test\b", first_screen, re.M)
    apt = next(line for line in code_lines(README) if line.startswith("sudo apt-get install"))
    # npm: `fetch-models --strict` (make test) needs it; postgresql: the PostgreSQL tests.
    for package in ("make", "python3-venv", "redis-server", "npm", "postgresql"):
        assert package in apt.split(), package
    assert "http://127.0.0.1:8000/" in first_screen and "Ctrl+C" in first_screen


def test_readme_fits_on_three_screens_and_links_every_topic():
    assert len(text(README).splitlines()) <= 150
    for topic in TOPICS:
        assert f"](docs/{topic}.md)" in text(README), topic
        assert f"]({topic}.md)" in text(PROJECT_ROOT / "docs" / "index.md"), topic
    assert {page.stem for page in DOCS} == {*TOPICS, "index"}


def test_readme_says_how_to_get_the_test_database_and_which_redis_dbs_the_tests_take():
    readme = text(README)
    assert "createdb test" in readme and "trust" in readme and "TEST_POSTGRES_URL" in readme
    assert "Redis DBs 15\nand 14" in readme and "TEST_REDIS_URL" in readme and "refuse" in readme
    assert ".venv/bin/imgsvc" in readme and ". .venv/bin/activate" in readme


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", without_code(text(page))):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not followed from the tests (loopback only)
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(resolved), f"{page.name}: no heading #{anchor} in {resolved.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_path_named_in_backticks_exists(page):
    # Paths the docs point a reader at: a module, a test file, a script, a deploy file.
    for path in re.findall(
        r"`(?!tests/artifacts/)((?:imgsvc|tests|scripts|bench|deploy)/[\w./-]+\.(?:py|sh|tsv|json|template|yaml))`",
        text(page),
    ):
        assert (PROJECT_ROOT / path).exists(), f"{page.name} names {path}, which is not in the tree"


@pytest.fixture(scope="module")
def docs_app(tmp_path_factory):
    from imgsvc import create_app

    settings = Settings.from_env(
        {},
        database_url=f"sqlite:///{tmp_path_factory.mktemp('db') / 'db.sqlite'}",
        rq_dashboard_username="u",
        rq_dashboard_password="p",
    )
    return create_app(settings)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_command_shown_exists_as_written(page, docs_app):
    from bench.__main__ import BENCHES, TOOLS
    from imgsvc.cli import main as imgsvc_cli

    make_targets = set(re.findall(r"^([\w-]+):", (PROJECT_ROOT / "Makefile").read_text(), re.M))
    flask_commands = set(docs_app.cli.list_commands(None))
    url_map = docs_app.url_map.bind("localhost")
    for words in shell_commands(page):
        command, args = words[0], words[1:]
        if command == "make":
            assert args[0] in make_targets, f"make {args[0]}"
        elif command in {"imgsvc", ".venv/bin/imgsvc"}:
            assert args[0] in imgsvc_cli.commands, f"imgsvc {args[0]}"
        elif command in {"flask", ".venv/bin/flask"}:
            assert args[:2] == ["--app", "imgsvc"] and args[2] in flask_commands, " ".join(words)
        elif command.endswith("python") and args[:2] == ["-m", "bench"]:
            assert args[2] in {*BENCHES, *TOOLS, "all"}, " ".join(words)
        elif "/" in command:
            assert (PROJECT_ROOT / command).exists(), command
        elif command == "curl":
            posts = {"-F", "-d", "--data"} & set(args)  # curl POSTs a form with any of these
            method = "DELETE" if "DELETE" in args else "POST" if posts else "GET"
            url = next(a for a in args if re.match(r"(https?://)?(localhost|127\.0\.0\.1):8000", a))
            path = re.sub(r"^(https?://)?[^/]+", "", url).split("?")[0] or "/"
            path = re.sub(r"\{\w+\}|0b6f\.\.\.", "0" * 32, path)
            url_map.match(path, method=method)  # raises NotFound / MethodNotAllowed


def test_examples_that_need_the_captioner_say_so():
    # The default model (the built-in describer) answers 400 to these options.
    needing = [
        line for page in PAGES for line in code_lines(page) if re.search(r"\b(max_length|prompt)=", line)
    ]
    assert needing
    for line in needing:
        assert "captioner" in line, line


def test_examples_send_webhooks_to_loopback_only():
    for page in PAGES:
        for url in re.findall(r"callback_url=(\S+)", text(page)):
            assert url.startswith(("http://127.0.0.1", "http://[::1]")), f"{page.name}: {url}"


def test_docs_build_as_a_site_without_warnings(tmp_path):
    # mkdocs.yml's nav must list every page, and MkDocs must find every heading a link names.
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").exists()
    nav = (PROJECT_ROOT / "mkdocs.yml").read_text()
    assert all(f": {page.name}" in nav for page in DOCS)


def test_facts_that_went_stale_once_are_stated_once_and_agree_with_what_they_count():
    everything = "\n".join(text(page) for page in PAGES)
    # The suite's time was "2 min 36 s" in one place and "~3½ minutes" in another.
    assert len(re.findall(r"\b\d+ tests\s+in\s+\d+ min", everything)) == 1
    # "three settings" moved a deployment across machines, and the block below them set seven.
    scaling = text(PROJECT_ROOT / "docs" / "scaling.md")
    counted = re.search(r"so (\w+) settings move a", scaling)
    block = re.search(r"```bash\n(.*?)```", scaling[counted.end() :], re.S).group(1)
    assigned = re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]+)=", block)
    numbers = {"three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
    assert numbers[counted.group(1)] == len(assigned), assigned


def test_messages_that_point_at_the_docs_name_a_page_and_heading_that_exist():
    for source in sorted((PROJECT_ROOT / "imgsvc").rglob("*.py")):
        for page, heading in re.findall(r"see (docs/\w+\.md), '([^']+)'", source.read_text()):
            assert slug(heading) in anchors(PROJECT_ROOT / page), f"{source.name}: {page} has no '{heading}'"
        assert "see the README's" not in source.read_text(), source.name  # the manual is in docs/ now
