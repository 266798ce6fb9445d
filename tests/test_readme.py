"""Every command block of the README, of every page of docs/ and of sample/README.md runs, as a user types it, on a
generated data set.

Sybil reads each page: its ``bash`` and ``python`` blocks, and the ``<!-- skip: next "reason" -->`` comments that
mark a block which cannot run here. Each block is one test, named by its page, line and first command. The pages run
in the order of :data:`PAGES` (a page may use what an earlier one made: the README's ``RUN``, docs/data.md's
``posts.csv``) and each page's blocks in order, as subprocesses in one shared folder where ``DIR`` is a generated data
folder (the MVSA layout) and ``post.jpg`` an image; ``mmsent`` is the installed command of this environment. Nothing
in a block is rewritten except the port of a server (``--port N`` and every other N in the block), which is replaced
by a free one.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

from helpers import write_dataset

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/data.md", "docs/training.md", "docs/config-reference.md", "docs/figures.md",
         "docs/experiments.md", "docs/ensembles.md", "docs/prediction.md", "docs/deployment.md", "docs/api.md",
         "docs/serving.md", "docs/architecture.md", "sample/README.md")  # the order their blocks run in
RUNNABLE = ("bash", "python")  # fenced languages the test runs; ```text marks a block that is not a command
BLOCK_TIMEOUT = 900  # seconds for one block (a train on the generated data takes seconds)

pytestmark = [pytest.mark.readme, pytest.mark.multiprocess, pytest.mark.slow]


@dataclass
class Block:
    page: str
    line: int
    language: str
    source: str
    skip_reason: str | None

    @property
    def name(self) -> str:
        first = next((text for text in self.source.splitlines() if text.strip() and not text.startswith("#")), "")
        return f"{self.page}:L{self.line} {' '.join(first.split('#')[0].split())[:60]}"


def page_blocks(page: str) -> list[Block]:
    """A page's bash and python blocks in order, each with the reason it is skipped (None: it runs)."""
    document = Sybil(parsers=[CodeBlockParser(language) for language in ("bash",)]
                     + [PythonCodeBlockParser(), SkipParser()]).parse(ROOT / page)
    blocks, reason = [], None
    for example in document:
        if isinstance(example.parsed, tuple):  # a skip directive: (action, "reason")
            action, text = example.parsed
            assert action == "next", f"{page} line {example.line}: only 'skip: next \"reason\"' is used"
            reason = (text or "").strip().strip('"') or "no reason given"
            continue
        language = example.region.lexemes.get("arguments", "python")
        blocks.append(Block(page, example.line, language, str(example.parsed), reason))
        reason = None
    return blocks


BLOCKS = [block for page in PAGES for block in page_blocks(page)]


def test_every_page_of_the_docs_is_run():
    """A new page of docs/ joins PAGES (and so the run), and every page PAGES names exists."""
    pages = {"README.md", "sample/README.md"} | {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}
    assert set(PAGES) == pages


@pytest.mark.parametrize("page", PAGES)
def test_every_fenced_block_is_run_skipped_with_a_reason_or_plain_text(page):
    """A command can't hide in a page: every fence is bash/python (run here, or skipped with a reason) or text."""
    fences = re.findall(r"^[ \t]*```(\S*)[ \t]*$", (ROOT / page).read_text(encoding="utf-8"), flags=re.MULTILINE)
    openings = fences[0::2]  # fences alternate: opening (with its language), closing (bare)
    assert all(not closing for closing in fences[1::2])
    assert all(language in (*RUNNABLE, "text") for language in openings), openings
    blocks = [block for block in BLOCKS if block.page == page]
    assert sum(language in RUNNABLE for language in openings) == len(blocks)
    assert all(block.skip_reason != "no reason given" for block in blocks)


def test_the_readme_is_a_front_page_that_serves_a_model():
    """The README stays short, and its quick tour runs a server (whose answers test_block checks)."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
    assert any(block.page == "README.md" and block.skip_reason is None and "mmsent serve" in block.source
               for block in BLOCKS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The folder the pages' commands run in: DIR (generated data), post.jpg, and one feature cache."""
    root = tmp_path_factory.mktemp("readme")
    write_dataset(root / "DIR", n_train=15, n_test=3)  # 5 posts a class: the least 5-fold CV takes
    pixels = np.full((64, 96, 3), (230, 200, 40), dtype=np.uint8)  # a yellow image: the generated positive colour
    Image.fromarray(pixels).save(root / "post.jpg", quality=90)
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment(workdir: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # where this environment's `mmsent` and `torchrun` are
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "MMSENT_"))}
    env.update(PATH=bin_dir + os.pathsep + env.get("PATH", ""), MMSENT_CACHE_DIR=str(workdir / ".cache"),
               MMSENT_DATA=str(workdir / "DIR"), PYTHONUNBUFFERED="1")
    return env


def _run(block: Block, workdir: Path) -> subprocess.CompletedProcess:
    source = block.source
    for port in set(re.findall(r"--port (\d+)", source)):  # a server's port: a free one here
        source = source.replace(port, str(_free_port()))
    command = ["bash", "-e", "-o", "pipefail", "-c", source] if block.language == "bash" else [sys.executable, "-c",
                                                                                                 source]
    process = subprocess.Popen(command, cwd=workdir, env=_environment(workdir), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        output = "(timed out)"
    finally:
        try:  # anything the block left running (a server, a torchrun worker) ends with it
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return subprocess.CompletedProcess(command, process.returncode, output)


def _param(block: Block):
    """The block as a test parameter named after it; a block its page marks as skipped carries its reason."""
    if block.skip_reason is None:
        return pytest.param(block, id=block.name)
    return pytest.param(block, id=block.name, marks=pytest.mark.skip(reason=f"{block.name}: {block.skip_reason}"))


@pytest.mark.parametrize("block", [_param(block) for block in BLOCKS])
def test_block(block: Block, workdir: Path):
    result = _run(block, workdir)
    assert result.returncode == 0, f"{block.page} line {block.line} failed:\n{shlex.join(result.args)[:300]}\n{result.stdout}"
    if "mmsent serve" in block.source:  # the documented answers, not only a clean exit
        assert '"status":"ok"' in result.stdout.replace(" ", ""), result.stdout
        assert '"label":' in result.stdout and '"modalities_used":["text","image"]' in result.stdout, result.stdout
        assert "HTTP 415" in result.stdout, result.stdout
