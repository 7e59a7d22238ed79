"""The README's Python examples run as written, each on its own, and its
relative links point at files of the repository."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# [text](target) and [text]: target; the target up to whitespace or ")".
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)[^)]*\)|^\[[^\]]+\]:\s*(\S+)", re.M)


def test_readme_python_blocks_each_run_alone_and_run_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python examples"
    for _ in range(2):  # as a reader reruns them: what the first run wrote is still there
        for block in blocks:  # each in a namespace of its own: a block copied alone runs
            exec(compile(block, str(README), "exec"), {})


def relative_links(text: str) -> list[str]:
    """Link targets that are paths in the repository (no scheme, not a bare #anchor)."""
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_relative_links_resolve():
    links = relative_links(README.read_text())
    assert any(link.startswith("docs/") for link in links), "README links into no docs page"
    missing = [link for link in links if not (ROOT / link.split("#")[0]).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_link_finder_sees_relative_links_only():
    text = "[a](docs/x.md) [b](https://x.org) [c](#top) [d](notebooks/ \"t\")\n[e]: benchmarks/y.md"
    assert relative_links(text) == ["docs/x.md", "notebooks/", "benchmarks/y.md"]
