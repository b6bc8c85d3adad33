"""What the production image holds, read from ``deploy/Dockerfile`` and its dockerignore.

There is no Docker engine here, so the build context is computed as BuildKit computes it: every
file of the repository, kept or dropped by the dockerignore patterns in order (the last pattern
that matches a file or one of its parent directories decides; ``!`` keeps). The image copies
the product from that context and installs it without the ``local`` extra; the product's
modules must then import with the local tooling and its packages missing.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"
LOCAL_TOOLING = (
    "stripe_crm_pipelines/local/",
    "stripe_crm_pipelines/sandbox/",
    "stripe_crm_pipelines/dev.py",
)
LOCAL_PACKAGES = ("litemongo", "mongomock")
"""The ``local`` extra's packages that the image lacks (filelock comes with dagster itself)."""


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A dockerignore pattern (Go ``filepath.Match`` plus ``**``) as a regular expression."""
    parts = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")  # any number of directories, none included
            index += 3
            continue
        if pattern.startswith("**", index):
            parts.append(".*")
            index += 2
            continue
        char = pattern[index]
        parts.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
        index += 1
    return re.compile("".join(parts) + r"\Z")


def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        rules.append((keep, _pattern_regex(line.lstrip("!").strip("/"))))
    return rules


def _excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for keep, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not keep
    return excluded


@cache
def build_context() -> frozenset[str]:
    """The repository's files (tracked or not, ignoring .gitignored ones) in the build context."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    rules = _rules()
    return frozenset(
        path for path in listed if (ROOT / path).exists() and not _excluded(path, rules)
    )


def copied_sources() -> list[str]:
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            sources += line.split()[1:-1]
    return sources


def test_the_context_holds_what_the_dockerfile_copies():
    context = build_context()
    for source in copied_sources():
        assert source in context or any(path.startswith(source + "/") for path in context), source


def test_the_image_leaves_the_local_tooling_out():
    product = {path for path in build_context() if path.startswith("stripe_crm_pipelines/")}
    assert "stripe_crm_pipelines/definitions.py" in product
    assert "stripe_crm_pipelines/store.py" in product
    for tooling in LOCAL_TOOLING:
        assert not [path for path in product if path.startswith(tooling)], tooling
    assert not [path for path in build_context() if path.startswith(("tests/", "benchmarks/"))]


def test_the_image_installs_without_the_local_extra():
    [install] = [line for line in DOCKERFILE.read_text().splitlines() if "pip install" in line]
    assert "pip install --no-cache-dir . " in install
    assert "[" not in install.split("pip install")[1].split('"')[0]
    assert "STRIPE_CRM_ENV=production" in DOCKERFILE.read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"])
    for package in ("litemongo", "mongomock", "filelock"):
        assert package not in required
        assert any(package in entry for entry in project["optional-dependencies"]["local"])


IMPORT_THE_PRODUCT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # `import name` now raises ImportError, as in the image
from stripe_crm_pipelines import store
from stripe_crm_pipelines.definitions import defs
assert defs.get_job_def("billing_contact_import") and defs.get_job_def("create_payment_link")
store.connect("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100")
try:
    store.connect("file:///tmp/stripe-crm-store")
except store.StoreConfigError as error:
    print("refused:", error)
loaded = sorted(
    module.__file__ for name, module in sys.modules.items()
    if name.startswith("stripe_crm_pipelines") and module is not None
)
print("\\n".join(loaded))
"""


def test_the_product_imports_without_the_local_tooling():
    blocked = [
        *LOCAL_PACKAGES,
        "stripe_crm_pipelines.local",
        "stripe_crm_pipelines.sandbox",
        "stripe_crm_pipelines.dev",
    ]
    completed = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", IMPORT_THE_PRODUCT.format(blocked=blocked)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("refused: MONGODB_URI file:// stores are local tooling")
    assert "'local' extra" in lines[0]
    loaded = {str(Path(line).relative_to(ROOT)) for line in lines[1:]}
    assert "stripe_crm_pipelines/definitions.py" in loaded
    assert loaded <= build_context(), sorted(loaded - build_context())
    for module in loaded:
        assert "import filelock" not in (ROOT / module).read_text(), module
