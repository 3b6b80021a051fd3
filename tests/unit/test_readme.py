"""The README's quick start and examples stay true for a newcomer who follows them line by line."""

from __future__ import annotations

import re

from imgsvc.config import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    following = re.search(r"\n#{2,3} ", README[start + len(title) + 2 :])
    return README[start : start + len(title) + 2 + following.start()] if following else README[start:]


def code_lines() -> list[str]:
    return [line for block in re.findall(r"```bash\n(.*?)```", README, re.S) for line in block.splitlines()]


def test_examples_that_need_the_captioner_say_so():
    # The default model (the built-in describer) answers 400 to these options.
    needing = [line for line in code_lines() if re.search(r"\b(max_length|prompt)=", line)]
    assert needing
    for line in needing:
        assert "captioner" in line, line


def test_quick_start_says_how_to_reach_the_cli_the_page_and_which_redis_db_the_tests_take():
    quick = section("## Quick start (a fresh Debian/Ubuntu machine with Python 3.11)")
    assert ".venv/bin/imgsvc" in quick and ". .venv/bin/activate" in quick
    assert "http://127.0.0.1:8000/" in quick and "Ctrl+C" in quick
    assert "Redis DBs 15\nand 14" in quick and "TEST_REDIS_URL" in quick and "refuse" in quick
    assert "python3-venv" in quick
