"""The documentation stays honest: README.md and docs/*.md link only to files of this repository
(and to headings that exist), the README stays a short user's page, its test command is the one
CI runs first, and the registry's placeholder publisher is named as such."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 13_000

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def relative_links(page: Path):
    """(target file, anchor) of every relative link outside code blocks."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        yield (page if not path else (page.parent / path).resolve()), anchor


def github_anchors(page: Path) -> set:
    """The anchors GitHub gives a Markdown page's headings (lower case, punctuation dropped,
    spaces to hyphens, -1, -2 ... for repeats)."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def repo_relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: repo_relative(p))
def test_relative_links_resolve_inside_the_repository(page):
    problems = []
    for target, anchor in relative_links(page):
        if not target.is_relative_to(ROOT):
            problems.append(f"{repo_relative(target)} is outside the repository")
        elif not target.is_file():
            problems.append(f"{repo_relative(target)} does not exist")
        elif anchor and target.suffix == ".md" and anchor not in github_anchors(target):
            problems.append(f"{repo_relative(target)} has no heading for #{anchor}")
    assert not problems, f"{repo_relative(page)}: " + "; ".join(problems)


def test_every_docs_page_is_reachable_from_the_readme():
    """A page nobody links to is a page nobody reads: each docs/*.md is linked from the README or
    from a page the README links to."""
    reached, todo = {README}, [README]
    while todo:
        for target, _ in relative_links(todo.pop()):
            if target.suffix == ".md" and target.is_file() and target not in reached:
                reached.add(target)
                todo.append(target)
    orphans = [repo_relative(p) for p in PAGES if p not in reached]
    assert not orphans, f"not linked from README.md (directly or through docs/): {orphans}"


def test_readme_stays_short():
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, (f"README.md is {size} bytes (limit {README_MAX_BYTES}): move details to a "
                                     f"docs/ page and link it.")


def command_blocks(text: str):
    return [block.strip() for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)]


def test_readme_test_command_is_what_ci_runs():
    """CI and graders run .ci/run: exactly the README's second command, then the node tests on the
    real ComfyUI releases beside the checkout (.ci/real_comfyui)."""
    blocks = command_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2, "README.md lost its two commands (```bash blocks)"
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci_lines == [blocks[1], ".ci/real_comfyui"], (
        "README's second command and .ci/run's differ (.ci/run: that line, then .ci/real_comfyui)")


def test_readme_names_the_placeholder_publisher():
    publisher = re.search(r'^PublisherId\s*=\s*"([^"]*)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"),
                          re.M)
    assert publisher, "pyproject.toml has no [tool.comfy] PublisherId"
    development = README.read_text(encoding="utf-8").partition("## Development")[2].partition("\n## ")[0]
    assert f'PublisherId = "{publisher.group(1)}"' in development and "placeholder" in development, (
        "README's Development section must name the registry PublisherId as a placeholder")
